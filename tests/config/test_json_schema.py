"""The JSON Schema of params.yaml (docs/params.schema.json): current, referenced by params.yaml's first line,
and every preset merged onto params.yaml valid against it."""
import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import BASE_KEY, read_raw
from pipeline.config.json_schema import MODELINE, SCHEMA_PATH, comments, json_schema, render
from tests.conftest import REPO

PRESETS = sorted((REPO / "configs").glob("*.yaml"))
# The keywords pydantic's schema of Params uses: what validate() below implements (jsonschema is not in the lock).
KEYWORDS = {"$ref", "$defs", "$schema", "anyOf", "enum", "type", "items", "properties", "additionalProperties",
            "required", "default", "title", "description", "const"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
         "integer": int, "number": (int, float)}


def without_descriptions(node):
    """The schema but the descriptions: those come from params.yaml's comments, which applying a preset
    (python -m stages.preset) may change in a checkout; keys, types and defaults must match."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def test_the_committed_schema_is_current():
    committed = json.loads((REPO / SCHEMA_PATH).read_text())
    assert without_descriptions(committed) == without_descriptions(json.loads(render(REPO / "params.yaml"))), (
        "docs/params.schema.json is stale: run `make schema` (python -m pipeline.config.json_schema)")


def test_params_yaml_points_editors_at_the_schema():
    assert (REPO / "params.yaml").read_text().splitlines()[0] == MODELINE


def test_keys_carry_their_params_yaml_comment_and_sections_are_closed():
    schema = json_schema(REPO / "params.yaml")
    data = schema["$defs"]["DataParams"]
    assert data["properties"]["source"]["enum"] == ["synthetic", "coco"]
    assert "COCO: val2017" in data["properties"]["test_split"]["description"]
    assert data["additionalProperties"] is False and schema["additionalProperties"] is False
    assert "description" not in schema["properties"]["seed"]  # the file's header is no key's comment
    assert comments("a:\n  b: 1  # x # y\n  c: 'q#r'\n  # above\n  d: 2\n") == {"a.b": "x # y", "a.d": "above"}


def validate(value, schema, root, path="") -> list[str]:
    """The errors of ``value`` against ``schema`` (the keywords in KEYWORDS)."""
    unknown = set(schema) - KEYWORDS
    assert not unknown, f"{path}: schema keywords this test does not implement: {unknown}"
    if "$ref" in schema:
        return validate(value, root["$defs"][schema["$ref"].split("/")[-1]], root, path)
    if "anyOf" in schema:
        options = [validate(value, option, root, path) for option in schema["anyOf"]]
        return [] if any(not errors for errors in options) else min(options, key=len)
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not one of {schema['enum']}"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: {value!r} is not {schema['const']!r}"]
    kind = schema.get("type")
    if kind and (not isinstance(value, TYPES[kind]) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{path}: {value!r} is not of type {kind}"]
    errors = []
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        errors += [f"{path}: missing {key}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], root, f"{path}.{key}".lstrip("."))
            elif extra is False:
                errors.append(f"{path}: unknown key {key}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, root, f"{path}.{key}".lstrip("."))
    return errors


def check(value, schema) -> list[str]:
    try:
        import jsonschema
    except ImportError:
        return validate(value, schema, schema)
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(value)]


def test_params_yaml_is_valid_against_the_schema():
    schema = json.loads((REPO / SCHEMA_PATH).read_text())
    assert check(yaml.safe_load((REPO / "params.yaml").read_text()), schema) == []


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_merged_onto_params_yaml_is_valid_against_the_schema(preset: Path):
    schema = json.loads((REPO / SCHEMA_PATH).read_text())
    merged = read_raw(preset)
    assert BASE_KEY not in merged
    assert check(merged, schema) == []


def test_the_schema_finds_a_mistyped_key_and_a_wrong_type():
    schema = json.loads((REPO / SCHEMA_PATH).read_text())
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["loss"] = {**raw["loss"], "pos_iuo": 0.6, "neg_iou": "high"}
    errors = check(raw, schema)
    assert len(errors) == 2 and any("pos_iuo" in e for e in errors) and any("high" in e for e in errors)


def test_no_stage_imports_the_generator_and_dvc_does_not_hash_it():
    """It lives in pipeline/config, a folder dep of several stages: .dvcignore keeps it out of that folder's hash."""
    from tests.test_dependencies import module_closure, module_file, stage_module

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        closure = module_closure(module_file(stage_module(stage["cmd"])))
        assert "pipeline/config/json_schema.py" not in closure, name
    assert "/pipeline/config/json_schema.py" in (REPO / ".dvcignore").read_text().splitlines()

"""Presets (configs/*.yaml) are overlays: each states only what differs from params.yaml, and every one merges
onto params.yaml into valid params, by ``pipeline.config.load`` and by ``python -m stages.preset`` alike."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from pipeline import config
from tests.conftest import PYTHON, REPO, stage_env

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def leaves(raw: dict, prefix: str = "", cls: type = config.Params) -> dict:
    """Dotted keys of a params dict down to the values that are not sections."""
    import dataclasses
    import typing

    out, hints = {}, typing.get_type_hints(cls)
    for key, value in raw.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}.", tp))
        else:
            out[f"{prefix}{key}"] = value
    return out


def runnable(tmp_path, preset):
    """A base directory holding the weight files the preset names, and overrides for its COCO root."""
    base = tmp_path / "project"
    (base / "weights").mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", base / "params.yaml")
    raw = yaml.safe_load(preset.read_text())
    for key in ("pretrained",):
        name = raw.get("model", {}).get("backbone", {}).get(key)
        if name:
            (base / name).write_bytes(b"")
    if raw.get("model", {}).get("init_from"):
        (base / raw["model"]["init_from"]).write_bytes(b"")
    coco = tmp_path / "coco"
    coco.mkdir()
    return base, [f"data.root={coco}"] if raw.get("data", {}).get("source") == "coco" else []


def test_there_are_presets():
    assert len(PRESETS) >= 6


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_is_an_overlay_that_merges_into_valid_params(preset, tmp_path):
    raw = yaml.safe_load(preset.read_text())
    assert raw.pop(config.BASE_KEY) == "../params.yaml"
    base_raw = yaml.safe_load((REPO / "params.yaml").read_text())
    base_leaves, stated = leaves(base_raw), leaves(raw)
    same = [k for k, v in stated.items() if k in base_leaves and base_leaves[k] == v]
    assert not same, f"{preset.name} restates params.yaml's values of {same}"
    assert config.read_raw(preset) == config.merge(base_raw, raw)
    project, overrides = runnable(tmp_path, preset)
    params = config.from_dict(config.merge(base_raw, raw))
    for override in overrides:
        params = config.from_dict(config.merge(config.to_dict(params), leaves_to_nested(override)))
    config.validate(params, base_dir=project)
    for key, value in stated.items():  # the preset's values win
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        if not overrides or key != "data.root":
            assert node == value or (isinstance(value, (int, float)) and node == pytest.approx(value)), key


def leaves_to_nested(override: str) -> dict:
    key, _, value = override.partition("=")
    out: dict = {}
    node = out
    *path, leaf = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    return out


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_the_preset_command_writes_what_load_reads(preset, tmp_path, monkeypatch):
    from stages.preset import apply

    project, overrides = runnable(tmp_path, preset)
    monkeypatch.chdir(project)  # weight paths are taken from the working directory, the repository root
    text = apply(preset, project / "params.yaml", tuple(overrides))
    (project / "params.yaml").write_text(text)
    written = config.load(project / "params.yaml")
    preset_copy = project / "configs" / preset.name
    preset_copy.parent.mkdir()
    shutil.copy2(preset, preset_copy)
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert config.to_dict(written) == config.to_dict(config.load(preset_copy, overrides))
    kept = [line for line in (REPO / "params.yaml").read_text().splitlines() if line.startswith("  ohem_negpos_ratio")]
    if "ohem_negpos_ratio" not in preset.read_text():
        assert kept[0] in text.splitlines()  # untouched keys keep their line, comment included
    assert ": null" in text and "categories:\n" not in text  # null stays null


def test_the_preset_command_refuses_uncommitted_params_unless_forced(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    shutil.copytree(REPO / "configs", project / "configs")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("seed: 0", "seed: 1"))
    preset = "configs/yolact550_r50_coco.yaml"
    run = [PYTHON, "-m", "stages.preset", preset, "--set", f"data.root={tmp_path}", "--set", "model.backbone.pretrained=null"]
    proc = subprocess.run(run, cwd=project, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "uncommitted changes" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = subprocess.run([*run, "--force"], cwd=project, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    params = config.load(project / "params.yaml")
    assert params.seed == 1 and params.input.size == 550  # the user's edit kept, the preset merged

"""The shape of the library: one package per concept, imports only downward, short modules.

``LAYERS`` is the order of ``pipeline``'s subpackages, lowest first; a module may import its own package and
packages of a lower layer, never one of its own layer or above (imports inside functions count too). Modules
import each other without cycles, and each package says in its ``__init__.py`` what it holds.
"""
from __future__ import annotations

import ast

from tests.conftest import REPO
from tests.test_dependencies import imported_modules

LAYERS = (
    ("utils",),
    ("config",),
    ("tracking", "data"),  # tracking: MLflow and the stage runner, on config and utils only
    ("synthetic", "prepare", "models"),
    ("training", "evaluation"),
    ("analysis",),
    ("ablation", "deploy"),
)
MAX_LINES = 400
# module -> why it is longer than MAX_LINES (none today)
LONG_MODULES: dict[str, str] = {}
PIPELINE = REPO / "pipeline"


def layer_of(package: str) -> int:
    (found,) = [i for i, names in enumerate(LAYERS) if package in names]
    return found


def package_of(path) -> str | None:
    parts = path.relative_to(PIPELINE).parts
    return parts[0] if len(parts) > 1 else None


def modules():
    return sorted(p for p in PIPELINE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer_and_a_docstring():
    packages = sorted(p.parent for p in PIPELINE.rglob("__init__.py") if "__pycache__" not in p.parts)
    top = {p.name for p in packages if p.parent == PIPELINE}
    assert top == {name for names in LAYERS for name in names}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 20, f"{package}/__init__.py needs a one-paragraph docstring"


def test_imports_only_go_downward():
    upward = []
    for path in modules():
        source = package_of(path)
        if source is None:
            continue
        for target in imported_modules(path, inits=False):
            other = package_of(target) if PIPELINE in target.parents else None
            if other and other != source and layer_of(other) >= layer_of(source):
                upward.append(f"{path.relative_to(REPO)} -> {target.relative_to(REPO)}")
    assert not upward, upward


def test_modules_import_each_other_without_cycles():
    graph = {path: imported_modules(path, inits=False) for path in modules()}
    state: dict = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(str(p.relative_to(REPO)) for p in trail)
        state[node] = "open"
        for nxt in graph.get(node, ()):
            visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in graph:
        visit(node, [node])


def test_modules_are_short_or_say_why():
    long = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in modules()}
    long = {name: n for name, n in long.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert not long, long


def test_the_public_names_are_re_exported():
    from pipeline import build_model, load, match
    from pipeline.config import load as config_load
    from pipeline.models.priors.matching import match as matching_match
    from pipeline.models.yolact.model import build_model as model_build_model

    assert (load, build_model, match) == (config_load, model_build_model, matching_match)

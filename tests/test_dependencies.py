"""Every DVC stage declares exactly what can change its outputs: the project modules its command imports
(transitively, imports inside functions included) and the params keys it reads.

DVC's own resolution of dvc.yaml (matrix stages expanded) gives each stage's command, deps and params;
the modules come from the source (ast), the params keys from running the stage on the tiny project under
a recorder (params_probe.py).
"""
from __future__ import annotations

import ast
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, new_store, stage_env
from tests.tiny import WARM, make_project

# Code that cannot change a stage's outputs: the top-level packages' __init__ files (the lazy re-exports of
# the public names, and an empty one), the errors module, and the tracking package: the stage runner, MLflow
# runs and the store, provenance tags, the spool of runs the store did not get and its sync (they write only
# under .mlflow-spool/ and to MLflow) and the registered model (it writes only to MLflow; the pyfunc wrapper it
# logs, pipeline/deploy/pyfunc_model.py, is a file it ships, never imported by a stage).
EXEMPT_MODULES = {"pipeline/__init__.py", "stages/__init__.py", "pipeline/utils/errors.py"}
EXEMPT_FOLDERS = ("pipeline/tracking/",)
# Stages whose code deps must be exact: only files, each of them imported. A figure or report tweak must never
# re-run training or an ablation cell (folder deps would: a folder's hash changes with any file in it).
EXACT_STAGES = ("train", "ablate")
CODE_ROOTS = ("pipeline", "stages")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The project source file of a dotted module name, or None for other packages."""
    parts = name.split(".")
    if parts[0] not in CODE_ROOTS:
        return None
    path = root.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def package_inits(path: Path, root: Path = REPO) -> set[Path]:
    """The ``__init__.py`` of every package above ``path``: importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    found, directory = set(), path.parent
    while directory != root and root in directory.parents:
        if (directory / "__init__.py").is_file():
            found.add(directory / "__init__.py")
        directory = directory.parent
    return found - {path}


def imported_modules(path: Path, root: Path = REPO, inits: bool = True) -> set[Path]:
    """Project modules imported anywhere in ``path`` (top level or inside functions), with (``inits``) the
    ``__init__.py`` of each package on the way, which Python runs before the module."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(root).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            file = module_file(name, root)
            if file is not None:
                found.add(file)
                if inits:
                    found |= package_inits(file, root)
    return found | package_inits(path, root) if inits else found


def module_closure(entry: Path, root: Path = REPO) -> set[str]:
    """Repository-relative paths of ``entry`` and every project module it imports, transitively."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imported_modules(path, root) - seen
    return {str(p.relative_to(root)) for p in seen}


def stage_module(cmd: str) -> str:
    words = shlex.split(cmd)
    return words[words.index("-m") + 1]


def covered(key: str, declared: set[str]) -> bool:
    """A read key is declared by itself, by a section above it, or (a mapping read by name, as
    ``ablation.scale_sets`` in an ablate cell) by entries below it."""
    return any(key == d or key.startswith(d + ".") or d.startswith(key + ".") for d in declared)


def undeclared_params(reads: list[str], stage: dict) -> set[str]:
    return {key for key in reads if not covered(key, set(stage["params"]))}


def code_deps(stage: dict) -> list[str]:
    """The deps that are project code: files and folders under ``pipeline/`` or ``stages/``."""
    return [d.rstrip("/") for d in stage["deps"] if d.split("/")[0] in CODE_ROOTS]


def declares(module: str, deps: list[str]) -> bool:
    """A module is declared by its own file or by a folder above it."""
    return any(module == d or module.startswith(d + "/") for d in deps)


def exempt(module: str) -> bool:
    return module in EXEMPT_MODULES or module.startswith(EXEMPT_FOLDERS)


def stage_closure(stage: dict, root: Path = REPO) -> set[str]:
    return {m for m in module_closure(module_file(stage_module(stage["cmd"]), root), root) if not exempt(m)}


def undeclared_modules(stage: dict, root: Path = REPO) -> set[str]:
    deps = code_deps(stage)
    return {m for m in stage_closure(stage, root) if not declares(m, deps)}


def inexact_deps(name: str, stage: dict, root: Path = REPO) -> set[str]:
    """For the exact stages (train, each ablate cell): code deps that are folders, or files the stage does
    not import. Empty for the other stages, which may name a folder they import."""
    if name.split("@")[0] not in EXACT_STAGES:
        return set()
    closure = stage_closure(stage, root)
    return {d for d in code_deps(stage) if (root / d).is_dir() or d not in closure}


@pytest.fixture(scope="module")
def dvc_stages(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The tiny project as a DVC repo and its stages as DVC resolves them: name -> cmd, deps, params."""
    project = make_project(tmp_path_factory.mktemp("deps") / "project", WARM, git=True)
    script = (
        "import json; from dvc.repo import Repo\n"
        "stages = {}\n"
        "for s in Repo('.').index.stages:\n"
        "    params = [k for d in s.deps if type(d).__name__ == 'ParamsDependency' for k in d.params]\n"
        "    deps = [str(d.def_path) for d in s.deps if type(d).__name__ != 'ParamsDependency']\n"
        "    stages[s.name] = {'cmd': s.cmd, 'deps': deps, 'params': params}\n"
        "print(json.dumps(stages))\n"
    )
    proc = subprocess.run([PYTHON, "-c", script], cwd=project, capture_output=True, text=True, timeout=120,
                          check=True)
    return project, json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_stage_declares_the_modules_it_imports(dvc_stages):
    _, stages = dvc_stages
    missing = {name: sorted(undeclared_modules(stage)) for name, stage in stages.items()}
    assert not {name: mods for name, mods in missing.items() if mods}, missing


def test_train_and_ablate_deps_are_exact(dvc_stages):
    """train and every ablate cell list files, each imported: a change elsewhere never re-runs them."""
    _, stages = dvc_stages
    assert any(name.startswith("ablate@") for name in stages)
    extra = {name: sorted(inexact_deps(name, stage)) for name, stage in stages.items()}
    assert not {name: deps for name, deps in extra.items() if deps}, extra


def test_a_removed_module_dep_is_caught(dvc_stages):
    _, stages = dvc_stages
    stage = dict(stages["train"])
    stage["deps"] = [d for d in stage["deps"] if d != "pipeline/models/yolact/loss.py"]
    assert undeclared_modules(stage) == {"pipeline/models/yolact/loss.py"}


def test_a_removed_folder_dep_is_caught(dvc_stages):
    """A stage that names a folder: without it, every module of the folder it imports is undeclared."""
    _, stages = dvc_stages
    folders = {name: [d for d in code_deps(stage) if (REPO / d).is_dir()] for name, stage in stages.items()}
    name, (folder, *_) = next((n, f) for n, f in folders.items() if f)
    stage = dict(stages[name])
    stage["deps"] = [d for d in stage["deps"] if d.rstrip("/") != folder]
    missing = undeclared_modules(stage)
    assert missing and all(m.startswith(folder + "/") for m in missing), missing
    assert "pipeline/config/loader.py" in undeclared_modules(
        {**stages["train"], "deps": [d for d in stages["train"]["deps"] if d != "pipeline/config/loader.py"]})


def test_package_inits_are_in_the_closure():
    """Importing pipeline.models.yolact.loss runs pipeline/models/__init__.py and .../yolact/__init__.py."""
    closure = module_closure(REPO / "pipeline/models/yolact/loss.py")
    assert {"pipeline/models/__init__.py", "pipeline/models/yolact/__init__.py", "pipeline/__init__.py"} <= closure


def test_an_unimported_dep_of_train_or_ablate_is_caught(dvc_stages):
    """Exactness: train depending on code it does not import (a folder, or a figure module) fails."""
    _, stages = dvc_stages
    stage = dict(stages["train"])
    assert not inexact_deps("train", stage)
    assert inexact_deps("train", {**stage, "deps": [*stage["deps"], "pipeline/ablation/anchor_figures.py"]}) == {
        "pipeline/ablation/anchor_figures.py"}
    assert inexact_deps("train", {**stage, "deps": [*stage["deps"], "pipeline/models"]}) == {"pipeline/models"}
    cell = next(name for name in stages if name.startswith("ablate@"))
    assert inexact_deps(cell, {**stages[cell], "deps": [*stages[cell]["deps"], "pipeline/analysis/figures.py"]}) == {
        "pipeline/analysis/figures.py"}


def test_every_stage_declares_the_params_it_reads(dvc_stages, tmp_path):
    project, stages = dvc_stages
    env = stage_env(MLFLOW_TRACKING_URI=new_store(tmp_path / "mlflow.db"))
    order = ["generate", "prepare", "pretrain", "train", "evaluate", "anchors"]
    order += sorted(n for n in stages if n.startswith("ablate@")) + ["report"]
    undeclared, reads_of = {}, {}
    for name in order:
        out = tmp_path / f"{name}.json"
        words = shlex.split(stages[name]["cmd"])
        argv = words[words.index("-m") + 1 :]
        proc = subprocess.run([PYTHON, str(REPO / "tests/params_probe.py"), str(out), *argv], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)
        result = json.loads(out.read_text())
        assert result["exit"] == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
        reads_of[name] = result["reads"]
        undeclared[name] = sorted(undeclared_params(result["reads"], stages[name]))
    assert reads_of["train"], "the recorder saw no params read: it is broken"
    assert not {n: keys for n, keys in undeclared.items() if keys}, undeclared
    stage = dict(stages["train"])
    stage["params"] = [p for p in stage["params"] if p != "loss"]
    assert "loss.pos_iou" in undeclared_params(reads_of["train"], stage)

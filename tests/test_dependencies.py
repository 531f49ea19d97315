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

from tests.conftest import PYTHON, REPO, stage_env
from tests.tiny import make_project

# Modules that cannot change a stage's outputs: the stage runner, MLflow tracking, provenance tags, errors,
# and what tracking uses: the spool of runs the store did not get and its sync (they write only under
# .mlflow-spool/ and to MLflow), the registered model (it writes only to MLflow; the pyfunc wrapper it logs,
# pipeline/deploy/pyfunc_model.py, is a file it ships, never imported by a stage).
EXEMPT_MODULES = {"pipeline/__init__.py", "stages/__init__.py", "pipeline/tracking/stage.py", "pipeline/tracking.py",
                  "pipeline/tracking/provenance.py", "pipeline/utils/errors.py", "pipeline/tracking/spool.py", "pipeline/tracking/sync.py",
                  "pipeline/tracking/registry.py"}


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The project source file of a dotted module name, or None for other packages."""
    parts = name.split(".")
    if parts[0] not in ("pipeline", "stages"):
        return None
    path = root.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path, root: Path = REPO) -> set[Path]:
    """Project modules imported anywhere in ``path`` (top level or inside functions)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
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
    return found


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


def undeclared_modules(stage: dict) -> set[str]:
    entry = module_file(stage_module(stage["cmd"]))
    return module_closure(entry) - EXEMPT_MODULES - set(stage["deps"])


def undeclared_params(reads: list[str], stage: dict) -> set[str]:
    return {key for key in reads if not covered(key, set(stage["params"]))}


@pytest.fixture(scope="module")
def dvc_stages(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The tiny project as a DVC repo and its stages as DVC resolves them: name -> cmd, deps, params."""
    project = make_project(tmp_path_factory.mktemp("deps") / "project", git=True)
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


def test_a_removed_module_dep_is_caught(dvc_stages):
    _, stages = dvc_stages
    stage = dict(stages["train"])
    stage["deps"] = [d for d in stage["deps"] if d != "pipeline/models/yolact/loss.py"]
    assert undeclared_modules(stage) == {"pipeline/models/yolact/loss.py"}


def test_every_stage_declares_the_params_it_reads(dvc_stages, tmp_path):
    project, stages = dvc_stages
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    order = ["generate", "prepare", "train", "evaluate", "anchors"]
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

"""What produced a stage run: the git state of its sources and the hashes DVC computed for its deps."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from pipeline.config import REPO_ROOT

# Tracked files whose uncommitted changes can change an output; DVC's own outputs (reports/, dvc.lock)
# are rewritten by every stage run and so say nothing about the code.
SOURCE_PATHS = ("pipeline", "stages", "params.yaml", "dvc.yaml", "configs", "pyproject.toml", "requirements.lock")


def git_state(root: Path = REPO_ROOT) -> dict[str, str]:
    """``{"git_commit", "git_dirty"}``; dirty means uncommitted changes to tracked sources or params."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS)
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return {"git_commit": commit or "unknown", "git_dirty": dirty}


def dvc_dependency_hashes() -> dict[str, str]:
    """The md5 DVC records in dvc.lock for each dep of the running stage (``DVC_STAGE``), keyed by
    path; params deps as a hash of their values. Empty when the stage does not run under DVC."""
    stage_name, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage_name or not root:
        return {}
    from dvc.repo import Repo

    with Repo(root) as repo:
        stage_name = stage_name.rpartition(":")[2]
        stages = [s for s in repo.index.stages if getattr(s, "name", None) == stage_name]
        if len(stages) != 1:
            return {}
        hashes = {}
        for dep in stages[0].deps:
            dep.save()
            value = dep.hash_info.value
            if isinstance(value, dict):
                value = hashlib.md5(json.dumps(value, sort_keys=True).encode()).hexdigest()
            hashes[str(dep.def_path)] = str(value)
    return hashes


# What a run shows in MLflow's standard fields (the UI's "Source", the runs table's source column).
SOURCE_TYPE_DVC, SOURCE_TYPE_DIRECT = "JOB", "LOCAL"  # run by DVC (repro, exp run) or typed by hand
CODE_ROOTS = ("pipeline/", "stages/")


def source_tags(stage: str, commit: str) -> dict[str, str]:
    """MLflow's own source tags beside the project's ``git_commit`` and ``dvc_stage``: the commit, the stage's
    module (``stages.train``) and whether DVC ran it (``JOB``) or a person did (``LOCAL``)."""
    tags = {"mlflow.source.name": f"stages.{stage}",
            "mlflow.source.type": SOURCE_TYPE_DVC if os.environ.get("DVC_STAGE") else SOURCE_TYPE_DIRECT}
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def is_code(path: str) -> bool:
    return path.startswith(CODE_ROOTS) or path in ("params.yaml", "dvc.yaml")


def code_digest(hashes: dict[str, str]) -> str | None:
    """One md5 over the code deps' hashes (path and md5, sorted): equal for two runs exactly when DVC saw the
    same code for the stage. None when there are none (not run by DVC)."""
    code = sorted((path, value) for path, value in hashes.items() if is_code(path))
    if not code:
        return None
    return hashlib.md5(json.dumps(code).encode()).hexdigest()


def directory_digest(path: Path) -> str | None:
    """The md5 DVC computes for ``path`` (``<md5>.dir`` for a folder, as in ``dvc.lock``), for a stage run
    outside DVC; None if it does not exist."""
    if not path.exists():
        return None
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    _, _, obj = build(HashFileDB(MemoryFileSystem(), "/odb"), str(path.resolve()), LocalFileSystem(), "md5")
    return str(obj.hash_info.value)

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

"""A tiny configuration and a scratch copy of the project for integration tests of the real stages."""
from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import PYTHON, REPO, new_store, stage_env

TINY = {
    "data": {"synthetic": {"train_images": 16, "val_images": 8, "test_images": 8, "width": 80, "height": 64,
                           "min_objects": 1, "max_objects": 3}},
    "input": {"size": 64},
    # from scratch: in-process tests resolve "pretrain" against the repository they import, not the tiny project;
    # the DVC-level tests (WARM) run the pretrain stage and start from it
    "model": {"backbone": {"base_channels": 8, "pretrained": None}, "fpn": {"out_channels": 16},
              "head": {"num_prototypes": 4}},
    "anchors": {"scales": [[8], [16], [24], [40], [64]]},
    "train": {"batch_size": 4, "iterations": 12, "warmup_iterations": 2,
              "checkpoint_every": 4, "log_every": 1, "eval_every": 6},
    "eval": {"batch_size": 8, "num_visualize": 2},
    "pretrain": {"iterations": 4, "batch_size": 4, "warmup_iterations": 1, "eval_every": 2},
    "ablation": {"thresholds": [[0.5, 0.4], [0.6, 0.5]], "anchor_scales": ["base"], "baseline": "p0.5-n0.4-base",
                 "scale_sets": {"base": [[8], [16], [24], [40], [64]]},
                 "train": {"iterations": 4, "warmup_iterations": 1, "eval_every": 2}},
}

WARM = {"model": {"backbone": {"pretrained": "pretrain"}}}  # train and the cells start from the pretrain stage


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params(extra: dict | None = None) -> dict:
    return merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), extra or {})


def make_project(dest: Path, extra: dict | None = None, git: bool = False) -> Path:
    """Copy the project's code into ``dest`` with tiny params (optionally as a git + DVC repo)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "pyproject.toml", "weights/README.md"):
        (dest / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(extra), sort_keys=False))
    new_store(dest / "mlflow.db")  # the default tracking URI's store, empty
    if git:
        shutil.copytree(REPO / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
        shutil.copy2(REPO / ".gitignore", dest / ".gitignore")
        shutil.copy2(REPO / ".dvcignore", dest / ".dvcignore")
        for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"],
                     ["add", "-A"], ["commit", "-qm", "tiny project"]):
            subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def copy_project(source: Path, dest: Path, without: tuple[str, ...] = ("models", "mlruns", "mlartifacts", "mlflow.db*")) -> Path:
    """Copy a tiny project to ``dest`` without the top-level entries matching ``without`` (shell patterns).

    Only the top level: ``shutil.ignore_patterns("models")`` would also drop ``pipeline/models``, and the copy
    would then import the repository's installed package instead of its own. A store left out is replaced by an
    empty one (:func:`tests.conftest.new_store`).
    """
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory) == source and any(fnmatch.fnmatch(n, p) for p in without)]

    copied = Path(shutil.copytree(source, dest, ignore=ignore))
    if not (copied / "mlflow.db").exists():
        new_store(copied / "mlflow.db")
    return copied


def run_stage(project: Path, stage: str, *args: str, env: dict | None = None, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([PYTHON, "-m", f"stages.{stage}", *args], cwd=project, env=env or stage_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"stage {stage} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def kill_train_after_checkpoint(project: Path, env: dict, iteration: int = 4) -> int:
    """Start the train stage in ``project`` and SIGKILL it as soon as it has saved a checkpoint at
    ``iteration`` or later; returns the iteration of the checkpoint it left behind."""
    from pipeline.training.checkpoints import load_checkpoint

    proc = subprocess.Popen([PYTHON, "-m", "stages.train"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = project / "models/checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(checkpoints.glob("[!.]*.pt"))
        if found and load_checkpoint(found[0])["iteration"] >= iteration:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return load_checkpoint(next(checkpoints.glob("[!.]*.pt")))["iteration"]

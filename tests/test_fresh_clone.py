"""Every documented command on a fresh clone (no data/, no models/) either works or stops with one line that says
what to run first: never a traceback. The commands: each stage of dvc.yaml as DVC runs it, predict and export as
README.md shows them, and the other `python -m stages.NAME` commands."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import PYTHON, REPO, stage_env

FIRST = "run `python -m stages.{}`"
# command -> (exit code, what its one error line says), in the order they run
COMMANDS = {
    "prepare": (1, FIRST.format("generate")),
    "pretrain": (1, FIRST.format("prepare")),
    "train": (1, FIRST.format("prepare")),
    "evaluate": (1, FIRST.format("prepare")),
    "anchors": (1, FIRST.format("prepare")),
    "ablate {ablate}": (1, FIRST.format("prepare")),
    "predict --model models/model.pt --source photos/ --out predictions": (1, FIRST.format("train")),
    "export --model models/model.pt --format onnx": (1, FIRST.format("train")),
    "preset configs/yolact550_r50_coco.yaml": (2, "data.root: directory not found"),  # set it, as the docs say
    "sync": (0, None),
    "report": (0, None),  # the ablation cells are committed
    "generate {tiny}": (0, None),  # last: the others run on a tree without data
}
TINY = ("--set data.synthetic.train_images=2 --set data.synthetic.val_images=1 --set data.synthetic.test_images=1 "
        "--set data.synthetic.width=32 --set data.synthetic.height=32")


def fresh_clone(dest: Path) -> Path:
    """The files git would check out (tracked, and new ones not ignored), without data/, models/ or mlflow.db."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_every_command_works_or_says_what_to_run_first(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / "data").exists() and not (clone / "models").exists()
    ablation = yaml.safe_load((clone / "params.yaml").read_text())["ablation"]
    (pos_iou, neg_iou), scales, seed = ablation["thresholds"][0], ablation["anchor_scales"][0], ablation["seeds"][0]
    ablate = f"--pos-iou {pos_iou} --neg-iou {neg_iou} --scales {scales} --seed {seed}"
    failures = []
    for command, (code, message) in COMMANDS.items():
        args = command.format(ablate=ablate, tiny=TINY).split()
        proc = subprocess.run([PYTHON, "-m", f"stages.{args[0]}", *args[1:]], cwd=clone, env=stage_env(),
                              capture_output=True, text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if "Traceback" in proc.stderr or proc.returncode != code or (message and not (
                len(errors) == 1 and message in errors[0])):
            failures.append(f"{command}: exit {proc.returncode}, expected {code} and one line with {message!r}:\n"
                            f"{proc.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)

"""Data or weights broken after prepare stop the real stages with one line naming the file, exit 1."""
from pathlib import Path

import pytest
import torch

from tests.tiny import copy_project, run_stage


@pytest.fixture
def project(tiny_project: Path, tmp_path: Path) -> Path:
    """A copy of the prepared tiny project that a test may damage."""
    return copy_project(tiny_project, tmp_path / "project", ("models", "mlruns", "mlartifacts"))


def assert_one_line_failure(proc, names: str, project: Path) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and names in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Caught" not in proc.stderr, proc.stderr[-3000:]
    assert not (project / "models" / "model.pt").exists()


@pytest.mark.parametrize("damage, workers", [("delete", 0), ("truncate", 2)])
def test_an_image_damaged_after_prepare_stops_train_in_one_line(project, damage, workers):
    image = project / "data" / "synthetic" / "train" / "000003.png"
    if damage == "delete":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:300])
    proc = run_stage(project, "train", "--set", f"data.num_workers={workers}", check=False)
    assert_one_line_failure(proc, "synthetic/train/000003.png", project)


@pytest.mark.parametrize("content", ["garbage", "wrong_state_dict"])
def test_bad_pretrained_weights_stop_train_in_one_line(project, content):
    weights = project / "weights" / "weights.pth"
    if content == "garbage":
        weights.write_bytes(b"PK\x03\x04 not a zip archive at all")
    else:
        torch.save({"conv1.weight": torch.zeros(3, 3)}, weights)
    proc = run_stage(project, "train", "--set", "model.backbone.pretrained=weights/weights.pth", check=False)
    assert_one_line_failure(proc, "weights.pth", project)

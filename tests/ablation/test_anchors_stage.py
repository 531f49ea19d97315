"""The anchors stage on the prepared tiny project: anchor statistics and the box-size figure."""
import shutil
from pathlib import Path

from tests.tiny import copy_project, run_stage


def test_anchors_stage_draws_box_sizes_against_the_anchor_scales(tiny_project: Path, tmp_path: Path):
    project = copy_project(tiny_project, tmp_path / "project", ("models",))
    shutil.rmtree(project / "reports" / "anchors", ignore_errors=True)
    run_stage(project, "anchors")
    assert (project / "reports" / "anchors" / "anchor_stats.csv").is_file()
    assert (project / "reports" / "anchors" / "box_sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

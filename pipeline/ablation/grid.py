"""The ablation grid's names: cells, their output files and the group that makes them one ablation."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params, grid_cell_name, to_dict
from pipeline.tracking.provenance import git_state

CELLS_DIR = Path("reports/ablation/cells")


def cell_name(pos_iou: float, neg_iou: float, scales: str, seed: int) -> str:
    """``p0.5-n0.4-base-s0``: the grid cell and the seed."""
    return f"{grid_cell_name(pos_iou, neg_iou, scales)}-s{seed}"


@dataclass(frozen=True)
class CellOutputs:
    result: Path  # <name>.json

    def matches(self, iou_type: str) -> Path:
        return self.result.with_name(f"{self.result.stem}.{iou_type}.npz")


def group_key(params: Params) -> str:
    """What makes cells one ablation: the code commit, the DVC experiment and every param but the grid
    itself, so that all cells of one ``dvc repro`` share one MLflow parent run."""
    shared = to_dict(params)
    shared.pop("mlflow")
    for key in ("thresholds", "anchor_scales", "seeds", "baseline"):
        shared["ablation"].pop(key)
    shared["ablation"]["scale_sets"] = sorted(shared["ablation"]["scale_sets"].items())
    text = json.dumps([git_state()["git_commit"], os.environ.get("DVC_EXP_NAME", ""), shared], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""An ablation cell: the base params with one grid point and the shortened schedule, trained and scored."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import ConfigError, Params, replace
from .inference import flat_metrics, load_model, predict, score, val_loader
from .data import annotations_path
from .io import atomic_write_json
from .distributed import select_device
from .train import TrainOutputs, train


def cell_params(params: Params, pos_iou: float, neg_iou: float, scales: str) -> Params:
    """``params`` with the cell's matching thresholds, anchor scales and ``ablation.train`` overrides."""
    abl = params.ablation
    if scales not in abl.scale_sets:
        raise ConfigError("ablation.anchor_scales", f"'{scales}' is not in ablation.scale_sets")
    overrides: dict[str, Any] = {
        "loss.pos_iou": pos_iou, "loss.neg_iou": neg_iou, "anchors.scales": abl.scale_sets[scales],
    }
    for key in ("iterations", "lr_steps", "warmup_iterations"):
        value = getattr(abl.train, key)
        if value is not None:
            overrides[f"train.{key}"] = value
    iterations = overrides.get("train.iterations", params.train.iterations)
    overrides["train.lr_steps"] = [s for s in overrides.get("train.lr_steps", params.train.lr_steps) if s < iterations]
    return replace(params, **overrides)


def run_cell(params: Params, prepared_dir: Path, work_dir: Path, result_path: Path, run: Any,
             grid: dict[str, Any]) -> dict[str, Any]:
    """Train (resumable, in ``work_dir``) and evaluate; write the cell's metrics JSON."""
    start = time.perf_counter()
    outputs = TrainOutputs(work_dir / "model.pt", work_dir / "log.csv", work_dir / "checkpoints")
    train(params, prepared_dir, outputs,
          on_log=lambda row: run.log_metrics({f"train/{k}": v for k, v in row.items() if k != "iteration"},
                                             step=int(row["iteration"])))
    train_seconds = time.perf_counter() - start
    device = select_device(params.train.device)
    model, _, label_map, _ = load_model(outputs.model_path, device)
    predictions = predict(model, val_loader(params, prepared_dir), params.eval, params.loss.use_focal_loss,
                          [entry["category_id"] for entry in label_map], device)
    metrics = flat_metrics(score(annotations_path(prepared_dir, "val"), predictions))
    run.log_metrics(metrics)
    run.log_metrics({"train_seconds": train_seconds, "inference_s_per_image": predictions.seconds_per_image})
    run.log_artifact(outputs.log_path, "train")
    row = {**grid, **metrics, "train_seconds": round(train_seconds, 2),
           "inference_s_per_image": predictions.seconds_per_image, "mlflow_run_id": run.run_id or ""}
    atomic_write_json(result_path, row)
    return row

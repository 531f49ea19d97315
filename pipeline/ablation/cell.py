"""One ablation cell: the base params at one grid point and seed with the shortened schedule, trained
(validating on the val split) and scored on the test split.

A cell writes ``<name>.json`` (metrics, validation curve, TIDE errors, MLflow ids) and
``<name>.<iou_type>.npz`` (COCOeval's per-image matches, from which the report bootstraps intervals).
Its weights are not kept: they live in a scratch directory only while the cell runs.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.ablation.grid import CellOutputs
from pipeline.config import ConfigError, Params, portable_uri, replace
from pipeline.data.layout import ground_truth_path, read_label_map
from pipeline.utils.distributed import select_device
from pipeline.analysis.error_analysis import ERROR_TYPES, tide_errors
from pipeline.evaluation.coco import IOU_TYPES
from pipeline.data.coco import load_coco
from pipeline.evaluation.matches import save_image_matches
from pipeline.evaluation.inference import flat_metrics, predict, score, split_loader, validation_scorer
from pipeline.models.loading import load_model
from pipeline.utils.io import atomic_write_json
from pipeline.training.checkpoints import weights_hash
from pipeline.training.loop import VALIDATION_COLUMNS, TrainOutputs, train


def cell_params(params: Params, pos_iou: float, neg_iou: float, scales: str, seed: int) -> Params:
    """``params`` with the cell's matching thresholds, anchor scales, seed and ``ablation.train`` overrides."""
    abl = params.ablation
    if scales not in abl.scale_sets:
        raise ConfigError("ablation.anchor_scales", f"'{scales}' is not in ablation.scale_sets")
    overrides: dict[str, Any] = {
        "seed": seed, "loss.pos_iou": pos_iou, "loss.neg_iou": neg_iou, "anchors.scales": abl.scale_sets[scales],
        "train.keep_best": False,
    }
    for key in ("iterations", "lr_steps", "warmup_iterations", "eval_every"):
        value = getattr(abl.train, key)
        if value is not None:
            overrides[f"train.{key}"] = value
    iterations = overrides["train.iterations"] if "train.iterations" in overrides else params.train.iterations
    steps = overrides["train.lr_steps"] if "train.lr_steps" in overrides else params.train.lr_steps
    overrides["train.lr_steps"] = [s for s in steps if s < iterations]
    return replace(params, **overrides)


def run_cell(params: Params, prepared_dir: Path, work_dir: Path, outputs: CellOutputs, run: Any,
             grid: dict[str, Any]) -> dict[str, Any]:
    """Train in ``work_dir`` (resumable while it runs, removed after), score the test split, write the cell."""
    device = select_device(params.train.device)
    category_ids = [entry["category_id"] for entry in read_label_map(prepared_dir)]
    validate = validation_scorer(params, prepared_dir, category_ids, device) if params.train.eval_every else None
    curve: list[dict[str, float]] = []

    def log(row: dict[str, float]) -> None:
        metrics = {(k if k in VALIDATION_COLUMNS else f"train/{k}"): v for k, v in row.items() if k != "iteration"}
        run.log_metrics(metrics, step=int(row["iteration"]))
        if VALIDATION_COLUMNS[0] in row:
            curve.append({"iteration": int(row["iteration"]), **{k: row[k] for k in VALIDATION_COLUMNS}})

    start = time.perf_counter()
    outputs_dir = TrainOutputs(work_dir / "model.pt", work_dir / "log.csv", work_dir / "checkpoints")
    train(params, prepared_dir, outputs_dir, on_log=log, validate=validate)
    train_seconds = time.perf_counter() - start
    trained = load_model(outputs_dir.model_path, device)
    loader = split_loader(prepared_dir, "test", params.input, params.eval.batch_size, params.data.num_workers)
    predictions = predict(trained.model, loader, params.eval, params.loss.use_focal_loss, category_ids, device)
    gt = load_coco(ground_truth_path(prepared_dir, "test"))
    evaluations = score(gt, predictions)
    tide = {t: tide_errors(gt, predictions.results[t], t, image_ids=predictions.image_ids) for t in IOU_TYPES}
    for t in IOU_TYPES:
        save_image_matches(outputs.matches(t), evaluations[t].matches)
    run.log_artifact(outputs_dir.log_path, "train")
    shutil.rmtree(work_dir, ignore_errors=True)

    metrics = flat_metrics(evaluations)
    tide_metrics = {f"tide_{t}_dAP_{e}": tide[t]["dAP"][e] for t in IOU_TYPES for e in ERROR_TYPES}
    run.log_metrics({**{f"test_{k}": v for k, v in metrics.items()}, **tide_metrics, "train_seconds": train_seconds,
                     "inference_s_per_image": predictions.seconds_per_image})
    row = {**grid, "seed": params.seed, "iterations": params.train.iterations, "test_images": predictions.num_images,
           "warm_start": weights_hash(params), **metrics, **tide_metrics, "val_curve": curve,
           "train_seconds": round(train_seconds, 2),
           "inference_s_per_image": predictions.seconds_per_image, "mlflow_run_id": run.run_id or "",
           "mlflow_parent_run_id": run.parent_run_id or "", "mlflow_tracking_uri": portable_uri(run.uri) if run.online else ""}
    atomic_write_json(outputs.result, row)
    return row


"""Everything the evaluate stage writes about one model on one split: COCO metrics with bootstrap
intervals, per-class AP, precision-recall curves, TIDE errors, a confusion matrix, example figures and
the standard COCO results files."""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.analysis.bootstrap import bootstrap_ap
from pipeline.config import Params
from pipeline.data.dataset import InstanceDataset
from pipeline.data.layout import ground_truth_path, read_overlap
from pipeline.analysis.error_analysis import ERROR_TYPES, confusion_figure, confusion_matrix, tide_errors, tide_figure
from pipeline.evaluation.coco import IOU_TYPES, CocoEvaluation, category_names, per_class_ap_table, size_metrics
from pipeline.data.coco import load_coco
from pipeline.evaluation.inference import Predictions, predict, score, split_loader
from pipeline.models.loading import TrainedModel
from pipeline.utils.io import atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.analysis.visualize import save_comparison

PR_IOUS = (0.5, 0.75)


@dataclass(frozen=True)
class EvaluationOutputs:
    report_dir: Path  # small files for git: tables, figures, detail.json, PR curves
    metrics_path: Path  # the headline metrics (reports/metrics.json)
    results_dir: Path  # the COCO results files (large: DVC-cached)


def evaluate_model(trained: TrainedModel, model_path: Path, prepared_dir: Path, split: str, params: Params,
                   outputs: EvaluationOutputs, device: torch.device, progress: bool = True) -> dict[str, float]:
    """Score ``trained`` on ``split`` against its official ground truth and write every report.

    Post-processing comes from ``params.eval``; the architecture and input handling from the trained model.
    Returns flat metrics for MLflow (``bbox_AP``, ``segm_AP_lo``, ``tide_segm_dAP_Loc``, ...).
    """
    loader = split_loader(prepared_dir, split, trained.params.input, params.eval.batch_size, params.data.num_workers)
    predictions = predict(trained.model, loader, params.eval, trained.params.loss.use_focal_loss,
                          trained.category_ids, device, keep_examples=params.eval.num_visualize, progress=progress)
    gt_path = ground_truth_path(prepared_dir, split)
    start = time.perf_counter()
    gt = load_coco(gt_path)  # parsed once: scoring, TIDE and the confusion matrix share it
    evaluations = score(gt, predictions)
    scoring_seconds = time.perf_counter() - start
    names = category_names(gt)

    intervals = {t: bootstrap_ap(evaluations[t].matches, params.eval.bootstrap_resamples, seed=params.seed) for t in IOU_TYPES}
    tide = {t: tide_errors(gt, predictions.results[t], t, image_ids=predictions.image_ids) for t in IOU_TYPES}
    seconds_excluding_model = predictions.postprocess_seconds_per_image + scoring_seconds / max(predictions.num_images, 1)
    overlap = read_overlap(prepared_dir)  # images in two roles that data.allow_overlap let through
    metrics = {
        **{t: {**evaluations[t].metrics, **_sizes(evaluations[t])} for t in IOU_TYPES},
        "split": split,
        "num_images": predictions.num_images,
        "model": str(model_path),
        "intervals": {t: {name: [round(i.lo, 6), round(i.hi, 6)] for name, i in intervals[t].items()} for t in IOU_TYPES},
        "num_gt": _num_gt(evaluations["bbox"]),
        **({"data_overlap": overlap} if overlap else {}),
    }
    timing = {"inference_s_per_image": predictions.seconds_per_image,
              "eval_images_per_s_excluding_model": 1.0 / max(seconds_excluding_model, 1e-9)}
    report = outputs.report_dir
    atomic_write_json(outputs.metrics_path, metrics)
    atomic_write_json(report / "detail.json", {
        **{t: evaluations[t].detail for t in IOU_TYPES},
        "tide": tide,
        "timing": {**timing,
                   "postprocess_and_rle_s_per_image": predictions.postprocess_seconds_per_image,
                   "cocoeval_s_per_image": scoring_seconds / max(predictions.num_images, 1)},
        "ground_truth": str(gt_path),
    })
    atomic_write_text(report / "per_class_ap.csv",
                      per_class_ap_table(evaluations, names).to_csv(index=False, float_format="%.6g"))
    write_pr_curves(evaluations, report / "pr")
    pr_curves_figure(evaluations, report / "pr_curves.png")
    tide_figure(tide, report / "tide.png")
    matrix = confusion_matrix(gt, predictions.results["segm"], "segm", image_ids=predictions.image_ids)
    confusion_figure(matrix, list(names.values()), report / "confusion_segm.png")
    write_results(predictions, outputs.results_dir)
    if predictions.examples:
        _examples_figure(prepared_dir, split, predictions, trained.label_map, report / "examples.png")

    flat = {f"{t}_{k}": v for t in IOU_TYPES for k, v in metrics[t].items() if isinstance(v, float)}
    for t in IOU_TYPES:
        for name, interval in intervals[t].items():
            flat[f"{t}_{name}_lo"], flat[f"{t}_{name}_hi"] = interval.lo, interval.hi
        flat.update({f"tide_{t}_dAP_{e}": tide[t]["dAP"][e] for e in ERROR_TYPES})
    flat.update(timing)
    return flat


def _sizes(evaluation: CocoEvaluation) -> dict[str, Any]:
    return {k: v for k, v in size_metrics(evaluation).items() if not k.startswith("num_gt_")}


def _num_gt(evaluation: CocoEvaluation) -> dict[str, int]:
    sizes = size_metrics(evaluation)
    return {k.removeprefix("num_gt_"): v for k, v in sizes.items() if k.startswith("num_gt_")}


def pr_curve_series(evaluations: dict[str, CocoEvaluation]) -> dict[str, pd.DataFrame]:
    """``{"bbox_iou50": DataFrame(recall, precision), ...}``: one precision-recall curve per IoU type and
    threshold, averaged over the classes with ground truth."""
    series = {}
    for t in IOU_TYPES:
        for iou in PR_IOUS:
            recall, precision = evaluations[t].pr_curve(iou)
            series[f"{t}_iou{round(iou * 100)}"] = pd.DataFrame({"recall": recall, "precision": precision})
    return series


def write_pr_curves(evaluations: dict[str, CocoEvaluation], directory: Path) -> None:
    """One ``recall,precision`` CSV per curve, as ``dvc plots`` draws several files as several series."""
    for name, table in pr_curve_series(evaluations).items():
        atomic_write_text(directory / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))


def pr_curves_figure(evaluations: dict[str, CocoEvaluation], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, table in pr_curve_series(evaluations).items():
        ax.plot(table["recall"], table["precision"], label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall (mean over classes)")
    ax.legend(fontsize=8)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)


def write_results(predictions: Predictions, directory: Path) -> None:
    """The standard COCO results files ``{bbox,segm}.json.gz`` (``COCO.loadRes`` takes them once unzipped)."""
    for t in IOU_TYPES:
        text = json.dumps(predictions.results[t], separators=(",", ":"))
        atomic_write_bytes(directory / f"{t}.json.gz", gzip.compress(text.encode(), mtime=0))


def read_results(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def _examples_figure(prepared_dir: Path, split: str, predictions: Predictions, label_map: list[dict],
                     path: Path) -> None:
    dataset = InstanceDataset(prepared_dir, split, transforms=None)
    originals = [dataset.load(image_id) for image_id, _ in predictions.examples]
    targets = [{k: t[k][~t["iscrowd"]] for k in ("boxes", "masks", "labels")} for _, t in originals]
    save_comparison([np.asarray(img.permute(1, 2, 0)) for img, _ in originals], targets,
                    [det for _, det in predictions.examples], [e["name"] for e in label_map], path)

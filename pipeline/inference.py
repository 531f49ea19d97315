"""Inference over a dataset and its COCO scoring: the part shared by the evaluate and ablate stages."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import EvalParams, Params, from_dict, replace
from .data import InstanceDataset, build_transforms, collate
from .evaluation import IOU_TYPES, CocoEvaluation, coco_evaluate, coco_results
from .model import build_model
from .postprocess import Detections, detect, to_image


@dataclass
class Predictions:
    results: dict[str, list[dict]]  # COCO result records per IoU type
    seconds_per_image: float  # forward + post-processing, data loading excluded
    num_images: int
    examples: list[tuple[int, Detections]] = field(default_factory=list)  # (image_id, detections)


def load_model(path: str | Path, device: torch.device) -> tuple[nn.Module, Params, list[dict], dict[str, Any]]:
    """Rebuild a trained model from ``models/model.pt`` -> (model in eval mode, params, label map, payload)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # The trained weights replace any pretrained backbone file, which need not exist where we load.
    params = replace(from_dict(payload["params"]), **{"model.backbone.pretrained": None})
    model = build_model(params, num_classes=len(payload["label_map"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), params, payload["label_map"], payload


def val_loader(params: Params, prepared_dir: Path) -> DataLoader:
    dataset = InstanceDataset(prepared_dir, "val", build_transforms(params.input, train=False))
    return DataLoader(dataset, batch_size=params.eval.batch_size, shuffle=False, collate_fn=collate,
                      num_workers=params.data.num_workers)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    eval_params: EvalParams,
    use_focal_loss: bool,
    category_ids: Sequence[int],
    device: torch.device,
    keep_examples: int = 0,
    progress: bool = True,
) -> Predictions:
    """Run ``model`` over ``loader`` and turn its detections into COCO result records."""
    model.eval()
    results: dict[str, list[dict]] = {t: [] for t in IOU_TYPES}
    examples: list[tuple[int, Detections]] = []
    seconds, count = 0.0, 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", mininterval=1.0, dynamic_ncols=True)
    for images, targets in batches:
        start = time.perf_counter()
        out = model(images.to(device))
        detections = detect(
            out["loc"], out["conf"], out["mask"], out["proto"], out["priors"],
            score_threshold=eval_params.score_threshold, nms=eval_params.nms, nms_iou=eval_params.nms_iou,
            top_k=eval_params.top_k, max_detections=eval_params.max_detections, use_focal_loss=use_focal_loss,
        )
        in_pixels = [to_image(det, *t["orig_size"], eval_params.mask_threshold) for det, t in zip(detections, targets)]
        seconds += time.perf_counter() - start
        count += len(images)
        for det, target in zip(in_pixels, targets):
            det = {k: v.cpu() for k, v in det.items()}
            for iou_type, records in coco_results(int(target["image_id"]), det, category_ids).items():
                results[iou_type] += records
            if len(examples) < keep_examples:
                examples.append((int(target["image_id"]), det))
    return Predictions(results, seconds / max(count, 1), count, examples)


def score(gt_path: Path, predictions: Predictions) -> dict[str, CocoEvaluation]:
    """COCOeval of boxes and masks against the prepared ground truth."""
    return {t: coco_evaluate(gt_path, predictions.results[t], t) for t in IOU_TYPES}


def flat_metrics(evaluations: dict[str, CocoEvaluation]) -> dict[str, float]:
    """``{"bbox_AP": ..., "segm_AP50": ...}`` for MLflow and tables."""
    return {f"{t}_{k}": v for t, e in evaluations.items() for k, v in e.metrics.items()}

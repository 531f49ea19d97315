"""Inference over a prepared split and its COCO scoring: shared by the evaluate and ablate stages and by
validation during training."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from pycocotools.coco import COCO
from torchvision import tv_tensors

from pipeline.config import EvalParams, InputParams, Params
from pipeline.data.layout import annotations_path, ground_truth_path, image_dir
from pipeline.data.transforms import build_transforms
from pipeline.data.dataset import collate, read_rgb
from pipeline.evaluation.coco import IOU_TYPES, CocoEvaluation, coco_evaluate, coco_results
from pipeline.data.coco import load_coco
from pipeline.models.networks import network_of
from pipeline.models.detections import Detections, to_image


@dataclass
class Predictions:
    results: dict[str, list[dict]]  # COCO result records per IoU type
    seconds_per_image: float  # forward + post-processing, data loading excluded
    num_images: int
    image_ids: list[int] = field(default_factory=list)
    examples: list[tuple[int, Detections]] = field(default_factory=list)  # (image_id, detections)
    postprocess_seconds_per_image: float = 0.0  # masks to the original size and RLE encoding


class SplitImages(Dataset):
    """The images of one prepared role, resized and normalised as in evaluation, without decoding any
    ground truth: item ``(image [3, S, S], {"image_id", "orig_size": (h, w)})``."""

    def __init__(self, prepared_dir: Path, role: str, input_params: InputParams):
        self.images = sorted(load_coco(annotations_path(prepared_dir, role)).imgs.values(), key=lambda i: i["id"])
        self.image_dir = image_dir(prepared_dir, role)
        self.transform = build_transforms(input_params, train=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        image = read_rgb(self.image_dir / info["file_name"])
        return self.transform(tv_tensors.Image(image)), {"image_id": info["id"], "orig_size": (info["height"], info["width"])}


def split_loader(prepared_dir: Path, role: str, input_params: InputParams, batch_size: int,
                 num_workers: int) -> DataLoader:
    return DataLoader(SplitImages(prepared_dir, role, input_params), batch_size=batch_size, shuffle=False,
                      collate_fn=collate, num_workers=num_workers)


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
    """Run ``model`` (either architecture, as its :meth:`~pipeline.models.networks.Network.inference_model`) over
    ``loader`` and turn its detections into COCO result records."""
    net = network_of(model)
    model = net.inference_model(model)
    results: dict[str, list[dict]] = {t: [] for t in IOU_TYPES}
    examples: list[tuple[int, Detections]] = []
    image_ids: list[int] = []
    seconds, post_seconds = 0.0, 0.0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="predict", unit="batch", mininterval=1.0, dynamic_ncols=True)
    for images, targets in batches:
        start = time.perf_counter()
        detections = net.detect(model, images.to(device), eval_params, use_focal_loss)
        network_done = time.perf_counter()
        in_pixels = [to_image(det, *t["orig_size"], eval_params.mask_threshold) for det, t in zip(detections, targets)]
        for det, target in zip(in_pixels, targets):
            det = {k: v.cpu() for k, v in det.items()}
            image_ids.append(int(target["image_id"]))
            for iou_type, records in coco_results(int(target["image_id"]), det, category_ids).items():
                results[iou_type] += records
            if len(examples) < keep_examples:
                examples.append((int(target["image_id"]), det))
        now = time.perf_counter()
        seconds += now - start
        post_seconds += now - network_done
    count = max(len(image_ids), 1)
    return Predictions(results, seconds / count, len(image_ids), image_ids, examples, post_seconds / count)


def score(gt: COCO | Path, predictions: Predictions) -> dict[str, CocoEvaluation]:
    """COCOeval of boxes and masks against the ground truth ``gt`` (loaded, or its file), on the predicted images."""
    gt = gt if isinstance(gt, COCO) else load_coco(gt)
    return {t: coco_evaluate(gt, predictions.results[t], t, image_ids=predictions.image_ids) for t in IOU_TYPES}


def flat_metrics(evaluations: dict[str, CocoEvaluation]) -> dict[str, float]:
    """``{"bbox_AP": ..., "segm_AP50": ...}`` for MLflow and tables."""
    return {f"{t}_{k}": v for t, e in evaluations.items() for k, v in e.metrics.items()}


def validation_scorer(params: Params, prepared_dir: Path, category_ids: Sequence[int],
                      device: torch.device) -> Callable[[nn.Module], dict[str, float]]:
    """``score(model) -> {"val_bbox_AP", "val_segm_AP"}`` on the val split's official ground truth (parsed once)."""
    loader = split_loader(prepared_dir, "val", params.input, params.eval.batch_size, params.data.num_workers)
    gt = load_coco(ground_truth_path(prepared_dir, "val"))

    def score_model(model: nn.Module) -> dict[str, float]:
        predictions = predict(model, loader, params.eval, params.loss.use_focal_loss, category_ids, device,
                              progress=False)
        evaluations = score(gt, predictions)
        return {f"val_{t}_AP": evaluations[t].metrics["AP"] for t in IOU_TYPES}

    return score_model

"""Where evaluation time goes, per image: loading, the model, post-processing, mask RLE encoding and COCOeval,
each timed around the same calls ``pipeline.evaluation.inference.predict`` and ``score`` make (the evaluate stage's path:
the inference model, fp32, the model's own memory format, no autocast)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from pipeline.config import Params
from pipeline.data.layout import ground_truth_path
from pipeline.evaluation.coco import IOU_TYPES, bbox_results, coco_evaluate, segm_results
from pipeline.data.coco import load_coco
from pipeline.evaluation.inference import split_loader
from pipeline.models.yolact.postprocess import detect
from pipeline.models.detections import to_image
from pipeline.models.networks import network_of

from .timing import synchronize

PHASES = ("loading (decode, resize)", "model forward", "detect (decode, NMS, masks at prototype size)",
          "to_image (masks to image size, threshold)", "box records", "mask RLE encoding", "COCOeval bbox",
          "COCOeval segm")


def evaluation_breakdown(
    model: nn.Module, params: Params, prepared_dir: Path, split: str, category_ids: Sequence[int], device: torch.device,
    max_images: Optional[int] = None,
) -> dict[str, Any]:
    """Score ``model`` on ``split`` (batches of ``eval.batch_size``, loading in-process; the batches holding its
    first ``max_images`` images, default all) and return the time of each of :data:`PHASES` per image:
    ``{"split", "images", "detections_per_image", "phases": [...]}``."""
    loader = split_loader(prepared_dir, split, params.input, params.eval.batch_size, num_workers=0)
    seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        synchronize(device)
        seconds[name] += time.perf_counter() - start

    ev = params.eval
    results: dict[str, list[dict]] = {t: [] for t in IOU_TYPES}
    image_ids: list[int] = []
    batches = iter(loader)
    model = network_of(model).inference_model(model)
    with torch.no_grad():
        while max_images is None or len(image_ids) < max_images:
            with phase(PHASES[0]):
                batch = next(batches, None)
            if batch is None:
                break
            images, targets = batch
            with phase(PHASES[1]):
                out = model(images.to(device))
            with phase(PHASES[2]):
                detections = detect(
                    out["loc"], out["conf"], out["mask"], out["proto"], out["priors"],
                    score_threshold=ev.score_threshold, nms=ev.nms, nms_iou=ev.nms_iou, top_k=ev.top_k,
                    max_detections=ev.max_detections, use_focal_loss=params.loss.use_focal_loss)
            for det, target in zip(detections, targets):
                image_id = int(target["image_id"])
                image_ids.append(image_id)
                with phase(PHASES[3]):
                    det = {k: v.cpu() for k, v in to_image(det, *target["orig_size"], ev.mask_threshold).items()}
                with phase(PHASES[4]):
                    results["bbox"] += bbox_results(image_id, det["boxes"], det["scores"], det["labels"], category_ids)
                with phase(PHASES[5]):
                    results["segm"] += segm_results(image_id, det["masks"], det["scores"], det["labels"], category_ids)
    gt = load_coco(ground_truth_path(prepared_dir, split))
    for iou_type, name in zip(IOU_TYPES, PHASES[6:]):
        with phase(name):
            coco_evaluate(gt, results[iou_type], iou_type, image_ids=image_ids)
    count = max(len(image_ids), 1)
    total = sum(seconds.values()) or 1.0
    return {
        "split": split, "images": len(image_ids), "detections_per_image": len(results["bbox"]) / count,
        "ms_per_image": 1e3 * total / count,
        "phases": [{"phase": name, "ms_per_image": 1e3 * s / count, "share": s / total} for name, s in seconds.items()],
    }

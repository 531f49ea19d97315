"""How well a set of anchors covers the ground truth, before any training.

For every (pos_iou, neg_iou) x anchor-scale cell: the best possible recall (share of non-crowd GTs with
some prior at IoU >= pos_iou, before force-matching), mean positive priors per GT by COCO size bucket,
the share of GTs that get only their force-matched prior, and positive / neutral / negative prior
counts per image, all from the same `match_batch` the training loss uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pipeline.models.priors.boxes import point_form
from pipeline.config import Params, replace
from pipeline.models.priors.matching import match_batch
from pipeline.models.backbone.trunk import build_trunk

SIZE_BUCKETS = ("small", "medium", "large")


@dataclass(frozen=True)
class ImageBoxes:
    """One image's boxes, normalised x1y1x2y2 (identical before and after the square resize)."""

    boxes: Tensor  # [G, 4] non-crowd
    areas: Tensor  # [G] annotation area in original pixels (COCO size buckets)
    crowd_boxes: Tensor  # [K, 4]


def read_image_boxes(annotations_json: Path) -> list[ImageBoxes]:
    """Boxes of every image of a prepared COCO-format split."""
    coco = json.loads(Path(annotations_json).read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    per_image: dict[int, tuple[list, list, list]] = {img_id: ([], [], []) for img_id in sizes}
    for ann in coco["annotations"]:
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        box = [x / w, y / h, (x + bw) / w, (y + bh) / h]
        boxes, areas, crowd = per_image[ann["image_id"]]
        if ann.get("iscrowd", 0):
            crowd.append(box)
        else:
            boxes.append(box)
            areas.append(ann["area"])
    return [
        ImageBoxes(torch.tensor(b, dtype=torch.float32).reshape(-1, 4), torch.tensor(a, dtype=torch.float32),
                   torch.tensor(c, dtype=torch.float32).reshape(-1, 4))
        for b, a, c in per_image.values()
    ]


def size_bucket(areas: Tensor) -> Tensor:
    """COCO buckets: 0 small (< 32^2), 1 medium, 2 large (> 96^2)."""
    return (areas >= 32**2).long() + (areas > 96**2).long()


def anchor_statistics(
    images: Sequence[ImageBoxes],
    priors: Tensor,
    pos_iou: float,
    neg_iou: float,
    crowd_iou: float,
    chunk: int = 64,
) -> dict[str, float]:
    """Coverage statistics of ``priors [P, 4]`` (cx, cy, w, h) over ``images``."""
    prior_boxes = point_form(priors)
    gts = covered = force_only = 0
    pos_per_bucket = torch.zeros(3)
    gts_per_bucket = torch.zeros(3)
    counts = torch.zeros(3)  # positive, neutral, negative priors
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk]
        conf_t, matched_idx, _ = match_batch(
            [im.boxes for im in batch], [torch.zeros(len(im.boxes), dtype=torch.long) for im in batch],
            priors, pos_iou, neg_iou, [im.crowd_boxes if len(im.crowd_boxes) else None for im in batch], crowd_iou,
        )
        counts += torch.stack([(conf_t > 0).sum(), (conf_t < 0).sum(), (conf_t == 0).sum()]).float()
        for im, conf, idx in zip(batch, conf_t, matched_idx):
            g = len(im.boxes)
            if g == 0:
                continue
            iou = box_iou(im.boxes, prior_boxes)  # [G, P]
            gts += g
            covered += int((iou.max(dim=1).values >= pos_iou).sum())
            positive = conf > 0
            pos_count = torch.bincount(idx[positive], minlength=g)[:g].float()
            # Positives a GT earns by threshold alone, i.e. excluding a force-matched prior under pos_iou.
            by_threshold = positive & (iou[idx.clamp(max=g - 1), torch.arange(len(idx))] >= pos_iou)
            force_only += int((torch.bincount(idx[by_threshold], minlength=g)[:g] == 0).sum())
            bucket = size_bucket(im.areas)
            pos_per_bucket += torch.bincount(bucket, weights=pos_count, minlength=3)
            gts_per_bucket += torch.bincount(bucket, minlength=3).float()
    n_images = max(len(images), 1)
    stats = {
        "num_gts": float(gts),
        "best_possible_recall": covered / gts if gts else float("nan"),
        "force_only_share": force_only / gts if gts else float("nan"),
        "pos_priors_per_image": float(counts[0]) / n_images,
        "neutral_priors_per_image": float(counts[1]) / n_images,
        "neg_priors_per_image": float(counts[2]) / n_images,
    }
    for i, name in enumerate(SIZE_BUCKETS):
        n = float(gts_per_bucket[i])
        stats[f"pos_per_gt_{name}"] = float(pos_per_bucket[i]) / n if n else float("nan")
    return stats


def feature_sizes(params: Params) -> list[tuple[int, int]]:
    """FPN feature sizes at ``params.input.size`` (the same for both architectures), from a forward pass of
    the trunk on the meta device (no compute)."""
    params = replace(params, **{"model.backbone.pretrained": None})
    size = params.input.size
    with torch.device("meta"):
        backbone, fpn = build_trunk(params)
        features = fpn(backbone(torch.empty(1, 3, size, size)))
    return [tuple(f.shape[-2:]) for f in features]

"""The batched matcher (:func:`pipeline.matching.match_batch`) against the per-image reference loop."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from pipeline.matching import match_batch

from .timing import measure

Matcher = Callable[..., tuple[Tensor, Tensor, Tensor]]


def random_ground_truth(
    batch: int, num_gt: int, num_classes: int, generator: torch.Generator
) -> tuple[list[Tensor], list[Tensor]]:
    """``batch`` images of ``num_gt`` boxes ``[G, 4]`` (normalised x1y1x2y2) and labels ``[G]``.

    Sides are ``0.01 + 0.5 u^2`` of the image (``u`` uniform), so small boxes dominate as in COCO;
    centres are uniform and boxes are clipped to the image.
    """
    boxes, labels = [], []
    for _ in range(batch):
        centre = torch.rand(num_gt, 2, generator=generator)
        half = (torch.rand(num_gt, 2, generator=generator) ** 2 * 0.5 + 0.01) / 2
        boxes.append(torch.cat([centre - half, centre + half], dim=1).clamp(0, 1))
        labels.append(torch.randint(0, num_classes, (num_gt,), generator=generator))
    return boxes, labels


def compare_matching(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors: Tensor,
    pos_iou: float,
    neg_iou: float,
    reference: Matcher,
    device: torch.device,
    repeats: int,
) -> dict[str, object]:
    """Time ``match_batch`` (1 warm-up, best of ``repeats``) and ``reference`` per image (one pass: it
    is the slow one), and check that ``conf_t``, ``matched_idx`` and ``loc_t`` are identical."""
    gt_boxes = [b.to(device) for b in gt_boxes]
    gt_labels = [l.to(device) for l in gt_labels]
    priors = priors.to(device)
    batched: list[tuple[Tensor, Tensor, Tensor]] = []
    fast = measure(lambda: batched.append(match_batch(gt_boxes, gt_labels, priors, pos_iou, neg_iou)),
                   device, 1, repeats)
    per_image: list[tuple[Tensor, Tensor, Tensor]] = []
    slow = measure(lambda: per_image.extend(reference(b, l, priors, pos_iou, neg_iou) for b, l in zip(gt_boxes, gt_labels)),
                   device, 0, 1)
    conf_t, matched_idx, loc_t = batched[-1]
    identical = {
        "conf_t": all(torch.equal(conf_t[i], ref[0]) for i, ref in enumerate(per_image)),
        "matched_idx": all(torch.equal(matched_idx[i], ref[1]) for i, ref in enumerate(per_image)),
        "loc_t": all(torch.equal(loc_t[i], ref[2]) for i, ref in enumerate(per_image)),
    }
    return {
        "batch": len(gt_boxes),
        "num_gt": max(len(b) for b in gt_boxes),
        "num_priors": len(priors),
        "match_batch": fast.as_dict(),
        "reference": slow.as_dict(),
        "speedup": slow.best / fast.best,
        "identical": all(identical.values()),
        "identical_by_output": identical,
    }

"""The batched matcher (:func:`pipeline.models.priors.matching.match_batch`) against the seed's per-image loop
(:func:`benchmarks.reference_match.reference_match`), timed alike and checked on the timed calls' outputs."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from pipeline.models.priors.matching import match_batch

from .reference_match import reference_match
from .timing import measure_interleaved

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
    device: torch.device,
    warmup: int,
    repeats: int,
    reference: Matcher = reference_match,
) -> dict[str, object]:
    """Time ``match_batch`` on the whole batch and ``reference`` image by image in turn (A B A B ...),
    each ``warmup`` times untimed and then ``repeats`` times timed (median), and compare ``conf_t``,
    ``matched_idx`` and ``loc_t`` of their last timed calls for exact equality."""
    gt_boxes = [b.to(device) for b in gt_boxes]
    gt_labels = [l.to(device) for l in gt_labels]
    priors = priors.to(device)
    outputs: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def batched() -> None:
        outputs["match_batch"] = match_batch(gt_boxes, gt_labels, priors, pos_iou, neg_iou)

    def looped() -> None:
        per_image = [reference(b, l, priors, pos_iou, neg_iou) for b, l in zip(gt_boxes, gt_labels)]
        outputs["reference"] = tuple(torch.stack(parts) for parts in zip(*per_image))

    timings = measure_interleaved({"match_batch": batched, "reference": looped}, device, warmup, repeats)
    identical = {name: torch.equal(fast, slow) for name, fast, slow
                 in zip(("conf_t", "matched_idx", "loc_t"), outputs["match_batch"], outputs["reference"])}
    return {
        "batch": len(gt_boxes),
        "num_gt": max(len(b) for b in gt_boxes),
        "num_priors": len(priors),
        "match_batch": timings["match_batch"].as_dict(),
        "reference": timings["reference"].as_dict(),
        "speedup": timings["reference"].median / timings["match_batch"].median,
        "identical": all(identical.values()),
        "identical_by_output": identical,
    }

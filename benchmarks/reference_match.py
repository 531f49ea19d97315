"""The seed's matcher: YOLACT's per-image matching loop, written out plainly, one GT per iteration.

The reference that :func:`pipeline.models.priors.matching.match_batch` is timed against (benchmarks) and checked against (tests)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pipeline.models.priors.boxes import box_ioa, encode, point_form


def reference_match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    pos_iou: float,
    neg_iou: float,
    crowd_boxes: Optional[Tensor] = None,
    crowd_iou: float = 0.7,
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`pipeline.models.priors.matching.match`, one GT per loop iteration."""
    prior_boxes = point_form(priors)
    num_priors = len(priors)
    if len(gt_boxes) == 0:
        conf = torch.zeros(num_priors, dtype=torch.long)
        best_truth_idx = torch.zeros(num_priors, dtype=torch.long)
        loc = torch.zeros(num_priors, 4)
    else:
        overlaps = box_iou(gt_boxes, prior_boxes)  # [G, P]
        best_truth_overlap, best_truth_idx = overlaps.max(0)
        for _ in range(len(gt_boxes)):
            best_prior_overlap, best_prior_idx = overlaps.max(1)
            j = best_prior_overlap.max(0).indices
            i = best_prior_idx[j]
            overlaps[:, i] = -1
            overlaps[j, :] = -1
            best_truth_overlap[i] = 2
            best_truth_idx[i] = j
        conf = gt_labels[best_truth_idx] + 1
        conf[best_truth_overlap < pos_iou] = -1
        conf[best_truth_overlap < neg_iou] = 0
        loc = encode(gt_boxes[best_truth_idx], priors)

    if crowd_boxes is not None and len(crowd_boxes) > 0:
        best_crowd_overlap = box_ioa(prior_boxes, crowd_boxes).max(1).values
        conf[(conf <= 0) & (best_crowd_overlap > crowd_iou)] = -1
    return conf, best_truth_idx, loc

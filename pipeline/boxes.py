"""Box formats, overlap measures and the YOLACT (SSD-style) box coding.

Boxes are ``xyxy`` (x1, y1, x2, y2) unless a name says otherwise; priors are ``cxcywh``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert

VARIANCES = (0.1, 0.2)


def point_form(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def center_form(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas of broadcast box pairs ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    wh = (torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2]))
    wh = wh.clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of broadcast box pairs ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.

    The operations and their order are those of ``torchvision.ops.box_iou``, so every value is
    bit-identical to the matching entry of its all-pairs matrix; matching relies on that to compute
    only the pairs that can overlap.
    """
    inter = _intersection(boxes1, boxes2)
    return inter / (box_area(boxes1) + box_area(boxes2) - inter)


def box_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the area of the first box: ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]``.

    This is the overlap used for crowd regions: how much of each box lies inside each region.
    """
    return _intersection(boxes[:, None], regions[None]) / box_area(boxes)[:, None]


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Regression targets ``[P, 4]`` for ``matched`` xyxy boxes ``[P, 4]`` against cxcywh ``priors [P, 4]``.

    ``d_cxcy = (c_gt - c_prior) / (v0 * wh_prior)``, ``d_wh = log(wh_gt / wh_prior) / v1``.
    """
    matched = center_form(matched)
    d_cxcy = (matched[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
    d_wh = torch.log(matched[..., 2:] / priors[..., 2:]) / variances[1]
    return torch.cat([d_cxcy, d_wh], dim=-1)


def decode(loc: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Inverse of :func:`encode`: offsets ``[..., P, 4]`` and priors ``[P, 4]`` -> xyxy boxes ``[..., P, 4]``."""
    cxcy = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return point_form(torch.cat([cxcy, wh], dim=-1))

"""Box formats, overlap measures and the YOLACT (SSD-style) box coding.

Boxes are ``xyxy`` (x1, y1, x2, y2) unless a name says otherwise; priors are ``cxcywh``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert

VARIANCES = (0.1, 0.2)


def point_form(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def center_form(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def coords_iou(
    boxes1: Sequence[Tensor],
    boxes2: Sequence[Tensor],
    out: Optional[Tensor] = None,
    scratch: Optional[tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """IoU of two broadcastable box sets given as coordinates ``(x1, y1, x2, y2)``, each a tensor.

    The operations and their order are those of ``torchvision.ops.box_iou``, so every value is
    bit-identical to the matching entry of its all-pairs matrix; matching relies on that to compute
    only the pairs that can overlap. Coordinate-major (contiguous per coordinate) inputs are several
    times faster than slices of ``[..., 4]`` tensors. ``out`` and the two ``scratch`` tensors, of the
    broadcast shape, may be passed to reuse memory (fresh large allocations dominate on CPU).
    """
    out, scratch = _buffers(boxes1, boxes2, out, scratch)
    inter = _intersection(boxes1, boxes2, out, scratch)
    union = torch.add(_area(boxes1), _area(boxes2), out=scratch[0])
    return inter.div_(union.sub_(inter))


def box_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the area of the first box: ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    This is the overlap used for crowd regions: how much of each box lies inside each region.
    """
    boxes = boxes[..., :, None, :].unbind(-1)
    inter = _intersection(boxes, regions[..., None, :, :].unbind(-1))
    return inter.div_(_area(boxes))


def _buffers(
    boxes1: Sequence[Tensor],
    boxes2: Sequence[Tensor],
    out: Optional[Tensor],
    scratch: Optional[tuple[Tensor, Tensor]],
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    if out is None or scratch is None:
        shape = torch.broadcast_shapes(*(c.shape for c in (*boxes1, *boxes2)))
        out, scratch = boxes1[0].new_empty(shape), (boxes1[0].new_empty(shape), boxes1[0].new_empty(shape))
    return out, scratch


def _intersection(
    boxes1: Sequence[Tensor],
    boxes2: Sequence[Tensor],
    out: Optional[Tensor] = None,
    scratch: Optional[tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """Intersection areas of broadcastable coordinate tuples, written into ``out``."""
    (x1, y1, x2, y2), (u1, v1, u2, v2) = boxes1, boxes2
    out, (tmp, tmp2) = _buffers(boxes1, boxes2, out, scratch)
    torch.minimum(x2, u2, out=out).sub_(torch.maximum(x1, u1, out=tmp)).clamp_(min=0)
    torch.minimum(y2, v2, out=tmp).sub_(torch.maximum(y1, v1, out=tmp2)).clamp_(min=0)
    return out.mul_(tmp)


def _area(boxes: Sequence[Tensor]) -> Tensor:
    x1, y1, x2, y2 = boxes
    return (x2 - x1) * (y2 - y1)


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Regression targets ``[..., P, 4]`` for ``matched`` xyxy boxes ``[..., P, 4]`` and cxcywh ``priors [P, 4]``.

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

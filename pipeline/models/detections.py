"""Detections as every architecture returns them (a dict of tensors) and their mapping to the original image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


Detections = dict[str, Tensor]


def crop_masks(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero ``masks [N, H, W]`` outside ``boxes [N, 4]`` (normalised x1y1x2y2).

    A pixel is kept when its square overlaps the box, so coarse masks do not lose the pixels a box
    edge cuts through.
    """
    height, width = masks.shape[-2:]
    cols = torch.arange(width, device=masks.device, dtype=boxes.dtype)
    rows = torch.arange(height, device=masks.device, dtype=boxes.dtype)
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    in_cols = ((cols + 1) / width > x1) & (cols / width < x2)
    in_rows = ((rows + 1) / height > y1) & (rows / height < y2)
    return masks * (in_rows[:, :, None] & in_cols[:, None, :])


def to_image(det: Detections, orig_h: int, orig_w: int, mask_threshold: float) -> Detections:
    """One image's detections (from :func:`detect`) at its original size.

    Returns ``boxes [N, 4]`` in pixels (x1y1x2y2), ``scores``, ``labels`` unchanged and binary
    ``masks [N, orig_h, orig_w]`` (bool): the prototype-resolution probabilities are resized
    bilinearly, cut to the box at full resolution and thresholded at ``mask_threshold``.
    """
    masks = det["masks"]
    if masks.shape[0]:
        masks = F.interpolate(masks[None], size=(orig_h, orig_w), mode="bilinear", align_corners=False)[0]
    else:
        masks = masks.new_zeros((0, orig_h, orig_w))
    # Bilinear resizing blurs the low-resolution crop across the box edge; crop again exactly.
    masks = crop_masks(masks, det["boxes"]) > mask_threshold
    scale = det["boxes"].new_tensor([orig_w, orig_h, orig_w, orig_h])
    return {"boxes": det["boxes"] * scale, "scores": det["scores"], "labels": det["labels"], "masks": masks}

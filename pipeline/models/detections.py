"""Detections as every architecture returns them (a dict of tensors) and their mapping to the original image."""
from __future__ import annotations

import functools

import torch
from torch import Tensor


Detections = dict[str, Tensor]


def _covered(starts: Tensor, stops: Tensor, size: int) -> Tensor:
    """``[N, size]``: which of ``size`` pixels each interval ``[start, stop)`` (normalised) overlaps."""
    pixels = torch.arange(size, device=starts.device, dtype=starts.dtype)
    return ((pixels + 1) / size > starts[:, None]) & (pixels / size < stops[:, None])


def crop_masks(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero ``masks [N, H, W]`` outside ``boxes [N, 4]`` (normalised x1y1x2y2).

    A pixel is kept when its square overlaps the box, so coarse masks do not lose the pixels a box
    edge cuts through.
    """
    height, width = masks.shape[-2:]
    in_rows = _covered(boxes[:, 1], boxes[:, 3], height)
    in_cols = _covered(boxes[:, 0], boxes[:, 2], width)
    return masks * (in_rows[:, :, None] & in_cols[:, None, :])


def _pixel_ranges(starts: Tensor, stops: Tensor, size: int) -> list[tuple[int, int]]:
    """Per box, the pixel range ``(first, stop)`` that :func:`crop_masks` keeps along one axis."""
    covered = _covered(starts, stops, size)
    first = covered.int().argmax(dim=1)
    return list(zip(first.tolist(), (first + covered.sum(dim=1)).tolist()))


@functools.lru_cache(maxsize=32)
def _resize_axis(out_size: int, in_size: int, device: torch.device) -> tuple[Tensor, list[int], list[int]]:
    """The weights ``[out_size, in_size]`` with which ``F.interpolate(mode="bilinear", align_corners=False)``
    mixes the source pixels of one axis into each output pixel (at most two per row), and per output pixel
    the first and last source pixel it reads. Cached: images of a dataset share a few sizes."""
    real = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = real.long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    weight = (real - low).clamp(0, 1)
    rows = torch.arange(out_size, device=device)
    matrix = torch.zeros(out_size, in_size, device=device)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix, low.tolist(), high.tolist()


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """Binary masks ``[N, height, width]`` from mask probabilities ``masks [N, h, w]`` and their ``boxes [N, 4]``
    (normalised x1y1x2y2).

    The pixels of resizing every mask bilinearly to the full image, cutting it to its box with
    :func:`crop_masks` and thresholding at ``threshold``, computed inside each box only (as torchvision's
    ``paste_masks_in_image``): the cost follows the box areas, not detections x image size. The resize is
    two small matrix products per box (rows, then columns); a pixel whose probability is within float
    rounding of ``threshold`` may come out either way.
    """
    pasted = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
    if masks.shape[0] == 0:
        return pasted
    masks = masks.float()
    row_matrix, row_first, row_last = _resize_axis(height, masks.shape[1], masks.device)
    col_matrix, col_first, col_last = _resize_axis(width, masks.shape[2], masks.device)
    col_matrix = col_matrix.t()
    rows = _pixel_ranges(boxes[:, 1], boxes[:, 3], height)
    cols = _pixel_ranges(boxes[:, 0], boxes[:, 2], width)
    for i, ((top, bottom), (left, right)) in enumerate(zip(rows, cols)):
        if bottom <= top or right <= left:
            continue
        source_rows = slice(row_first[top], row_last[bottom - 1] + 1)
        source_cols = slice(col_first[left], col_last[right - 1] + 1)
        values = row_matrix[top:bottom, source_rows] @ masks[i, source_rows, source_cols] @ col_matrix[source_cols, left:right]
        pasted[i, top:bottom, left:right] = values > threshold
    return pasted


def to_image(det: Detections, orig_h: int, orig_w: int, mask_threshold: float) -> Detections:
    """One image's detections (from :func:`detect`) at its original size.

    Returns ``boxes [N, 4]`` in pixels (x1y1x2y2), ``scores``, ``labels`` unchanged and binary
    ``masks [N, orig_h, orig_w]`` (bool): the probabilities, resized bilinearly inside the box and cut
    to it at full resolution, thresholded at ``mask_threshold`` (:func:`paste_masks`).
    """
    masks = paste_masks(det["masks"], det["boxes"], orig_h, orig_w, mask_threshold)
    scale = det["boxes"].new_tensor([orig_w, orig_h, orig_w, orig_h])
    return {"boxes": det["boxes"] * scale, "scores": det["scores"], "labels": det["labels"], "masks": masks}

"""Prior (anchor) boxes for the YOLACT prediction head."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def num_anchors_per_location(scales: Sequence[Sequence[float]], aspect_ratios: Sequence[float]) -> int:
    """Anchors at each feature-map location; equal on every level because the head is shared."""
    counts = {len(level) for level in scales}
    if len(counts) != 1:
        raise ValueError(f"every level needs the same number of anchor scales, got {list(scales)}")
    return counts.pop() * len(aspect_ratios)


def make_priors(
    image_size: int,
    feature_sizes: Sequence[tuple[int, int]],
    scales: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
    square: bool = False,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Priors ``[P, 4]`` as normalised (cx, cy, w, h), ordered by level, y, x, scale, ratio.

    ``feature_sizes[l] = (H_l, W_l)`` and ``scales[l]`` (pixels) belong to level ``l``. Centres sit at
    ``((x + 0.5) / W_l, (y + 0.5) / H_l)``; ``w = s * sqrt(ar) / image_size``, ``h = s / sqrt(ar) / image_size``;
    ``square`` then sets ``h = w`` (the switch YOLACT's released weights were trained with).
    """
    if len(feature_sizes) != len(scales):
        raise ValueError(f"{len(feature_sizes)} feature maps but {len(scales)} levels of anchor scales")
    num_anchors_per_location(scales, aspect_ratios)
    levels = []
    for (height, width), level_scales in zip(feature_sizes, scales):
        wh = torch.tensor(
            [
                [s * math.sqrt(ar) / image_size, s / math.sqrt(ar) / image_size]
                for s in level_scales
                for ar in aspect_ratios
            ],
            dtype=torch.float32,
            device=device,
        )
        if square:
            wh[:, 1] = wh[:, 0]
        cy = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        cx = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(wh), 2)
        sizes = wh.expand(height * width, -1, 2)
        levels.append(torch.cat([centres, sizes], dim=-1).reshape(-1, 4))
    return torch.cat(levels)

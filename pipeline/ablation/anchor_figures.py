"""Figures of the anchors stage: how well each anchor set covers the ground-truth boxes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.utils.io import atomic_file
from pipeline.analysis.figures import _figure


def anchor_stats_figure(table: pd.DataFrame, path: Path) -> None:
    """Best possible recall, force-only share and positives per GT by size, one group per cell."""
    plt = _figure()
    labels = [f"{r.anchor_scales}\n{r.pos_iou:g}/{r.neg_iou:g}" for r in table.itertuples()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(table))
    width = 0.4
    axes[0].bar([i - width / 2 for i in x], table["best_possible_recall"], width, label="best possible recall")
    axes[0].bar([i + width / 2 for i in x], table["force_only_share"], width, label="GTs with only a forced prior")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("GT coverage (pos/neg IoU)")
    for j, bucket in enumerate(("small", "medium", "large")):
        axes[1].bar([i + (j - 1) * 0.27 for i in x], table[f"pos_per_gt_{bucket}"], 0.27, label=bucket)
    axes[1].set_title("positive priors per GT")
    for ax in axes:
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def box_scales(dataset: dict[str, Any], input_size: int) -> np.ndarray:
    """``sqrt(w * h)`` of every non-crowd box of a COCO json after resizing its image to ``input_size`` squared."""
    images = {image["id"]: image for image in dataset["images"]}
    scales = [
        math.sqrt(
            ann["bbox"][2] * input_size / images[ann["image_id"]]["width"]
            * ann["bbox"][3] * input_size / images[ann["image_id"]]["height"]
        )
        for ann in dataset["annotations"]
        if not ann["iscrowd"]
    ]
    return np.asarray(scales, dtype=np.float64)


def box_sizes_figure(
    datasets: Mapping[str, dict[str, Any]],
    input_size: int,
    anchor_scales: Sequence[Sequence[float]],
    path: Path,
) -> None:
    """Histogram of GT box scales at ``input_size`` per role, with the anchor scales drawn over it."""
    plt = _figure()
    scales = {role: box_scales(dataset, input_size) for role, dataset in datasets.items()}
    everything = [*(s for level in anchor_scales for s in level), *(v for s in scales.values() for v in s)]
    bins = np.geomspace(max(1.0, min(everything) / 1.5), max(everything) * 1.5, 40)
    fig, ax = plt.subplots(figsize=(7, 4))
    for role, values in scales.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{role} ({values.size} boxes)")
    for level, level_scales in enumerate(anchor_scales):
        for scale in level_scales:
            ax.axvline(scale, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"L{level}: {scale:g}", (scale, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"sqrt(box area) in pixels at input size {input_size}")
    ax.set_ylabel("boxes")
    ax.set_title("Ground-truth box sizes and anchor scales")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

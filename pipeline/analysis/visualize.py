"""A side-by-side figure of ground truth and predictions for a few images."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from pipeline.utils.io import atomic_file

MASK_ALPHA = 0.45
_PALETTE = colormaps["tab20"]


def class_color(label: int) -> tuple[float, float, float]:
    """A fixed RGB colour (0..1) per 0-based class label."""
    return _PALETTE(label % _PALETTE.N)[:3]


def overlay_masks(image: np.ndarray, masks: np.ndarray, labels: Sequence[int], alpha: float = MASK_ALPHA) -> np.ndarray:
    """``image [H, W, 3]`` uint8 with ``masks [N, H, W]`` (bool) blended in their class colours -> float ``[H, W, 3]`` in 0..1."""
    out = image.astype(np.float32) / 255.0
    for mask, label in zip(masks, labels):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(class_color(label), dtype=np.float32)
    return out


def _draw(ax, image: np.ndarray, instances: Mapping[str, Tensor], class_names: Sequence[str], title: str) -> None:
    labels = instances["labels"].tolist()
    ax.imshow(overlay_masks(image, instances["masks"].cpu().numpy().astype(bool), labels))
    scores = instances["scores"].tolist() if "scores" in instances else [None] * len(labels)
    for (x1, y1, x2, y2), label, score in zip(instances["boxes"].tolist(), labels, scores):
        color = class_color(label)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        text = class_names[label] if score is None else f"{class_names[label]} {score:.2f}"
        ax.text(x1, y1, text, fontsize=7, color="white", va="bottom", bbox={"facecolor": color, "pad": 1, "linewidth": 0})
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def save_comparison(
    images: Sequence[np.ndarray],
    targets: Sequence[Mapping[str, Tensor]],
    detections: Sequence[Mapping[str, Tensor]],
    class_names: Sequence[str],
    path: str | Path,
    min_score: float = 0.3,
) -> Path:
    """Write a PNG with one row per image: ground truth left, predictions (score >= ``min_score``) right.

    ``images[i]`` is ``[H, W, 3]`` uint8 RGB at original size; ``targets[i]`` has ``boxes [G, 4]``
    (pixel x1y1x2y2), ``labels [G]`` (0-based) and ``masks [G, H, W]``; ``detections[i]`` is the output
    of :func:`pipeline.models.detections.to_image` for that image; ``class_names[label]`` names a label.
    """
    if not len(images) == len(targets) == len(detections) > 0:
        raise ValueError("need the same positive number of images, targets and detections")
    panel_width, title_height = 4.0, 0.4  # inches
    rows_height = sum(panel_width * np.shape(image)[0] / np.shape(image)[1] + title_height for image in images)
    fig = Figure(figsize=(2 * panel_width, rows_height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), 2, squeeze=False)
    for row, (image, target, det) in enumerate(zip(images, targets, detections)):
        shown = det["scores"] >= min_score
        _draw(axes[row, 0], np.asarray(image), target, class_names, "ground truth")
        _draw(
            axes[row, 1],
            np.asarray(image),
            {key: det[key][shown] for key in ("boxes", "scores", "labels", "masks")},
            class_names,
            f"predictions (score >= {min_score:g})",
        )
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def save_overlay(image: np.ndarray, detections: Mapping[str, Tensor], class_names: Sequence[str], path: str | Path,
                 title: str = "") -> Path:
    """Write ``image [H, W, 3]`` uint8 with ``detections`` (pixel ``boxes``, ``labels``, ``scores``, bool
    ``masks [N, H, W]``) drawn on it, at about the image's own resolution."""
    height, width = np.shape(image)[:2]
    dpi = 100
    fig = Figure(figsize=(max(width, 64) / dpi, max(height, 64) / dpi + (0.3 if title else 0)), layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig.add_subplot(), np.asarray(image), detections, class_names, title)
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path

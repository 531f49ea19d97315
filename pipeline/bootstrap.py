"""Image-bootstrap confidence intervals of COCO AP, from COCOeval's per-image matches.

A resample draws the evaluated images with replacement; an image drawn ``c`` times weights each of its
detections and ground truths by ``c``. :func:`weighted_ap` recomputes AP for many such weightings at once
from an :class:`~pipeline.evaluation.ImageMatches`, as ``COCOeval.accumulate`` and ``summarize`` compute it
(cumulative true and false positives in score order, the monotone precision envelope sampled at 101
recall points, the mean over the categories with ground truth); with every weight 1 it equals
``COCOeval.stats[0]`` (AP) and ``stats[1]`` (AP50) exactly. Neither the model nor the matching is re-run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluation import ImageMatches

AP_IOU = {"AP": None, "AP50": 0.5}  # the metrics resampled: AP@[.5:.95] and AP at IoU 0.5
# Resamples scored at once: bounds the (detections x resamples) and (resamples x T x R x K) work arrays.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Interval:
    """A metric on the full image set (``estimate``) and its bootstrap percentile interval ``[lo, hi]``."""

    estimate: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Difference:
    """``estimate`` = metric(a) - metric(b), its paired interval, and whether that interval excludes 0."""

    estimate: float
    lo: float
    hi: float
    significant: bool


def resample_counts(num_images: int, num_resamples: int, seed: int) -> np.ndarray:
    """``[num_resamples, num_images]`` multiplicities: each row draws ``num_images`` images with replacement."""
    if num_images < 1 or num_resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {num_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=num_resamples)


def weighted_ap(matches: ImageMatches, weights: np.ndarray) -> dict[str, np.ndarray]:
    """AP and AP50 (area all, maxDets 100) for each row of ``weights [B, I]`` (integer image multiplicities).

    Returns ``{"AP": [B], "AP50": [B]}``; NaN where a row leaves no category with ground truth.
    """
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != len(matches.image_ids):
        raise ValueError(f"weights must be [resamples, {len(matches.image_ids)} images], got {weights.shape}")
    num_thresholds, num_recalls = len(matches.iou_thresholds), len(matches.recall_thresholds)
    num_categories = len(matches.category_ids)
    largest_category = max((_size(matches.category_slice(k)) for k in range(num_categories)), default=0)
    chunk = max(1, _CHUNK_ELEMENTS // max(largest_category, num_thresholds * num_recalls * num_categories, 1))
    thresholds = {name: _threshold_index(matches.iou_thresholds, iou) for name, iou in AP_IOU.items()}

    aps = {name: np.empty(len(weights)) for name in AP_IOU}
    for start in range(0, len(weights), chunk):
        rows = weights[start : start + chunk]
        precision, has_gt = _weighted_precision(matches, rows)
        for name, t in thresholds.items():
            aps[name][start : start + len(rows)] = _mean_precision(precision[:, t], has_gt)
    return aps


def bootstrap_ap(
    matches: ImageMatches, num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Interval]:
    """``{"AP": Interval, "AP50": Interval}``: percentile intervals over ``num_resamples`` image resamples."""
    counts = resample_counts(len(matches.image_ids), num_resamples, seed)
    full = weighted_ap(matches, np.ones((1, len(matches.image_ids)), dtype=np.int64))
    resampled = weighted_ap(matches, counts)
    return {
        name: Interval(float(full[name][0]), *_percentile_interval(resampled[name], confidence)) for name in AP_IOU
    }


def paired_bootstrap_difference(
    a: ImageMatches, b: ImageMatches, num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Difference]:
    """``{"AP": Difference, "AP50": Difference}`` of ``a`` minus ``b``, two evaluations of the same images.

    Every resample draws the same images for both, so what the two share (hard images, easy images)
    cancels in the difference.
    """
    if not np.array_equal(a.image_ids, b.image_ids):
        only_a = np.setdiff1d(a.image_ids, b.image_ids).size
        only_b = np.setdiff1d(b.image_ids, a.image_ids).size
        raise ValueError(
            f"paired bootstrap needs two evaluations of the same images: {len(a.image_ids)} vs "
            f"{len(b.image_ids)} images, {only_a} only in a, {only_b} only in b"
        )
    counts = resample_counts(len(a.image_ids), num_resamples, seed)
    ones = np.ones((1, len(a.image_ids)), dtype=np.int64)
    full_a, full_b = weighted_ap(a, ones), weighted_ap(b, ones)
    resampled_a, resampled_b = weighted_ap(a, counts), weighted_ap(b, counts)
    differences = {}
    for name in AP_IOU:
        lo, hi = _percentile_interval(resampled_a[name] - resampled_b[name], confidence)
        estimate = float(full_a[name][0] - full_b[name][0])
        differences[name] = Difference(estimate, lo, hi, significant=bool(lo > 0 or hi < 0))
    return differences


def _size(s: slice) -> int:
    return s.stop - s.start


def _threshold_index(iou_thresholds: np.ndarray, iou: float | None) -> slice:
    """All thresholds (``iou`` None) or the one equal to ``iou``, as COCOeval's summarize selects it."""
    if iou is None:
        return slice(None)
    (t,) = np.flatnonzero(iou_thresholds == iou)
    return slice(t, t + 1)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values``, leaving out undefined (NaN) resamples."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 50 * (1 - confidence)
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _weighted_precision(matches: ImageMatches, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``precision [B, T, R, K]`` (COCOeval's ``precision[..., area all, maxDets 100]``) and ``has_gt [B, K]``."""
    num_rows = len(weights)
    num_thresholds, num_recalls = len(matches.iou_thresholds), len(matches.recall_thresholds)
    precision = np.zeros((num_rows, num_thresholds, num_recalls, len(matches.category_ids)))
    image_weights = np.ascontiguousarray(weights.T)  # [I, B]: one detection's weights are one row
    num_gt = weights @ matches.num_gt[matches.area_names.index("all")].T  # [B, K]
    for k in range(len(matches.category_ids)):
        dets = matches.category_slice(k)
        if _size(dets) == 0 or not num_gt[:, k].any():
            continue
        det_weights = image_weights[matches.det_image[dets]]  # [N, B]
        seen = np.cumsum(det_weights, axis=0)
        for t in range(num_thresholds):
            precision[:, t, :, k] = _sampled_precision(
                det_weights,
                seen,
                matches.det_matched[t, dets],
                matches.det_ignored[t, dets],
                num_gt[:, k],
                matches.recall_thresholds,
            )
    return precision, num_gt > 0


def _sampled_precision(
    det_weights: np.ndarray,
    seen: np.ndarray,
    matched: np.ndarray,
    ignored: np.ndarray,
    num_gt: np.ndarray,
    recall_thresholds: np.ndarray,
) -> np.ndarray:
    """One category at one IoU threshold: ``[B, R]`` envelope precision at the recall thresholds.

    ``det_weights [N, B]`` and their running sums ``seen [N, B]`` in score order, ``matched [N]``,
    ``ignored [N]``, ``num_gt [B]``. The envelope at recall r is the best precision of any point with
    recall >= r; a point that is not a true positive never beats the true positive that reached its
    recall, so only true positives are evaluated.
    """
    true_positive = matched & ~ignored
    positions = np.flatnonzero(true_positive)
    num_rows = det_weights.shape[1]
    if positions.size == 0:
        return np.zeros((num_rows, len(recall_thresholds)))
    ignored_positions = np.flatnonzero(ignored)
    tp = np.cumsum(det_weights[positions], axis=0)
    ignored_sum = np.cumsum(det_weights[ignored_positions], axis=0)
    ignored_before = np.vstack([np.zeros((1, num_rows), dtype=ignored_sum.dtype), ignored_sum])[
        np.searchsorted(ignored_positions, positions)
    ]
    fp = (seen[positions] - tp - ignored_before).astype(float)
    tp = tp.astype(float)
    # The same float operations as COCOeval.accumulate, so that unit weights reproduce it bit for bit.
    point_precision = tp / (fp + tp + np.spacing(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / num_gt
    envelope = np.maximum.accumulate(point_precision[::-1], axis=0)[::-1]
    envelope = np.vstack([envelope, np.zeros((1, num_rows))])  # past the last point: precision 0

    # Recall grows along the points, so the first point reaching threshold r comes after every point
    # that reaches at most r thresholds.
    reached = np.searchsorted(recall_thresholds, recall, side="right")  # [P, B]
    num_bins = len(recall_thresholds) + 1
    histogram = np.bincount((reached + num_bins * np.arange(num_rows)).ravel(), minlength=num_bins * num_rows)
    first = np.cumsum(histogram.reshape(num_rows, num_bins), axis=1)[:, :-1]  # [B, R]
    return np.take_along_axis(envelope, first.T, axis=0).T


def _mean_precision(precision: np.ndarray, has_gt: np.ndarray) -> np.ndarray:
    """``[B]``: the mean of ``precision [B, T, R, K]`` over the categories with ground truth in each row.

    Flattened in COCOeval's order (threshold, recall, category) so the floating-point sum is its own.
    """
    means = np.full(len(precision), np.nan)
    for row, (values, valid) in enumerate(zip(precision, has_gt)):
        if valid.any():
            means[row] = np.mean(values[..., valid].ravel())
    return means

"""Image-bootstrap confidence intervals of COCO AP, from COCOeval's per-image matches.

A resample draws the evaluated images with replacement; an image drawn ``c`` times weights each of its
detections and ground truths by ``c``. :func:`weighted_ap` recomputes AP for many such weightings at once
from an :class:`~pipeline.evaluation.matches.ImageMatches`, as ``COCOeval.accumulate`` and ``summarize`` compute it
(cumulative true and false positives in score order, the monotone precision envelope sampled at 101
recall points, the mean over the categories with ground truth); with every weight 1 it equals
``COCOeval.stats[0]`` (AP) and ``stats[1]`` (AP50) exactly. Neither the model nor the matching is re-run.

Intervals are basic (reflected) bootstrap intervals, not percentile ones: a resample that duplicates
images raises interpolated AP, so the resampled APs sit above the full-set AP on small test sets and a
percentile interval leans upward. The basic interval ``[2 est - q_hi, 2 est - q_lo]`` reflects that
shift back (for a pure shift it equals the bias-corrected percentile interval).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.matches import ImageMatches

AP_IOU = {"AP": None, "AP50": 0.5}  # the metrics resampled: AP@[.5:.95] and AP at IoU 0.5
AP_RANGE, DIFFERENCE_RANGE = (0.0, 1.0), (-1.0, 1.0)  # where an AP and a difference of two APs can lie
# Resamples scored at once: bounds the (detections x resamples) and (resamples x T x R x K) work arrays.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Interval:
    """A metric on the full image set (``estimate``) and its basic bootstrap interval ``[lo, hi]``."""

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
    """``{"AP": Interval, "AP50": Interval}``: basic intervals over ``num_resamples`` image resamples."""
    counts = resample_counts(len(matches.image_ids), num_resamples, seed)
    full = weighted_ap(matches, np.ones((1, len(matches.image_ids)), dtype=np.int64))
    resampled = weighted_ap(matches, counts)
    intervals = {}
    for name in AP_IOU:
        estimate = float(full[name][0])
        intervals[name] = Interval(estimate, *basic_interval(estimate, resampled[name], confidence, AP_RANGE))
    return intervals


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
        estimate = float(full_a[name][0] - full_b[name][0])
        lo, hi = basic_interval(estimate, resampled_a[name] - resampled_b[name], confidence, DIFFERENCE_RANGE)
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


def basic_interval(estimate: float, values: np.ndarray, confidence: float,
                   bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """The basic bootstrap interval ``[2 estimate - q_hi, 2 estimate - q_lo]`` of the resampled ``values``
    (``q``: their central ``confidence`` quantiles, undefined (NaN) resamples left out), clipped to ``bounds``.

    It takes the spread of ``values - estimate`` as that of ``estimate - truth``, so a resampling bias of the
    statistic moves the interval the other way instead of along with it, as a percentile interval would.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 50 * (1 - confidence)
    q_lo, q_hi = np.nanpercentile(values, [tail, 100 - tail])
    lo, hi = np.clip([2 * estimate - q_hi, 2 * estimate - q_lo], *bounds)
    return float(lo), float(hi)


def _weighted_precision(matches: ImageMatches, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``precision [B, T, R, K]`` (COCOeval's ``precision[..., area all, maxDets 100]``) and ``has_gt [B, K]``."""
    num_thresholds, num_recalls = len(matches.iou_thresholds), len(matches.recall_thresholds)
    by_category = np.zeros((len(matches.category_ids), len(weights), num_thresholds, num_recalls))
    image_weights = np.ascontiguousarray(weights.T)  # [I, B]: one detection's weights are one row
    num_gt = weights @ matches.num_gt[matches.area_names.index("all")].T  # [B, K]
    for k in range(len(matches.category_ids)):
        dets = matches.category_slice(k)
        if _size(dets) and num_gt[:, k].any():
            by_category[k] = _category_precision(
                image_weights[matches.det_image[dets]],
                matches.det_matched[:, dets],
                matches.det_ignored[:, dets],
                num_gt[:, k],
                matches.recall_thresholds,
            )
    return _categories_last(by_category), num_gt > 0


def _category_precision(
    det_weights: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_gt: np.ndarray, recall_thresholds: np.ndarray
) -> np.ndarray:
    """One category: ``[B, T, R]`` envelope precision at the recall thresholds, for every IoU threshold.

    ``det_weights [N, B]`` in score order, ``matched [T, N]``, ``ignored [T, N]``, ``num_gt [B]``. The
    envelope at recall r is the best precision of any point with recall >= r; a point that is not a true
    positive never beats the true positive that reached its recall, so only true positives are evaluated:
    ``P`` points, grouped by threshold.
    """
    num_thresholds, num_dets = matched.shape
    num_rows, num_bins = det_weights.shape[1], len(recall_thresholds) + 1
    thresholds, positions = np.nonzero(matched & ~ignored)
    if positions.size == 0:
        return np.zeros((num_rows, num_thresholds, len(recall_thresholds)))
    bounds = np.searchsorted(thresholds, np.arange(num_thresholds + 1))  # threshold t: points bounds[t]:bounds[t+1]

    tp_sums = _running_sums(det_weights[positions])
    tp = tp_sums[1:] - tp_sums[bounds[thresholds]]
    ignored_thresholds, ignored_positions = np.nonzero(ignored)
    ignored_keys = ignored_thresholds * num_dets + ignored_positions
    ignored_sums = _running_sums(det_weights[ignored_positions])
    ignored_before = (
        ignored_sums[np.searchsorted(ignored_keys, thresholds * num_dets + positions)]
        - ignored_sums[np.searchsorted(ignored_keys, thresholds * num_dets)]
    )
    seen = np.cumsum(det_weights, axis=0)[positions]
    fp = (seen - tp - ignored_before).astype(float)
    tp = tp.astype(float)
    # The same float operations as COCOeval.accumulate, so that unit weights reproduce it bit for bit.
    point_precision = tp / (fp + tp + np.spacing(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / num_gt
    envelope = np.empty_like(point_precision)
    for t in range(num_thresholds):
        segment = slice(bounds[t], bounds[t + 1])
        envelope[segment] = np.maximum.accumulate(point_precision[segment][::-1], axis=0)[::-1]

    # Recall grows along a threshold's points, so the first point reaching recall threshold r comes
    # after every point that reaches at most r of them.
    reached = np.searchsorted(recall_thresholds, recall, side="right")  # [P, B]
    bins = (np.arange(num_rows) * num_thresholds + thresholds[:, None]) * num_bins + reached
    histogram = np.bincount(bins.ravel(), minlength=num_rows * num_thresholds * num_bins)
    first = np.cumsum(histogram.reshape(num_rows, num_thresholds, num_bins), axis=-1)[..., :-1]  # [B, T, R]
    inside = first < np.diff(bounds)[:, None]
    points = np.minimum(bounds[:-1, None] + first, len(positions) - 1)
    return np.where(inside, envelope[points, np.arange(num_rows)[:, None, None]], 0.0)


def _running_sums(values: np.ndarray) -> np.ndarray:
    """``[len + 1, ...]``: the sums of the first 0, 1, ... rows of ``values``."""
    sums = np.zeros((len(values) + 1, *values.shape[1:]), dtype=values.dtype)
    np.cumsum(values, axis=0, out=sums[1:])
    return sums


def _categories_last(by_category: np.ndarray) -> np.ndarray:
    """``[K, B, T, R]`` to a C-contiguous ``[B, T, R, K]``, transposed in blocks that stay in cache."""
    flat = by_category.reshape(len(by_category), -1)
    transposed = np.empty(flat.shape[::-1])
    for start in range(0, flat.shape[1], 4096):
        transposed[start : start + 4096] = flat[:, start : start + 4096].T
    return transposed.reshape(*by_category.shape[1:], len(by_category))


def _mean_precision(precision: np.ndarray, has_gt: np.ndarray) -> np.ndarray:
    """``[B]``: the mean of ``precision [B, T, R, K]`` over the categories with ground truth in each row.

    Flattened in COCOeval's order (threshold, recall, category) so the floating-point sum is its own.
    """
    means = np.full(len(precision), np.nan)
    patterns, which = np.unique(has_gt, axis=0, return_inverse=True)
    for p, valid in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == p)
        if valid.any():
            selected = precision if len(rows) == len(precision) else precision[rows]
            selected = selected if valid.all() else selected[..., valid]
            means[rows] = selected.reshape(len(rows), -1).mean(axis=1)
    return means

"""What COCOeval decided per image (:class:`ImageMatches`), compact enough to recompute AP for any weighting of the images (the bootstrap), and its file format."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.cocoeval import COCOeval

from pipeline.utils.io import atomic_file


@dataclass(frozen=True)
class ImageMatches:
    """What ``COCOeval`` decided for each image, compact enough to recompute AP for any weighting of the images.

    ``num_gt [A, K, I]``: ground truths that are not ignored (not crowd, area inside the range) per area range
    of ``area_names`` (``COCOeval.params.areaRngLbl``), category of ``category_ids [K]`` and image of
    ``image_ids [I]``. The ``N`` detections (area "all", at most maxDets 100 per image and category) are grouped
    by category, each group in ``COCOeval.accumulate``'s order (score descending, ties in image order):
    ``det_category [N]`` and ``det_image [N]`` index ``category_ids`` and ``image_ids``; ``det_matched [T, N]``
    and ``det_ignored [T, N]`` per IoU threshold of ``iou_thresholds [T]`` (a detection matched to a crowd
    region is ignored, not a true positive); ``recall_thresholds [R]`` are where precision is sampled.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_names: tuple[str, ...]
    num_gt: np.ndarray
    det_category: np.ndarray
    det_image: np.ndarray
    det_score: np.ndarray
    det_matched: np.ndarray
    det_ignored: np.ndarray

    def category_slice(self, k: int) -> slice:
        """The detections of category index ``k``."""
        start, stop = np.searchsorted(self.det_category, [k, k + 1])
        return slice(int(start), int(stop))


def image_matches(evaluator: COCOeval) -> ImageMatches:
    """The :class:`ImageMatches` of a ``COCOeval`` after ``evaluate()`` (its ``evalImgs``)."""
    p = evaluator.params
    image_ids = np.asarray(p.imgIds, dtype=np.int64)
    category_ids = np.asarray(p.catIds if p.useCats else [-1], dtype=np.int64)
    num_images, num_areas, num_thresholds = len(image_ids), len(p.areaRng), len(p.iouThrs)
    # evalImgs is ordered category, area range, image.
    num_gt = np.zeros(len(evaluator.evalImgs), dtype=np.int64)
    for n, entry in enumerate(evaluator.evalImgs):
        if entry is not None:
            num_gt[n] = entry["gtIgnore"].size - np.count_nonzero(entry["gtIgnore"])
    num_gt = np.ascontiguousarray(num_gt.reshape(len(category_ids), num_areas, num_images).transpose(1, 0, 2))

    area_all = p.areaRngLbl.index("all")
    categories, images, scores, matched, ignored = [], [], [], [], []
    for k in range(len(category_ids)):
        first = (k * num_areas + area_all) * num_images
        evaluated = [(i, e) for i, e in enumerate(evaluator.evalImgs[first : first + num_images]) if e is not None]
        if not evaluated:
            continue
        category_scores = np.concatenate([np.asarray(e["dtScores"], dtype=float) for _, e in evaluated])
        order = np.argsort(-category_scores, kind="mergesort")  # as COCOeval.accumulate sorts
        categories.append(np.full(len(order), k, dtype=np.int64))
        images.append(np.concatenate([np.full(len(e["dtScores"]), i, dtype=np.int64) for i, e in evaluated])[order])
        scores.append(category_scores[order])
        matched.append(np.concatenate([e["dtMatches"] != 0 for _, e in evaluated], axis=1)[:, order])
        ignored.append(np.concatenate([e["dtIgnore"].astype(bool) for _, e in evaluated], axis=1)[:, order])

    def joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts, axis=-1) if parts else empty

    no_flags = np.zeros((num_thresholds, 0), dtype=bool)
    return ImageMatches(
        image_ids=image_ids,
        category_ids=category_ids,
        iou_thresholds=np.asarray(p.iouThrs, dtype=float),
        recall_thresholds=np.asarray(p.recThrs, dtype=float),
        area_names=tuple(p.areaRngLbl),
        num_gt=num_gt,
        det_category=joined(categories, np.zeros(0, dtype=np.int64)),
        det_image=joined(images, np.zeros(0, dtype=np.int64)),
        det_score=joined(scores, np.zeros(0, dtype=float)),
        det_matched=joined(matched, no_flags),
        det_ignored=joined(ignored, no_flags),
    )


def save_image_matches(path: str | Path, matches: ImageMatches) -> None:
    """Write ``matches`` as an ``.npz`` file, atomically."""
    arrays = {name: getattr(matches, name) for name in ImageMatches.__dataclass_fields__}
    arrays["area_names"] = np.asarray(matches.area_names)
    with atomic_file(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_image_matches(path: str | Path) -> ImageMatches:
    """Read what :func:`save_image_matches` wrote."""
    with np.load(path) as arrays:
        fields = {name: arrays[name] for name in ImageMatches.__dataclass_fields__}
    fields["area_names"] = tuple(str(name) for name in fields["area_names"])
    return ImageMatches(**fields)

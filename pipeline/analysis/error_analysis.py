"""Where the AP goes: TIDE's error breakdown and a class confusion matrix, for boxes or masks.

TIDE (Bolya et al., ECCV 2020; the ``tidecv`` package) matches each image's detections (at most 100, by
score) to ground truth of their class at IoU >= 0.5, then gives every detection that is not a true
positive one error type, tested in this order:

- ``Loc``: IoU in [0.1, 0.5] with a ground truth of its class (``bg <= iou <= fg``);
- ``Cls``: IoU >= 0.5 with a ground truth of another class;
- ``Dupe``: IoU >= 0.5 with a ground truth of its class already taken by a higher-scored detection;
- ``Bkg``: IoU <= 0.1 with every ground truth;
- ``Both``: anything else (wrong class and poorly localised);

and calls an unmatched ground truth that no Cls or Loc error points to a ``Miss``. The dAP of a type is
the AP at IoU 0.5 after an oracle fixes every error of that type alone, minus the AP, floored at 0: a
Cls or Loc error becomes a true positive (with the ground truth's class) when its ground truth is
unmatched and it is the highest-scored error pointing to it, and is removed otherwise; Dupe, Bkg and
Both errors are removed; a missed ground truth leaves the count of ground truths. A detection that
overlaps a crowd region of its class by more than 0.5 (intersection over detection area) is left out
of the AP but still gets an error type, as in ``tidecv``. The AP is TIDE's: per class, 101 recall
points ``i / 100``, averaged over the classes with ground truth or detections (a class with only false
positives scores 0). Values are fractions in [0, 1] (``tidecv`` prints percentage points). Where scores
tie, every fixed AP keeps the original order of the detections (``tidecv`` puts fixed ones first).
"""
from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pycocotools.coco import COCO

from pipeline.utils.errors import PipelineError
from pipeline.evaluation.coco import IOU_TYPES, IouType
from pipeline.utils.io import atomic_file

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETECTIONS = 100
_RECALL_POINTS = np.arange(101) / 100
_CLS, _LOC, _BOTH, _DUPE, _BKG, _MISS = range(len(ERROR_TYPES))
_NO_ERROR = -1


@dataclass(frozen=True)
class _Image:
    """One image's ground truth and detections: ``regions`` are xywh boxes or RLEs, per ``iou_type``."""

    gt_classes: np.ndarray
    gt_regions: list
    crowd_classes: np.ndarray
    crowd_regions: list
    det_classes: np.ndarray
    det_scores: np.ndarray
    det_regions: list


@dataclass(frozen=True)
class _Outcome:
    """TIDE's verdict on one image: per detection ``tp``, ``ignored`` (crowd), ``error`` (a type index or
    -1) and ``target`` (the ground truth a Cls/Loc error points to, or -1); per ground truth ``used``."""

    tp: np.ndarray
    ignored: np.ndarray
    error: np.ndarray
    target: np.ndarray
    used: np.ndarray


def tide_errors(
    gt: COCO | dict, results: Sequence[dict], iou_type: IouType, image_ids: Optional[Sequence[int]] = None
) -> dict[str, object]:
    """TIDE's breakdown of ``results`` (COCO result records) against ``gt`` (a ``COCO`` or its dataset dict).

    Returns ``{"AP50": TIDE's AP at IoU 0.5, "dAP": {type: dAP}, "counts": {type: number of errors}}``
    with the types of :data:`ERROR_TYPES`. ``image_ids`` restricts the analysis (default: every image).
    """
    images = _images(_coco(gt), results, iou_type, image_ids)
    if not images:
        raise PipelineError("TIDE: no images to analyse (image_ids select none of the ground truth's images)")
    outcomes = [_classify(image) for image in images]

    det_classes = np.concatenate([image.det_classes for image in images])
    det_scores = np.concatenate([image.det_scores for image in images])
    tp, ignored, error = (np.concatenate([getattr(o, name) for o in outcomes]) for name in ("tp", "ignored", "error"))
    gt_offsets = np.cumsum([0] + [len(image.gt_classes) for image in images])[:-1]
    target = np.concatenate([np.where(o.target >= 0, o.target + offset, -1) for o, offset in zip(outcomes, gt_offsets)])
    gt_classes = np.concatenate([image.gt_classes for image in images])
    gt_used = np.concatenate([o.used for o in outcomes])

    fixable = target >= 0
    fixable[fixable] = ~gt_used[target[fixable]]  # Cls and Loc errors pointing to an unmatched ground truth
    fixes_gt = _best_fixers(fixable, target, det_scores)
    pointed_to = np.zeros(len(gt_classes), dtype=bool)
    pointed_to[target[fixable]] = True
    missed = ~gt_used & ~pointed_to

    classes = np.unique(np.concatenate([gt_classes, det_classes[~ignored]]))
    base = _mean_ap(classes, det_classes[~ignored], det_scores[~ignored], tp[~ignored], gt_classes)
    dap = {}
    for code, name in enumerate(ERROR_TYPES):
        if code == _MISS:
            fixed_ap = _mean_ap(classes, det_classes[~ignored], det_scores[~ignored], tp[~ignored], gt_classes[~missed])
        else:
            keep, fixed_classes, fixed_tp = _fixed_detections(
                code, error, target, ignored, tp, fixes_gt, det_classes, gt_classes
            )
            fixed_ap = _mean_ap(classes, fixed_classes[keep], det_scores[keep], fixed_tp[keep], gt_classes)
        dap[name] = max(fixed_ap - base, 0.0)
    counts = {name: int(np.count_nonzero(error == code)) for code, name in enumerate(ERROR_TYPES)}
    counts["Miss"] = int(np.count_nonzero(missed))
    return {"AP50": base, "dAP": dap, "counts": counts}


def confusion_matrix(
    gt: COCO | dict,
    results: Sequence[dict],
    iou_type: IouType,
    iou: float = 0.5,
    score_threshold: float = 0.5,
    image_ids: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """``[K + 1, K + 1]`` counts: row = ground-truth class, column = detected class, in category-id order.

    Per image, the detections scoring at least ``score_threshold`` take, by descending score and
    whatever their class, the unmatched ground truth of highest IoU if it reaches ``iou``. The last
    column counts missed ground truths, the last row unmatched detections; an unmatched detection
    that covers a crowd region by ``iou`` (intersection over detection area) is not counted.
    """
    coco = _coco(gt)
    category_ids = sorted(coco.getCatIds())
    background = len(category_ids)
    index = {c: k for k, c in enumerate(category_ids)}
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for image in _images(coco, results, iou_type, image_ids, max_detections=None):
        confident = image.det_scores >= score_threshold
        det_rows = np.array([index[c] for c in image.det_classes[confident]], dtype=np.int64)
        gt_rows = np.array([index[c] for c in image.gt_classes], dtype=np.int64)
        det_regions = [r for r, keep in zip(image.det_regions, confident) if keep]
        ious = _iou(det_regions, image.gt_regions, crowd=False)
        covers_crowd = (_iou(det_regions, image.crowd_regions, crowd=True) >= iou).any(axis=1)
        free = np.ones(len(gt_rows), dtype=bool)
        for d, det_row in enumerate(det_rows):
            candidates = np.where(free, ious[d], -1.0)
            g = int(np.argmax(candidates)) if len(gt_rows) else -1
            if g >= 0 and candidates[g] >= iou:
                free[g] = False
                matrix[gt_rows[g], det_row] += 1
            elif not covers_crowd[d]:
                matrix[background, det_row] += 1
        np.add.at(matrix[:, background], gt_rows[free], 1)
    return matrix


def tide_figure(breakdowns: Mapping[str, Mapping[str, object]], path: str | Path) -> None:
    """Bars of the dAP of each error type, one panel per IoU type (``{"bbox": tide_errors(...), "segm": ...}``)."""
    fig = Figure(figsize=(4.2 * len(breakdowns), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(breakdowns), sharex=True, squeeze=False)[0]
    largest = max((max(b["dAP"].values()) for b in breakdowns.values()), default=0.0)
    for ax, (iou_type, breakdown) in zip(axes, breakdowns.items()):
        values = [100 * breakdown["dAP"][name] for name in ERROR_TYPES]
        ax.barh(ERROR_TYPES, values, color=[f"C{i}" for i in range(len(ERROR_TYPES))])
        ax.invert_yaxis()
        ax.set_xlim(0, max(100 * largest * 1.15, 1.0))
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
        ax.set_title(f"{iou_type}: AP50 {100 * breakdown['AP50']:.1f}")
        ax.set_xlabel("dAP (points) after fixing the error type")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, max_labels: int = 30) -> None:
    """The row-normalised :func:`confusion_matrix`; class names label the axes up to ``max_labels`` classes."""
    names = [*class_names, "background"]
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix {matrix.shape} does not fit {len(class_names)} classes + background")
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = min(4.0 + 0.22 * len(names), 16.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the row")
    if len(names) <= max_labels + 1:
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
    else:
        ax.set_xticks([len(names) - 1], ["bg"], fontsize=7)
        ax.set_yticks([len(names) - 1], ["bg"], fontsize=7)
    ax.set_xlabel("detected class")
    ax.set_ylabel("ground-truth class")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _coco(gt: COCO | dict) -> COCO:
    if isinstance(gt, COCO):
        return gt
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _images(
    coco: COCO,
    results: Sequence[dict],
    iou_type: IouType,
    image_ids: Optional[Sequence[int]],
    max_detections: Optional[int] = MAX_DETECTIONS,
) -> list[_Image]:
    """Every analysed image in ``gt`` order, its detections sorted by descending score (stable) and cut
    to ``max_detections`` whatever their class."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    key = "bbox" if iou_type == "bbox" else "segmentation"
    categories = set(coco.getCatIds())
    detections = defaultdict(list)
    for n, record in enumerate(results):
        image_id, category_id = record.get("image_id"), record.get("category_id")
        if image_id not in coco.imgs or category_id not in categories or key not in record or "score" not in record:
            raise PipelineError(
                f"result {n} (image {image_id}, category {category_id}): needs an image and a category of the "
                f"ground truth, a score and a {key!r}"
            )
        detections[image_id].append(record)

    wanted = set(image_ids) if image_ids is not None else None
    images = []
    for image_id in (i["id"] for i in coco.dataset["images"]):
        if wanted is not None and image_id not in wanted:
            continue
        anns = coco.imgToAnns.get(image_id, [])
        plain = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        dets = sorted(detections[image_id], key=lambda r: -r["score"])[:max_detections]
        images.append(
            _Image(
                gt_classes=np.array([a["category_id"] for a in plain], dtype=np.int64),
                gt_regions=[_gt_region(coco, a, iou_type) for a in plain],
                crowd_classes=np.array([a["category_id"] for a in crowd], dtype=np.int64),
                crowd_regions=[_gt_region(coco, a, iou_type) for a in crowd],
                det_classes=np.array([r["category_id"] for r in dets], dtype=np.int64),
                det_scores=np.array([r["score"] for r in dets], dtype=float),
                det_regions=[_det_region(r, iou_type) for r in dets],
            )
        )
    return images


def _gt_region(coco: COCO, ann: dict, iou_type: IouType):
    return list(ann["bbox"]) if iou_type == "bbox" else coco.annToRLE(ann)


def _det_region(record: dict, iou_type: IouType):
    if iou_type == "bbox":
        return list(record["bbox"])
    rle = record["segmentation"]
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _iou(dets: list, gts: list, crowd: bool) -> np.ndarray:
    """``[D, G]`` IoU (``crowd``: intersection over detection area) between regions of one kind."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_util.iou(dets, gts, [int(crowd)] * len(gts)), dtype=float).reshape(len(dets), len(gts))


def _classify(image: _Image) -> _Outcome:
    """TIDE's matching and error type of each detection of one image (detections in score order)."""
    num_dets, num_gts = len(image.det_classes), len(image.gt_classes)
    ious = _iou(image.det_regions, image.gt_regions, crowd=False)
    same_class = image.det_classes[:, None] == image.gt_classes[None, :]
    class_ious = ious * same_class

    tp = np.zeros(num_dets, dtype=bool)
    used = np.zeros(num_gts, dtype=bool)
    available = class_ious.copy()
    for d in range(num_dets):
        g = int(np.argmax(available[d])) if num_gts else 0
        if num_gts and available[d, g] >= FOREGROUND_IOU:
            tp[d] = used[g] = True
            available[:, g] = 0

    crowd_overlap = _iou(image.det_regions, image.crowd_regions, crowd=True) > FOREGROUND_IOU
    crowd_same_class = image.det_classes[:, None] == image.crowd_classes[None, :]
    ignored = ~tp & (crowd_overlap & crowd_same_class).any(axis=1)

    error = np.full(num_dets, _NO_ERROR, dtype=np.int64)
    target = np.full(num_dets, -1, dtype=np.int64)
    other_class_ious = ious * ~same_class
    duplicate_ious = class_ious * used[None, :]
    for d in np.flatnonzero(~tp):
        if num_gts == 0:
            error[d] = _BKG
        elif BACKGROUND_IOU <= class_ious[d].max() <= FOREGROUND_IOU:
            error[d], target[d] = _LOC, int(np.argmax(class_ious[d]))
        elif other_class_ious[d].max() >= FOREGROUND_IOU:
            error[d], target[d] = _CLS, int(np.argmax(other_class_ious[d]))
        elif duplicate_ious[d].max() >= FOREGROUND_IOU:
            error[d] = _DUPE
        elif ious[d].max() <= BACKGROUND_IOU:
            error[d] = _BKG
        else:
            error[d] = _BOTH
    return _Outcome(tp=tp, ignored=ignored, error=error, target=target, used=used)


def _best_fixers(fixable: np.ndarray, target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the Cls or Loc errors an oracle turns into true positives.

    Of the ``fixable`` errors pointing to one ground truth ``target``, the highest-scored (the first on a
    tie, detections being in image and score order): a ground truth is fixed once.
    """
    fixes = np.zeros(len(fixable), dtype=bool)
    best: dict[int, int] = {}
    for d in np.flatnonzero(fixable):
        g = int(target[d])
        if g not in best or scores[d] > scores[best[g]]:
            best[g] = d
    fixes[list(best.values())] = True
    return fixes


def _fixed_detections(
    code: int,
    error: np.ndarray,
    target: np.ndarray,
    ignored: np.ndarray,
    tp: np.ndarray,
    fixes_gt: np.ndarray,
    det_classes: np.ndarray,
    gt_classes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keep, classes, tp)`` of every detection once the oracle has fixed the errors of type ``code``."""
    this_type = error == code
    promoted = this_type & fixes_gt
    keep = (~ignored & ~this_type) | promoted
    classes = det_classes.copy()
    if code == _CLS:
        classes[promoted] = gt_classes[target[promoted]]
    return keep, classes, tp | promoted


def _mean_ap(
    classes: np.ndarray, det_classes: np.ndarray, scores: np.ndarray, tp: np.ndarray, gt_classes: np.ndarray
) -> float:
    """TIDE's mAP: the mean AP of the ``classes`` that still have ground truth or detections."""
    aps = []
    for c in classes:
        of_class = det_classes == c
        num_gt = int(np.count_nonzero(gt_classes == c))
        if num_gt or of_class.any():
            aps.append(_ap(scores[of_class], tp[of_class], num_gt))
    return float(np.mean(aps)) if aps else 0.0


def _ap(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """One class's AP: precision envelope sampled at 101 recall points (0 without ground truth)."""
    if num_gt == 0 or len(scores) == 0:
        return 0.0
    hits = np.cumsum(tp[np.argsort(-scores, kind="stable")])
    precision = hits / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(hits / num_gt, _RECALL_POINTS, side="left")
    sampled = np.where(first < len(envelope), envelope[np.minimum(first, len(envelope) - 1)], 0.0)
    return float(sampled.mean())

"""COCO-style evaluation of detections with pycocotools.

Detections (pixel boxes, binary masks, 0-based labels, as :func:`pipeline.models.detections.to_image`
gives them) become COCO result records with :func:`coco_results`; :func:`coco_evaluate` scores one
IoU type with ``COCOeval`` (crowd regions, area ranges and maxDets exactly as COCO defines them);
the remaining functions turn evaluations into the metrics, tables and curves the stages write.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import torch
from torch import Tensor
from torchvision.ops import box_convert

from pipeline.evaluation.matches import ImageMatches, image_matches
from pipeline.data.coco import load_coco


IouType = Literal["bbox", "segm"]
IOU_TYPES: tuple[IouType, ...] = ("bbox", "segm")
# The names of COCOeval.stats[0..11], in order; the first six are the project's contract metrics.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
CONTRACT_STATS = STAT_NAMES[:6]
# COCO's size buckets: the stat of each and the name of its area range in ``COCOeval.params.areaRngLbl``.
SIZE_STATS = {"APs": "small", "APm": "medium", "APl": "large"}


def bbox_results(
    image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor, category_ids: Sequence[int]
) -> list[dict]:
    """COCO ``bbox`` result records for one image.

    ``boxes [N, 4]`` pixel x1y1x2y2, ``scores [N]``, ``labels [N]`` 0-based;
    ``category_ids[label]`` is the dataset's category id of that label.
    """
    xywh = box_convert(boxes.detach().cpu().double(), "xyxy", "xywh")
    return [
        {"image_id": image_id, "category_id": int(category_ids[label]), "bbox": box, "score": score}
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist())
    ]


def segm_results(
    image_id: int, masks: Tensor, scores: Tensor, labels: Tensor, category_ids: Sequence[int]
) -> list[dict]:
    """COCO ``segm`` result records for one image, masks as RLE.

    ``masks [N, H, W]`` binary at the image's original size; other arguments as :func:`bbox_results`.
    The records carry no ``bbox``: ``COCO.loadRes`` would take them for box results.
    """
    if masks.shape[0] == 0:
        return []
    # pycocotools wants [H, W, N] uint8 in Fortran order, i.e. [N, W, H] in C order: one transposing copy.
    binary = masks.detach().cpu().to(torch.uint8).transpose(1, 2).contiguous().numpy()
    rles = mask_util.encode(binary.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return [
        {"image_id": image_id, "category_id": int(category_ids[label]), "segmentation": rle, "score": score}
        for rle, score, label in zip(rles, scores.tolist(), labels.tolist())
    ]


def coco_results(image_id: int, det: Mapping[str, Tensor], category_ids: Sequence[int]) -> dict[str, list[dict]]:
    """Both kinds of result records for one image's detections (``boxes``, ``scores``, ``labels``, ``masks``)."""
    return {
        "bbox": bbox_results(image_id, det["boxes"], det["scores"], det["labels"], category_ids),
        "segm": segm_results(image_id, det["masks"], det["scores"], det["labels"], category_ids),
    }


@dataclass(frozen=True)
class CocoEvaluation:
    """The outcome of one ``COCOeval`` run.

    ``stats [12]`` are ``COCOeval.stats`` (names in :data:`STAT_NAMES`); ``precision [T, R, K, A, M]``
    is ``COCOeval.eval["precision"]`` (-1 where a category has no ground truth), indexed by
    ``iou_thresholds [T]``, ``recall_thresholds [R]``, ``category_ids [K]``, area ranges
    (0 = all) and maxDets (last = 100). ``matches`` are the per-image matches behind them (see
    :class:`ImageMatches`), for bootstrap intervals and size counts.
    """

    iou_type: IouType
    stats: np.ndarray
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: tuple[int, ...]
    summary: str
    matches: Optional[ImageMatches] = field(default=None, repr=False, compare=False)

    @property
    def metrics(self) -> dict[str, float]:
        """The contract metrics: ``COCOeval.stats[0:6]`` as AP, AP50, AP75, APs, APm, APl."""
        return {name: float(v) for name, v in zip(CONTRACT_STATS, self.stats)}

    @property
    def detail(self) -> dict[str, float]:
        """All twelve ``COCOeval.stats`` by name."""
        return {name: float(v) for name, v in zip(STAT_NAMES, self.stats)}

    def per_class_ap(self) -> dict[int, float]:
        """AP@[.5:.95] of each category (area all, maxDets 100); NaN for a category without ground truth."""
        precision = self.precision[:, :, :, 0, -1]
        aps = {}
        for k, category_id in enumerate(self.category_ids):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            aps[category_id] = float(valid.mean()) if valid.size else float("nan")
        return aps

    def pr_curve(self, iou: float) -> tuple[np.ndarray, np.ndarray]:
        """``(recall [R], precision [R])`` at IoU threshold ``iou``, averaged over the categories with ground truth."""
        matches = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if matches.size != 1:
            raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds {self.iou_thresholds.tolist()}")
        t = matches[0]
        precision = self.precision[t, :, :, 0, -1]
        has_gt = (precision > -1).all(axis=0)
        mean = precision[:, has_gt].mean(axis=1) if has_gt.any() else np.full(len(self.recall_thresholds), np.nan)
        return self.recall_thresholds.copy(), mean


def _empty_results(gt: COCO) -> COCO:
    """A result index with no detections; ``COCO.loadRes`` cannot build one from an empty list."""
    results = COCO()
    results.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        results.createIndex()
    return results


def coco_evaluate(
    gt: str | Path | COCO,
    results: Sequence[dict],
    iou_type: IouType,
    image_ids: Optional[Sequence[int]] = None,
) -> CocoEvaluation:
    """Score ``results`` (records from :func:`coco_results`) against the COCO json ``gt`` with ``COCOeval``.

    ``image_ids`` restricts the evaluation to those images (default: every image in ``gt``, so an
    image without detections counts as all misses). No detections at all is valid: every AP is 0
    and a warning says so.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    gt = gt if isinstance(gt, COCO) else load_coco(gt)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(record) for record in results])  # it adds keys to each record, nothing deeper
    else:
        warnings.warn(f"no {iou_type} detections to evaluate: every AP is 0", RuntimeWarning, stacklevel=2)
        dt = _empty_results(gt)
    evaluator = COCOeval(gt, dt, iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return CocoEvaluation(
        iou_type=iou_type,
        stats=np.asarray(evaluator.stats, dtype=float),
        precision=evaluator.eval["precision"],
        iou_thresholds=np.asarray(evaluator.params.iouThrs),
        recall_thresholds=np.asarray(evaluator.params.recThrs),
        category_ids=tuple(evaluator.params.catIds),
        summary=summary.getvalue(),
        matches=image_matches(evaluator),
    )


def contract_metrics(evaluations: Mapping[str, CocoEvaluation]) -> dict[str, dict[str, float]]:
    """``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}}`` as in ``reports/metrics.json``."""
    return {iou_type: evaluation.metrics for iou_type, evaluation in evaluations.items()}


def size_metrics(evaluation: CocoEvaluation) -> dict[str, Optional[float] | int]:
    """APs, APm, APl and the ground-truth count of each size: ``{"APs", "APm", "APl", "num_gt_small", ...}``.

    The counts are the non-crowd ground truths in each of COCOeval's area ranges (small: area <= 32^2,
    medium: 32^2..96^2, large: >= 96^2; COCOeval counts an area on a boundary in both). A size without
    ground truth has AP ``None`` (JSON null), not COCOeval's -1.
    """
    if evaluation.matches is None:
        raise ValueError("size_metrics needs an evaluation with its per-image matches (from coco_evaluate)")
    area_names = evaluation.matches.area_names
    num_gt = {area: int(evaluation.matches.num_gt[area_names.index(area)].sum()) for area in SIZE_STATS.values()}
    aps = {
        stat: float(evaluation.stats[STAT_NAMES.index(stat)]) if num_gt[area] else None
        for stat, area in SIZE_STATS.items()
    }
    return {**aps, **{f"num_gt_{area}": count for area, count in num_gt.items()}}


def detail_metrics(evaluations: Mapping[str, CocoEvaluation]) -> dict[str, dict[str, float]]:
    """All twelve COCO stats per IoU type."""
    return {iou_type: evaluation.detail for iou_type, evaluation in evaluations.items()}


def per_class_ap_table(evaluations: Mapping[str, CocoEvaluation], names: Mapping[int, str]) -> pd.DataFrame:
    """One row per category of ``names`` (id -> name): ``category`` and ``<iou_type>_AP`` per evaluation.

    An AP is NaN for a category without ground truth.
    """
    table = pd.DataFrame({"category": list(names.values())})
    for iou_type, evaluation in evaluations.items():
        aps = evaluation.per_class_ap()
        table[f"{iou_type}_AP"] = [aps.get(c, float("nan")) for c in names]
    return table


def pr_curve_table(
    evaluations: Mapping[str, CocoEvaluation], ious: Sequence[float] = (0.5, 0.75)
) -> pd.DataFrame:
    """Precision/recall curves as long rows ``recall, precision, iou, iou_type`` (for ``dvc plots``)."""
    frames = []
    for iou_type, evaluation in evaluations.items():
        for iou in ious:
            recall, precision = evaluation.pr_curve(iou)
            frames.append(pd.DataFrame({"recall": recall, "precision": precision, "iou": iou, "iou_type": iou_type}))
    return pd.concat(frames, ignore_index=True)


def category_names(gt: COCO) -> dict[int, str]:
    """Category id -> name, in id order."""
    return {c["id"]: c["name"] for c in sorted(gt.dataset["categories"], key=lambda c: c["id"])}

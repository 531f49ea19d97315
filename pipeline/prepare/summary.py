"""The data summary: counts of every prepared role, by category and COCO size, and every drop."""
from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.prepare.cleaning import CleanSplit

SMALL_AREA = 32**2  # COCO size buckets, by annotation area in original pixels
LARGE_AREA = 96**2


def summarize(split: CleanSplit, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of one cleaned split: images, instances (non-crowd), crowd regions, per category and
    per COCO size bucket (non-crowd, by ``area``), and every dropped image or annotation."""
    anns = split.dataset["annotations"]
    names = {c["id"]: c["name"] for c in categories}
    per_category = {c["name"]: {"instances": 0, "crowd": 0} for c in categories}
    sizes = {"small": 0, "medium": 0, "large": 0}
    for ann in anns:
        per_category[names[ann["category_id"]]]["crowd" if ann["iscrowd"] else "instances"] += 1
        if not ann["iscrowd"]:
            sizes[size_bucket(ann["area"])] += 1
    with_instances = {a["image_id"] for a in anns if not a["iscrowd"]}
    return {
        "images": len(split.dataset["images"]),
        "empty_images": sum(image["id"] not in with_instances for image in split.dataset["images"]),
        "instances": sum(not a["iscrowd"] for a in anns),
        "crowd": sum(a["iscrowd"] for a in anns),
        "per_category": per_category,
        "sizes": sizes,
        "image_modes": dict(sorted(split.image_modes.items())),
        "clipped_boxes": split.clipped_boxes,
        "repaired_segmentations": split.repaired_segmentations,
        "other_category_annotations": split.other_category_annotations,
        "skipped_empty_images": split.skipped_empty_images,
        "dropped_by_reason": {
            "images": dict(Counter(d["reason"] for d in split.dropped_images)),
            "annotations": dict(Counter(d["reason"] for d in split.dropped_annotations)),
        },
        "dropped_images": split.dropped_images,
        "dropped_annotations": split.dropped_annotations,
    }


def summarize_ground_truth(ground_truth: dict[str, Any], left_out: list[dict[str, Any]]) -> dict[str, Any]:
    """What the official ground truth of a role holds, and the annotations pycocotools could not load."""
    anns = ground_truth["annotations"]
    return {
        "images": len(ground_truth["images"]),
        "instances": sum(not a["iscrowd"] for a in anns),
        "crowd": sum(bool(a["iscrowd"]) for a in anns),
        "left_out": left_out,
    }


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``{"data.train.images": ..., "data.test.crowd": ...}`` from the prepare summary."""
    metrics = {}
    for role, counts in summary["roles"].items():
        for key in ("images", "instances", "crowd", "empty_images"):
            metrics[f"data.{role}.{key}"] = float(counts[key])
        metrics[f"data.{role}.dropped_images"] = float(len(counts["dropped_images"]))
        metrics[f"data.{role}.dropped_annotations"] = float(len(counts["dropped_annotations"]))
        if "ground_truth" in counts:
            metrics[f"data.{role}.ground_truth_left_out"] = float(len(counts["ground_truth"]["left_out"]))
    return metrics


def size_bucket(area: float) -> str:
    return "small" if area < SMALL_AREA else "large" if area > LARGE_AREA else "medium"

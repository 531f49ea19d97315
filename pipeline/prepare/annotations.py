"""COCO instances json: reading it, choosing categories, and checking one record at a time.

Two readers of the same records with different needs: :func:`clean_annotation` makes an annotation
fit for training (clipped box, repaired polygons, computed area) or drops it with a reason;
:func:`official_ground_truth` keeps the records untouched for scoring and leaves out only those
pycocotools cannot load at all.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from pycocotools import mask as mask_utils

from pipeline.utils.errors import PipelineError

MIN_BOX_SIDE = 1.0  # pixels; thinner boxes carry no usable signal and break IoU matching


@dataclass
class Drop:
    reason: str  # a short code: missing_file, unsafe_path, size_mismatch, malformed, degenerate_box, ...
    detail: str


def read_annotations(path: Path) -> dict[str, Any]:
    """A COCO instances json; a missing or malformed file raises :class:`PipelineError`."""
    try:
        dataset = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(f"cannot read annotation file {path}: {err}") from None
    if not isinstance(dataset, dict) or not all(
        isinstance(dataset.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise PipelineError(f"{path}: not COCO instances json (needs lists 'images', 'annotations', 'categories')")
    return dataset


def select_categories(categories: list[dict[str, Any]], names: Optional[Sequence[str]]) -> list[dict[str, Any]]:
    """The categories to keep, sorted by category id; ``names=None`` keeps all."""
    for category in categories:
        if not isinstance(category, dict) or not _is_int(category.get("id")) \
                or not isinstance(category.get("name"), str):
            raise PipelineError(f"malformed category entry {category!r}: needs an integer 'id' and a 'name'")
    by_id = sorted(
        ({"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")} for c in categories),
        key=lambda c: c["id"],
    )
    if names is None:
        return by_id
    known = {c["name"] for c in by_id}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PipelineError(
            f"data.categories: unknown category name(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    wanted = set(names)
    return [c for c in by_id if c["name"] in wanted]


def label_map(categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"label": 0, "category_id": ..., "name": ...}, ...]`` in category-id order."""
    return [{"label": i, "category_id": c["id"], "name": c["name"]} for i, c in enumerate(categories)]


def image_entry_problem(image: Any, seen: Mapping[Any, Any]) -> Optional[str]:
    """Why an ``images`` entry is unusable (``seen``: the ids met so far), or None."""
    if not isinstance(image, dict):
        return "not an object"
    for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
        if not isinstance(image.get(key), kind) or isinstance(image.get(key), bool):
            return f"'{key}' missing or not {kind.__name__}"
    if image["width"] < 1 or image["height"] < 1:
        return f"size {image['width']}x{image['height']}"
    if image["id"] in seen:
        return f"duplicate image id {image['id']}"
    return None


def clean_annotation(
    ann: Any,
    image: Optional[dict[str, Any]],
    category_ids: set[Any],
    seen_ids: set[Any],
) -> tuple[Optional[dict[str, Any]], Optional[Drop], tuple[str, ...]]:
    """``(annotation, None, fixes)`` or ``(None, Drop, ())``.

    Fixes: boxes are clipped to the image ("clipped"); polygon parts with fewer than 3 points are
    removed ("repaired"). ``area`` is computed from the mask when missing.
    """
    drop = _record_drop(ann, image, category_ids, seen_ids)
    if drop is not None:
        return None, drop, ()
    width, height = image["width"], image["height"]
    bbox = ann["bbox"]
    x, y, w, h = bbox
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
        return None, Drop("degenerate_box", f"bbox {bbox} is under {MIN_BOX_SIDE:g} px wide or high"), ()
    x1, y1 = min(max(x, 0), width), min(max(y, 0), height)
    x2, y2 = min(max(x + w, 0), width), min(max(y + h, 0), height)
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        return None, Drop("box_outside_image", f"bbox {bbox} lies outside the {width}x{height} image"), ()
    fixes = []
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        bbox = [x1, y1, x2 - x1, y2 - y1]
        fixes.append("clipped")

    segmentation, problem, repaired = _clean_segmentation(ann.get("segmentation"), height, width)
    if problem:
        return None, Drop("invalid_segmentation", problem), ()
    area = float(mask_utils.area(_to_rle(segmentation, height, width)))
    if area == 0:
        return None, Drop("empty_mask", "the segmentation covers no pixel"), ()
    if repaired:
        fixes.append("repaired")
    cleaned = {
        **ann,
        "bbox": bbox,
        "segmentation": segmentation,
        "iscrowd": int(ann.get("iscrowd", 0)),
        "area": ann["area"] if _is_number(ann.get("area")) else area,
    }
    return cleaned, None, tuple(fixes)


def official_ground_truth(
    dataset: dict[str, Any], image_ids: Iterable[int], category_ids: Iterable[int]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The original records of ``dataset`` restricted to ``image_ids`` and ``category_ids``, untouched.

    Returns ``(ground truth json, left out)``: an annotation of those images and categories is left
    out only when pycocotools cannot score it at all (see :func:`ground_truth_problem`); each
    left-out one is listed as ``{"id", "image_id", "detail"}``.
    """
    wanted_images = set(image_ids)
    wanted_categories = set(category_ids)
    images = {}
    for image in dataset["images"]:
        if isinstance(image, dict) and _is_int(image.get("id")) and image["id"] in wanted_images:
            images.setdefault(image["id"], image)
    annotations, left_out, seen_ids = [], [], set()
    for ann in dataset["annotations"]:
        if not (isinstance(ann, dict) and _is_int(ann.get("image_id")) and ann["image_id"] in images
                and _is_int(ann.get("category_id")) and ann["category_id"] in wanted_categories):
            continue
        problem = ground_truth_problem(ann, images[ann["image_id"]], seen_ids)
        if problem:
            left_out.append({"id": ann.get("id"), "image_id": ann["image_id"], "detail": problem})
            continue
        seen_ids.add(ann["id"])
        annotations.append(ann)
    ground_truth = {
        **{key: dataset[key] for key in ("info", "licenses") if key in dataset},
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [c for c in dataset["categories"]
                       if isinstance(c, dict) and _is_int(c.get("id")) and c["id"] in wanted_categories],
    }
    return ground_truth, left_out


def ground_truth_problem(ann: dict[str, Any], image: dict[str, Any], seen_ids: set[Any]) -> Optional[str]:
    """Why pycocotools' ``COCO`` / ``COCOeval`` (bbox and segm) cannot use ``ann`` at all, or None.

    Small, sub-pixel or partly outside boxes are fine here: scoring must count them as COCO does.
    """
    if not _is_int(ann.get("id")):
        return f"'id' missing or not an integer: {ann.get('id')!r}"
    if ann["id"] in seen_ids:
        return f"duplicate annotation id {ann['id']}"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"bbox must be 4 numbers, got {bbox!r}"
    if not _is_number(ann.get("area")):
        return f"'area' missing or not a number: {ann.get('area')!r}"
    if ann.get("iscrowd") not in (0, 1):
        return f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"
    height, width = image["height"], image["width"]
    try:
        rle = _to_rle(ann.get("segmentation"), height, width)
        mask_utils.area(rle)
    except Exception as err:  # pycocotools raises many types for malformed input
        return f"segmentation pycocotools cannot decode ({type(err).__name__}: {err})"
    if list(rle["size"]) != [height, width]:
        return f"RLE size {rle['size']} differs from the image's [{height}, {width}]"
    return None


def _record_drop(ann: Any, image: Optional[dict[str, Any]], category_ids: set[Any], seen_ids: set[Any]) -> Optional[Drop]:
    """The schema checks every cleaned annotation passes first."""
    if not isinstance(ann, dict):
        return Drop("malformed", "not an object")
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return Drop("malformed", f"'{key}' missing or not an integer: {ann.get(key)!r}")
    if ann["id"] in seen_ids:
        return Drop("malformed", f"duplicate annotation id {ann['id']}")
    if ann["category_id"] not in category_ids:
        return Drop("malformed", f"unknown category_id {ann['category_id']!r}")
    if ann.get("iscrowd", 0) not in (0, 1):
        return Drop("malformed", f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
    if image is None:
        return Drop("unknown_image", f"image_id {ann['image_id']!r} is not in images")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return Drop("malformed", f"bbox must be 4 numbers, got {bbox!r}")
    return None


def _clean_segmentation(segm: Any, height: int, width: int) -> tuple[Any, Optional[str], bool]:
    """``(segmentation, problem, repaired)``; polygons lose parts with fewer than 3 points."""
    if isinstance(segm, list):
        parts = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))]
        if not parts:
            return None, "no polygon with 3 or more points", False
        return parts, None, len(parts) != len(segm)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            return None, f"RLE size {segm['size']} differs from the image's [{height}, {width}]", False
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                return None, "uncompressed RLE counts do not cover the image", False
        elif not isinstance(counts, str):
            return None, f"RLE counts must be a list or a string, got {type(counts).__name__}", False
        return segm, None, False
    return None, f"unsupported segmentation {type(segm).__name__}", False


def _to_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """The RLE of a polygon list or RLE, as pycocotools' ``COCO.annToRLE`` makes it (and raises where it does)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

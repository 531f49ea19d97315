"""Reading and cleaning COCO-format instance annotations (real COCO and the synthetic set alike).

:func:`prepare` turns ``root/annotations/instances_<split>.json`` plus ``root/<split>/`` images into
the prepared directory: ``train.json`` / ``val.json`` (cleaned COCO json keeping the original category
ids, ``iscrowd``, segmentations and areas; ``val.json`` is the COCOeval ground truth), ``labels.json``
(contiguous 0-based labels) and ``image_dirs.json`` (where each role's images live). Nothing broken
crashes it: every dropped image or annotation is returned with a reason code, or with ``strict`` the
first one raises :class:`PipelineError`.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from pycocotools import mask as mask_utils

from .errors import PipelineError
from .io import atomic_file, atomic_write_json, atomic_write_text

ROLES = ("train", "val")
SMALL_AREA = 32**2  # COCO size buckets, by annotation area in original pixels
LARGE_AREA = 96**2
MIN_BOX_SIDE = 1.0  # pixels; thinner boxes carry no usable signal and break IoU matching
_VERIFY_CHUNK = 64


@dataclass
class Drop:
    reason: str  # a short code: missing_file, unreadable_image, size_mismatch, malformed, ...
    detail: str


@dataclass
class CleanSplit:
    """One cleaned split and the account of everything changed on the way."""

    dataset: dict[str, Any]
    image_modes: Counter = field(default_factory=Counter)
    dropped_images: list[dict[str, Any]] = field(default_factory=list)
    dropped_annotations: list[dict[str, Any]] = field(default_factory=list)
    clipped_boxes: int = 0
    repaired_segmentations: int = 0
    other_category_annotations: int = 0
    skipped_empty_images: int = 0


# --------------------------------------------------------------------------------------------------
# The whole prepare step


def prepare(
    root: Path,
    splits: Mapping[str, str],
    out_dir: Path,
    *,
    categories: Optional[Sequence[str]],
    max_images: Optional[int],
    keep_empty_train: bool,
    strict: bool,
) -> dict[str, Any]:
    """Clean ``splits`` (``{"train": "train2017", "val": "val2017"}``) of the COCO-format ``root``
    into ``out_dir`` and return the data summary (see :func:`summarize`).

    Image directories inside ``out_dir`` are recorded relative to it (so the directory can move),
    others as absolute paths.
    """
    raw = {role: read_annotations(root / "annotations" / f"instances_{splits[role]}.json") for role in ROLES}
    kept = select_categories(raw["train"]["categories"], categories)
    val_ids = {c.get("id") for c in raw["val"]["categories"] if isinstance(c, dict)}
    for category in kept:
        if category["id"] not in val_ids:
            raise PipelineError(
                f"category {category['name']!r} (id {category['id']}) is missing from split {splits['val']}"
            )

    cleaned, image_dirs = {}, {}
    for role in ROLES:
        image_dir = (root / splits[role]).resolve()
        cleaned[role] = clean_split(
            raw[role],
            image_dir,
            kept,
            keep_empty=role == "val" or keep_empty_train,
            max_images=max_images,
            strict=strict,
            source=str(root / "annotations" / f"instances_{splits[role]}.json"),
        )
        out = out_dir.resolve()
        image_dirs[role] = str(image_dir.relative_to(out)) if image_dir.is_relative_to(out) else str(image_dir)
        # Compact: the full COCO train json would more than double with indentation.
        atomic_write_text(out_dir / f"{role}.json", json.dumps(cleaned[role].dataset, separators=(",", ":")))
    atomic_write_json(out_dir / "labels.json", label_map(kept))
    atomic_write_json(out_dir / "image_dirs.json", image_dirs)
    return {
        "splits": dict(splits),
        "categories": [c["name"] for c in kept],
        "roles": {role: summarize(cleaned[role], kept) for role in ROLES},
    }


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
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) \
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


# --------------------------------------------------------------------------------------------------
# Cleaning


def clean_split(
    dataset: dict[str, Any],
    image_dir: Path,
    categories: list[dict[str, Any]],
    *,
    keep_empty: bool,
    max_images: Optional[int],
    strict: bool,
    source: str = "annotations",
) -> CleanSplit:
    """Keep ``categories``, check every annotation and image, and select the images.

    Images are taken in image-id order; the first ``max_images`` that pass the checks are kept, so
    the subset is deterministic and only those images are opened. An image is "empty" without a
    non-crowd annotation; empty ones are kept only with ``keep_empty``.
    """
    result = CleanSplit(dataset={})
    kept_ids = {c["id"] for c in categories}
    known_ids = {c.get("id") for c in dataset["categories"] if isinstance(c, dict)}

    images: dict[int, dict[str, Any]] = {}
    for image in dataset["images"]:
        problem = _image_entry_problem(image, images)
        if problem:
            _drop_image(result, image, Drop("malformed", problem), strict, source)
            continue
        images[image["id"]] = image

    annotations_of: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
    seen_ids: set[Any] = set()
    for ann in dataset["annotations"]:
        category_id, image_id = (ann.get("category_id"), ann.get("image_id")) if isinstance(ann, dict) else (None, None)
        if isinstance(category_id, int) and category_id in known_ids and category_id not in kept_ids:
            result.other_category_annotations += 1
            continue
        image = images.get(image_id) if isinstance(image_id, int) else None
        cleaned, drop, fixes = clean_annotation(ann, image, known_ids, seen_ids)
        if drop is not None:
            _drop_annotation(result, ann, drop, strict, source)
            continue
        seen_ids.add(cleaned["id"])
        result.clipped_boxes += "clipped" in fixes
        result.repaired_segmentations += "repaired" in fixes
        annotations_of[cleaned["image_id"]].append(cleaned)

    candidates = []
    for image_id in sorted(images):
        if keep_empty or any(not a["iscrowd"] for a in annotations_of[image_id]):
            candidates.append(images[image_id])
        else:
            result.skipped_empty_images += 1

    selected = []
    for image, mode, drop in _verified_images(candidates, image_dir):
        if drop is not None:
            _drop_image(result, image, drop, strict, source, path=image_dir / image["file_name"])
            continue
        result.image_modes[mode] += 1
        selected.append(image)
        if max_images is not None and len(selected) == max_images:
            break

    result.dataset = {
        "info": dataset.get("info", {}),
        "images": selected,
        "annotations": [a for image in selected for a in annotations_of[image["id"]]],
        "categories": categories,
    }
    return result


def _verified_images(
    images: list[dict[str, Any]], image_dir: Path
) -> Iterator[tuple[dict[str, Any], Optional[str], Optional[Drop]]]:
    """``(image, mode, drop)`` in order, checked by a thread pool a chunk at a time so that a
    ``max_images`` subset opens only about the images it keeps."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(images), _VERIFY_CHUNK):
            chunk = images[start : start + _VERIFY_CHUNK]
            paths = [image_dir / image["file_name"] for image in chunk]
            for image, (mode, drop) in zip(chunk, pool.map(check_image, paths, chunk)):
                yield image, mode, drop


def check_image(path: Path, image: dict[str, Any]) -> tuple[Optional[str], Optional[Drop]]:
    """``(PIL mode, None)`` if ``path`` decodes and has the json's size, else ``(None, Drop)``.

    JPEGs are decoded at 1/8 scale (PIL's draft mode): cheap, yet it reads the whole entropy-coded
    stream, so truncated files are caught here rather than in the training loop.
    """
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            im.draft(mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except FileNotFoundError:
        return None, Drop("missing_file", str(path))
    except Exception as err:  # PIL raises many types for broken files
        return None, Drop("unreadable_image", f"{path}: {type(err).__name__}: {err}")
    if size != (image["width"], image["height"]):
        return None, Drop(
            "size_mismatch", f"{path}: file is {size[0]}x{size[1]}, json says {image['width']}x{image['height']}"
        )
    return mode, None


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
    if not isinstance(ann, dict):
        return None, Drop("malformed", "not an object"), ()
    for key in ("id", "image_id", "category_id"):
        if not isinstance(ann.get(key), int) or isinstance(ann.get(key), bool):
            return None, Drop("malformed", f"'{key}' missing or not an integer: {ann.get(key)!r}"), ()
    if ann["id"] in seen_ids:
        return None, Drop("malformed", f"duplicate annotation id {ann['id']}"), ()
    if ann.get("category_id") not in category_ids:
        return None, Drop("malformed", f"unknown category_id {ann.get('category_id')!r}"), ()
    if ann.get("iscrowd", 0) not in (0, 1):
        return None, Drop("malformed", f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"), ()
    if image is None:
        return None, Drop("unknown_image", f"image_id {ann.get('image_id')!r} is not in images"), ()
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return None, Drop("malformed", f"bbox must be 4 numbers, got {bbox!r}"), ()

    width, height = image["width"], image["height"]
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
    """The compressed RLE of a (valid) polygon list or RLE, as pycocotools' ``annToRLE``."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return {"size": segm["size"], "counts": segm["counts"].encode("ascii")}


def _image_entry_problem(image: Any, seen: Mapping[Any, Any]) -> Optional[str]:
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


def _drop_image(result: CleanSplit, image: Any, drop: Drop, strict: bool, source: str, path: Any = None) -> None:
    where = path if path is not None else f"{source} image {image.get('id') if isinstance(image, dict) else image!r}"
    if strict:
        raise PipelineError(f"{where}: {drop.reason}: {drop.detail} (data.strict is true)")
    entry = image if isinstance(image, dict) else {}
    result.dropped_images.append(
        {"image_id": entry.get("id"), "file_name": entry.get("file_name"), "reason": drop.reason, "detail": drop.detail}
    )


def _drop_annotation(result: CleanSplit, ann: Any, drop: Drop, strict: bool, source: str) -> None:
    entry = ann if isinstance(ann, dict) else {}
    if strict:
        raise PipelineError(
            f"{source}: annotation {entry.get('id')!r} (image {entry.get('image_id')!r}): "
            f"{drop.reason}: {drop.detail} (data.strict is true)"
        )
    result.dropped_annotations.append(
        {"id": entry.get("id"), "image_id": entry.get("image_id"), "reason": drop.reason, "detail": drop.detail}
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# Summary and figure


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


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``{"data.train.images": ..., "data.val.crowd": ...}`` from :func:`prepare`'s summary."""
    metrics = {}
    for role, counts in summary["roles"].items():
        for key in ("images", "instances", "crowd", "empty_images"):
            metrics[f"data.{role}.{key}"] = float(counts[key])
        metrics[f"data.{role}.dropped_images"] = float(len(counts["dropped_images"]))
        metrics[f"data.{role}.dropped_annotations"] = float(len(counts["dropped_annotations"]))
    return metrics


def size_bucket(area: float) -> str:
    return "small" if area < SMALL_AREA else "large" if area > LARGE_AREA else "medium"


def box_scales(dataset: dict[str, Any], input_size: int) -> np.ndarray:
    """``sqrt(w * h)`` of every non-crowd box after resizing its image to ``input_size`` squared."""
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


def plot_box_sizes(
    datasets: Mapping[str, dict[str, Any]],
    input_size: int,
    anchor_scales: Sequence[Sequence[float]],
    path: Path,
) -> None:
    """Histogram of GT box scales at ``input_size`` per role, with the anchor scales drawn over it."""
    scales = {role: box_scales(dataset, input_size) for role, dataset in datasets.items()}
    everything = [*(s for level in anchor_scales for s in level), *(v for s in scales.values() for v in s)]
    bins = np.geomspace(max(1.0, min(everything) / 1.5), max(everything) * 1.5, 40)
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.add_subplot()
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
        fig.savefig(tmp, format="png")

"""Cleaning one split: keep the chosen categories, check every annotation and image, select images.

Nothing broken crashes it: every dropped image or annotation is recorded with a reason code, or with
``strict`` the first one raises :class:`PipelineError`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.prepare.annotations import Drop, clean_annotation, image_entry_problem
from pipeline.utils.errors import PipelineError
from pipeline.prepare.images import verified_images


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
    non-crowd annotation; empty ones are kept only with ``keep_empty``. ``source`` names the
    annotation file in errors.
    """
    result = CleanSplit(dataset={})
    kept_ids = {c["id"] for c in categories}
    known_ids = {c.get("id") for c in dataset["categories"] if isinstance(c, dict)}

    images: dict[int, dict[str, Any]] = {}
    for image in dataset["images"]:
        problem = image_entry_problem(image, images)
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
    for image, mode, drop in verified_images(candidates, image_dir):
        if drop is not None:
            where = None if drop.reason == "unsafe_path" else image_dir / image["file_name"]
            _drop_image(result, image, drop, strict, source, where)
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


def _drop_image(result: CleanSplit, image: Any, drop: Drop, strict: bool, source: str, where: Any = None) -> None:
    if strict:
        where = where if where is not None else f"{source} image {image.get('id') if isinstance(image, dict) else image!r}"
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

"""The prepare step: COCO-format splits in, the prepared directory of three roles out.

Roles: ``train``; ``val`` (model selection, validation during training); ``test`` (the reported
numbers). Each role comes from one split of ``root`` (``annotations/instances_<split>.json`` and
``<split>/`` images). When ``val`` names the same split as ``train``, as in COCO's convention (val
carved from train2017, test = val2017), a seeded, order-independent subset of that split's image ids
becomes ``val`` and is removed from ``train`` before cleaning. An image kept in two roles all the same (the
same id, file or content: :mod:`pipeline.prepare.overlap`) stops the step unless ``data.allow_overlap``.

The prepared directory holds, per role, the cleaned ``<role>.json`` the loader reads
(:func:`pipeline.data.layout.annotations_path`), for val and test the official ground truth scoring reads
(:func:`pipeline.data.layout.ground_truth_path`), ``labels.json`` and ``image_dirs.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.prepare.annotations import label_map, official_ground_truth, read_annotations, select_categories
from pipeline.prepare.cleaning import clean_split
from pipeline.data.layout import ROLES, SCORED_ROLES, annotations_path, ground_truth_path, overlap_path
from pipeline.prepare.overlap import find_overlap, overlap_message
from pipeline.prepare.summary import summarize, summarize_ground_truth
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_write_json, atomic_write_text


def prepare(
    root: Path,
    splits: Mapping[str, str],
    out_dir: Path,
    *,
    categories: Optional[Sequence[str]],
    max_images: Optional[int],
    keep_empty_train: bool,
    strict: bool,
    val_images: Optional[int] = None,
    seed: int = 0,
    repository: Optional[Path] = None,
    allow_overlap: bool = False,
) -> dict[str, Any]:
    """Clean ``splits`` (``{"train": "train2017", "val": "train2017", "test": "val2017"}``) of the
    COCO-format ``root`` into ``out_dir`` and return the data summary.

    ``val_images`` images are carved from the train split (by ``seed``) when val and train name the
    same split. ``max_images`` caps every role; train keeps images without instances only with
    ``keep_empty_train``, val and test always. Image folders inside ``repository`` (default
    ``out_dir``) are recorded relative to ``out_dir``, so both can move together; others absolutely.
    An image kept in two roles (:func:`~pipeline.prepare.overlap.find_overlap`) raises :class:`PipelineError`
    before anything is written, unless ``allow_overlap``: then it is recorded in the summary (``overlap``)
    and in ``out_dir`` (:func:`~pipeline.data.layout.overlap_path`).
    """
    if sorted(splits) != sorted(ROLES):
        raise ValueError(f"splits must name the roles {ROLES}, got {sorted(splits)}")
    if splits["test"] in (splits["train"], splits["val"]):
        raise ValueError(f"the test split {splits['test']!r} must differ from the train and val splits")
    files = {role: root / "annotations" / f"instances_{splits[role]}.json" for role in ROLES}
    read: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        if splits[role] not in read:
            read[splits[role]] = read_annotations(files[role])
    raw = {role: read[splits[role]] for role in ROLES}
    kept = select_categories(raw["train"]["categories"], categories)
    for role in SCORED_ROLES:
        present = {c["id"] for c in select_categories(raw[role]["categories"], None)}
        for category in kept:
            if category["id"] not in present:
                raise PipelineError(f"{files[role]}: category {category['name']!r} (id {category['id']}) is missing")

    carved = None
    if splits["val"] == splits["train"]:
        if val_images is None:
            raise ValueError("val_images is needed to carve val from the train split")
        raw["val"], raw["train"] = carve(raw["train"], val_images, seed, str(files["train"]))
        carved = {"from": splits["train"], "images": val_images, "seed": seed}

    folders = {role: (root / splits[role]).resolve() for role in ROLES}
    cleaned = {
        role: clean_split(raw[role], folders[role], kept, keep_empty=role != "train" or keep_empty_train,
                          max_images=max_images, strict=strict, source=str(files[role]))
        for role in ROLES
    }
    overlap = find_overlap({role: cleaned[role].dataset["images"] for role in ROLES}, folders)
    if overlap and not allow_overlap:
        raise PipelineError(overlap_message(overlap))

    out = out_dir.resolve()
    inside = (repository or out_dir).resolve()
    summary_roles, image_dirs = {}, {}
    for role in ROLES:
        image_dir = folders[role]
        image_dirs[role] = os.path.relpath(image_dir, out) if image_dir.is_relative_to(inside) else str(image_dir)
        # Compact: the full COCO train json would more than double with indentation.
        atomic_write_text(annotations_path(out_dir, role), json.dumps(cleaned[role].dataset, separators=(",", ":")))
        summary_roles[role] = summarize(cleaned[role], kept)
        if role in SCORED_ROLES:
            ground_truth, left_out = official_ground_truth(
                raw[role], [image["id"] for image in cleaned[role].dataset["images"]], [c["id"] for c in kept]
            )
            atomic_write_text(ground_truth_path(out_dir, role), json.dumps(ground_truth, separators=(",", ":")))
            summary_roles[role]["ground_truth"] = summarize_ground_truth(ground_truth, left_out)
    atomic_write_json(out_dir / "labels.json", label_map(kept))
    atomic_write_json(out_dir / "image_dirs.json", image_dirs)
    if overlap:
        atomic_write_json(overlap_path(out_dir), overlap)
    return {
        "splits": dict(splits),
        **({"val_carved": carved} if carved else {}),
        "categories": [c["name"] for c in kept],
        **({"overlap": overlap} if overlap else {}),
        "roles": summary_roles,
    }


def carve(dataset: dict[str, Any], count: int, seed: int, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(carved, rest)``: ``dataset`` split into the ``count`` images of :func:`carved_ids` with their
    annotations, and everything else (malformed entries included, for cleaning to count)."""
    ids = {image["id"] for image in dataset["images"] if isinstance(image, dict) and type(image.get("id")) is int}
    if count >= len(ids):
        raise PipelineError(f"{source}: data.val_images ({count}) leaves no train image of its {len(ids)}")
    chosen = carved_ids(ids, count, seed)

    def part(records: list[Any], key: str, inside: bool) -> list[Any]:
        return [r for r in records if (isinstance(r, dict) and type(r.get(key)) is int and r[key] in chosen) == inside]

    carved_part = {**dataset, "images": part(dataset["images"], "id", True),
                   "annotations": part(dataset["annotations"], "image_id", True)}
    rest = {**dataset, "images": part(dataset["images"], "id", False),
            "annotations": part(dataset["annotations"], "image_id", False)}
    return carved_part, rest


def carved_ids(image_ids: set[int], count: int, seed: int) -> set[int]:
    """The ``count`` ids with the smallest seeded hash: the same ids whatever the order of the file."""
    def key(image_id: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()

    return set(sorted(image_ids, key=key)[:count])

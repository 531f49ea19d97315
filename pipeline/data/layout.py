"""The layout of the prepared data (``data/prepared``): which file holds what, per role."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


ROLES = ("train", "val", "test")  # train; val: model selection; test: the reported numbers
SCORED_ROLES = ("val", "test")


def annotations_path(prepared_dir: str | Path, role: str) -> Path:
    """The cleaned COCO json of ``role`` ("train", "val" or "test"), what the loader reads."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return Path(prepared_dir) / f"{role}.json"


def ground_truth_path(prepared_dir: str | Path, role: str) -> Path:
    """The official ground truth of ``role`` ("val" or "test"), what scoring reads: the original
    annotation records of its images and kept categories, untouched by cleaning."""
    if role not in SCORED_ROLES:
        raise ValueError(f"role must be one of {', '.join(SCORED_ROLES)}, got {role!r}")
    return Path(prepared_dir) / f"gt_{role}.json"


def overlap_path(prepared_dir: str | Path) -> Path:
    """The images in two roles that ``data.allow_overlap`` let through (:func:`read_overlap`); written only when
    there are some, so a prepared directory without it has no image in two roles."""
    return Path(prepared_dir) / "overlap.json"


def read_overlap(prepared_dir: str | Path) -> dict[str, Any]:
    """``{"train/test": {"images", "id", "path", "content", "examples"}, ...}`` per pair of roles sharing images
    (:func:`pipeline.prepare.overlap.find_overlap`); empty when none does."""
    path = overlap_path(prepared_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def image_dir(prepared_dir: str | Path, role: str) -> Path:
    """Where ``role``'s images live (relative records are relative to ``prepared_dir``)."""
    recorded = json.loads((Path(prepared_dir) / "image_dirs.json").read_text())[role]
    return Path(prepared_dir) / recorded


def read_label_map(prepared_dir: str | Path) -> list[dict[str, Any]]:
    """``[{"label": 0, "category_id": ..., "name": ...}, ...]``, labels contiguous from 0."""
    return json.loads((Path(prepared_dir) / "labels.json").read_text())

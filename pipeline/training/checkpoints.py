"""Training checkpoints that only the run that wrote them can resume.

A checkpoint is named and stamped by the provenance of its run: hashes of the project code, of the
prepared training data, of every param that shapes the weights and of the weight files it starts from.
A run resumes a checkpoint only when all four match, so a code fix, new data under the same
``data.root``, another param or a replaced file under the same weights path never continues old
weights; a finished run deletes its checkpoint, so a re-run trains again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params, flatten, to_dict, weights_path
from pipeline.data.layout import annotations_path, image_dir, read_label_map
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_file

# The whole library, not this subpackage: this file is pipeline/training/checkpoints.py.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CODE_DIRS = (PACKAGE_DIR, PACKAGE_DIR.parent / "stages")
# Params that cannot change the weights: how often to save and log.
_NOT_SHAPING_WEIGHTS = ("checkpoint_every", "log_every")
WEIGHT_FILE_PARAMS = ("model.backbone.pretrained", "model.init_from")


def code_hash(dirs: tuple[Path, ...] = CODE_DIRS) -> str:
    """A hash of every Python source of the project (library and stages), by relative path and content."""
    digest = hashlib.sha256()
    for directory in dirs:
        for path in sorted(directory.rglob("*.py")):
            digest.update(f"{directory.name}/{path.relative_to(directory)}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_hash(prepared_dir: Path) -> str:
    """A hash of the prepared train split: its annotations, label map and the name and size of each image."""
    digest = hashlib.sha256()
    train_json = annotations_path(prepared_dir, "train")
    digest.update(train_json.read_bytes())
    digest.update(json.dumps(read_label_map(prepared_dir), sort_keys=True).encode())
    images = image_dir(prepared_dir, "train")
    for image in json.loads(train_json.read_text())["images"]:
        path = images / image["file_name"]
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"{image['file_name']}:{size}\n".encode())
    return digest.hexdigest()[:16]


def params_hash(params: Params) -> str:
    """A hash of the params that shape the trained weights (not tracking, evaluation or the ablation grid)."""
    shaping = {
        "seed": params.seed,
        **{name: to_dict(getattr(params, name)) for name in ("input", "model", "anchors", "loss")},
        "train": {k: v for k, v in to_dict(params.train).items() if k not in _NOT_SHAPING_WEIGHTS},
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(params: Params) -> str:
    """A hash of the content of the weight files the model starts from (``WEIGHT_FILE_PARAMS``), by param."""
    digest = hashlib.sha256()
    flat = flatten(params)
    for key in WEIGHT_FILE_PARAMS:
        if flat[key] is not None:
            content = hashlib.sha256()
            with open(weights_path(flat[key]), "rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    content.update(chunk)
            digest.update(f"{key}:{content.hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


def provenance(params: Params, prepared_dir: Path) -> dict[str, str]:
    """``{"code", "data", "params", "weights"}`` hashes of a training run."""
    return {"code": code_hash(), "data": data_hash(prepared_dir), "params": params_hash(params),
            "weights": weights_hash(params)}


def checkpoint_path(checkpoint_dir: Path, run_provenance: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps(run_provenance, sort_keys=True).encode()).hexdigest()[:16]
    return Path(checkpoint_dir) / f"{key}.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise PipelineError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})".splitlines()[0]) from None


def resumable_state(path: Path, run_provenance: dict[str, str]) -> dict[str, Any] | None:
    """The state saved at ``path`` if it exists and was written by a run of the same provenance."""
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    if state.get("provenance") != run_provenance:
        print(f"not resuming {path}: written by other code, data or params ({state.get('provenance')})")
        return None
    return state

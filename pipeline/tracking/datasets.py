"""The data a stage run reads, as MLflow dataset inputs (the run page's "Datasets" panel, ``search_runs``
with ``datasets.digest``): one input per role of the prepared data it reads (``prepared/train``,
``prepared/val``, ``prepared/test``; context = the role), and one per other data dep DVC hashed (the raw
data the prepare stage reads; context ``raw``). The digest is the md5 DVC records in ``dvc.lock`` for the
path (``<md5>.dir`` for a folder); outside DVC it is computed the same way. Models and weights are deps,
not datasets: they are in the ``dvc_deps`` param.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from pipeline.tracking.provenance import directory_digest, is_code

PREPARED = "data/prepared"
OVERLAP = "overlap.json"  # in PREPARED: the images in two roles data.allow_overlap let through (pipeline.data.layout)
OVERLAP_TAG = "data_overlap"
# The roles of data/prepared each stage reads (pipeline.data.layout.ROLES); evaluate: its --split.
STAGE_ROLES = {
    "pretrain": ("train", "val"),
    "train": ("train", "val"),
    "ablate": ("train", "val", "test"),
    "evaluate": ("test",),
    "anchors": ("train", "val"),
}
NOT_DATA = ("models/", "weights", "reports/")
RAW_CONTEXT = "raw"
MAX_DIGEST = 36


def data_inputs(stage: str, hashes: dict[str, str], cwd: Path, roles: tuple[str, ...] | None = None
                ) -> list[dict[str, str]]:
    """The dataset inputs of a stage run: ``{"name", "digest", "source", "context"}`` each (JSON, so the spool
    journals them as they are). ``hashes``: DVC's dep hashes of the run (empty outside DVC)."""
    roles = STAGE_ROLES.get(stage, ()) if roles is None else roles
    out = []
    if roles:
        digest = hashes.get(PREPARED) or _computed(cwd / PREPARED)
        if digest:
            out += [{"name": f"prepared/{role}", "digest": digest, "source": PREPARED, "context": role}
                    for role in roles]
    for path, value in sorted(hashes.items()):
        if path != PREPARED and not is_code(path) and not path.startswith(NOT_DATA):
            out.append({"name": path, "digest": value, "source": path, "context": RAW_CONTEXT})
    return [spec for spec in out if len(spec["digest"]) <= MAX_DIGEST]  # what MLflow accepts (an md5: 32, .dir: 36)


def overlap_tags(overlap: dict[str, Any]) -> dict[str, str]:
    """``{"data_overlap": "train/test 2 (id 2, path 0, content 1)"}``: the images in two roles of the
    prepared data (``data.allow_overlap``), a tag of every run that reads it."""
    kinds = ("id", "path", "content")
    return {OVERLAP_TAG: "; ".join(
        f"{pair} {counts['images']} ({', '.join(f'{kind} {counts[kind]}' for kind in kinds)})"
        for pair, counts in overlap.items())}


def data_tags(stage: str, cwd: Path, roles: tuple[str, ...] | None = None) -> dict[str, str]:
    """The tags of a stage run that reads the prepared data under ``cwd``: :func:`overlap_tags` of the overlap
    it records (:func:`pipeline.data.layout.read_overlap`)."""
    path = cwd / PREPARED / OVERLAP
    reads = STAGE_ROLES.get(stage, ()) if roles is None else roles
    return overlap_tags(json.loads(path.read_text())) if reads and path.is_file() else {}


def dataset_inputs(specs: list[dict[str, str]]) -> list[Any]:
    """MLflow ``DatasetInput`` entities of :func:`data_inputs`' specs (an ``mlflow.data`` dataset each)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    out = []
    for spec in specs:
        with warnings.catch_warnings():  # a local path matches two registered local sources: the same class
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(spec["source"])
        dataset = MetaDataset(source, name=spec["name"], digest=spec["digest"])._to_mlflow_entity()
        out.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, spec["context"])]))
    return out


def _computed(path: Path) -> str | None:
    try:
        return directory_digest(path)
    except Exception as err:  # provenance is best effort
        print(f"WARNING: no digest of {path} for the run's dataset inputs: {err}", file=sys.stderr)
        return None

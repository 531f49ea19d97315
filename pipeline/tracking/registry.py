"""The registered MLflow model ``yolact``: one version per train run, the alias ``champion`` on the best.

The train stage logs its checkpoint as a pyfunc model (:mod:`pipeline.deploy.pyfunc_model`, with this package as
code and pinned requirements, so nothing is inferred or downloaded) and registers it; the evaluate stage
tags the version with its test AP and moves ``champion`` to it only when its test mask AP beats the
champion's. Every function is idempotent: :mod:`pipeline.tracking.sync` calls them again for spooled runs.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

# The whole pipeline package ships as the model's code (pipeline.deploy.pyfunc_model imports from across it),
# not only this subpackage: this file is pipeline/tracking/registry.py.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PYFUNC_MODEL = PACKAGE_DIR / "deploy" / "pyfunc_model.py"
MODEL_NAME = "yolact"
CHAMPION = "champion"
RANKING_METRIC = "test_segm_AP"
VERSION_METRICS = ("test_bbox_AP", "test_segm_AP")
LOGGED_MODEL_NAME = "model"
# What the predictor imports (pipeline.deploy.predict and the modules it imports); pinned to this environment.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pillow", "pycocotools", "pyyaml", "pandas", "tqdm")
EXAMPLE_SIZE = (24, 32)  # the input example: a small uint8 RGB image
# The pyfunc model's output: one row per detection (pipeline/deploy/pyfunc_model.py).
OUTPUT_COLUMNS = {"x1": "double", "y1": "double", "x2": "double", "y2": "double", "score": "double",
                  "label": "long", "class_name": "string", "category_id": "long", "mask": "string"}


def model_version(client: Any, run_id: str) -> Any | None:
    """The version of ``yolact`` registered from a train run, or None."""
    found = client.search_model_versions(f"name = '{MODEL_NAME}' and run_id = '{run_id}'")
    return found[0] if found else None


def register_model(client: Any, run_id: str, checkpoint: Path, tags: dict[str, str]) -> Any:
    """Log ``checkpoint`` as the pyfunc model of run ``run_id`` and register it as a version of ``yolact``
    tagged ``tags``; the existing version if the run has one already."""
    version = model_version(client, run_id)
    if version is not None:
        return version
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException

    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    model = next((m for m in found if m.name == LOGGED_MODEL_NAME), None)
    if model is None:
        model = client.create_logged_model(experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id,
                                           model_type="yolact")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        save_pyfunc(local, checkpoint, model, run_id, Path(tmp) / "code")
        client.log_model_artifacts(model.model_id, str(local))
    client.finalize_logged_model(model.model_id, "READY")
    try:
        client.create_registered_model(MODEL_NAME)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The artifact location, not models:/<id>: a SQL registry resolves that through the process-wide
    # tracking URI, not this client's.
    return client.create_model_version(MODEL_NAME, source=model.artifact_location, run_id=run_id, tags=tags,
                                       model_id=model.model_id, await_creation_for=0)


def save_pyfunc(path: Path, checkpoint: Path, logged_model: Any, run_id: str, scratch: Path) -> None:
    """Write the MLflow model of ``checkpoint`` to ``path``: signature, input example and requirements."""
    import mlflow
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    package = PACKAGE_DIR
    code = scratch / package.name
    shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__"))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
                               outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS.items()]))
    example = np.random.default_rng(0).integers(0, 256, (*EXAMPLE_SIZE, 3), dtype=np.uint8)
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.WARNING)  # not its info lines in the stage's output
    try:
        mlflow.pyfunc.save_model(
            path, python_model=str(PYFUNC_MODEL), artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(code)], signature=signature, input_example=example,
            pip_requirements=[f"{name}=={metadata.version(name)}" for name in REQUIREMENTS],
            mlflow_model=Model(artifact_path=logged_model.artifact_location, model_uuid=logged_model.model_id,
                               run_id=run_id, model_id=logged_model.model_id),
        )
    finally:
        pyfunc_logger.setLevel(level)


def should_promote(candidate: float, champion: float | None) -> bool:
    """A version takes ``champion`` when its test mask AP beats the champion's (or there is none)."""
    return not math.isnan(candidate) and (champion is None or candidate > champion)


def record_evaluation(client: Any, run_id: str, metrics: dict[str, float],
                      lock: AbstractContextManager | None = None) -> str:
    """Tag the version of run ``run_id``'s model with its test AP (``VERSION_METRICS`` of ``metrics``) and
    move ``champion`` to it if it beats the champion; one line saying what happened.

    ``lock`` serialises the compare-and-move between processes of one machine (parallel queued
    experiments); across machines two evaluations finishing at the same moment may race."""
    version = model_version(client, run_id)
    if version is None:
        return f"registered model: run {run_id} registered no version of '{MODEL_NAME}'; champion unchanged"
    values = {key: math.nan if metrics.get(key) is None else float(metrics[key]) for key in VERSION_METRICS}
    for key, value in values.items():
        client.set_model_version_tag(MODEL_NAME, version.version, key, repr(value))
    candidate = values[RANKING_METRIC]
    with lock or nullcontext():
        champion = _champion(client)
        if champion is not None and champion.version == version.version:
            return f"registered model: {MODEL_NAME} v{version.version} is the champion (segm AP {candidate:.4f})"
        champion_ap = _tagged_ap(champion) if champion is not None else None
        if not should_promote(candidate, champion_ap):
            than = "no champion yet" if champion is None else f"champion v{champion.version} ({champion_ap:.4f})"
            return (f"registered model: {MODEL_NAME} v{version.version} (segm AP {candidate:.4f}) does not beat "
                    f"{than}; champion unchanged")
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    before = "no champion" if champion is None else f"v{champion.version} ({champion_ap:.4f})"
    return (f"registered model: {MODEL_NAME} v{version.version} (segm AP {candidate:.4f}) is the new "
            f"champion, was {before}")


def _champion(client: Any) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _tagged_ap(version: Any) -> float:
    """The champion's tagged test mask AP; a champion set by hand without one counts as -inf."""
    value = version.tags.get(RANKING_METRIC)
    return float(value) if value not in (None, "") else -math.inf

"""The registered MLflow model ``yolact``: one version per train run, the alias ``champion`` on the best.

The train stage logs its checkpoint as a pyfunc model (:mod:`pipeline.deploy.pyfunc_model`, with this package as
code and pinned requirements, so nothing is inferred or downloaded) and registers it; the evaluate stage
tags the version with its test AP and the md5 of the test ground truth it was measured on, and settles
``champion``: the best test mask AP among the versions measured on the champion's ground truth, safe
against other processes and machines settling it at the same time (:func:`settle_champion`). Every function
is idempotent: :mod:`pipeline.tracking.sync` calls them again for spooled runs.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
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
# The md5 of the ground truth (data/prepared/gt_test.json) the version's test AP was measured on: only versions
# with the champion's take it.
GT_TAG = "test_gt_md5"
# Moves of the alias one evaluation makes at most while others move it too (each concurrent evaluation needs ~1).
SETTLE_ROUNDS = 20
# The 95% bootstrap intervals of VERSION_METRICS, shown in the version's description (its model card).
INTERVAL_METRICS = tuple(f"{key}_{end}" for key in VERSION_METRICS for end in ("lo", "hi"))
# The params a reader of a model card looks for (the run page has them all).
CARD_PARAMS = ("model.arch", "model.backbone.depth", "model.init_from", "model.backbone.pretrained", "input.size",
               "anchors.scales", "anchors.aspect_ratios", "loss.pos_iou", "loss.neg_iou", "train.iterations",
               "train.batch_size", "train.lr", "train.precision", "data.source", "data.categories", "seed")
MODEL_DESCRIPTION = f"""The pipeline's instance segmentation model (YOLACT, or Mask R-CNN with `model.arch: mask_rcnn`):
one version per train run, each described by its own card (data, test AP, params). The alias
`{CHAMPION}` is on the version with the best test mask AP on the champion's test ground truth (the
evaluate stage moves it).

```python
model = mlflow.pyfunc.load_model("models:/{MODEL_NAME}@{CHAMPION}")
detections = model.predict(image)  # uint8 [H, W, 3] RGB -> DataFrame, one row per detection
```

See docs/tracking.md of the repository."""
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
        client.create_registered_model(MODEL_NAME, description=MODEL_DESCRIPTION)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if not client.get_registered_model(MODEL_NAME).description:  # made before the card: fixed on first use
            client.update_registered_model(MODEL_NAME, description=MODEL_DESCRIPTION)
    # The artifact location, not models:/<id>: a SQL registry resolves that through the process-wide
    # tracking URI, not this client's.
    version = client.create_model_version(MODEL_NAME, source=model.artifact_location, run_id=run_id, tags=tags,
                                          model_id=model.model_id, await_creation_for=0)
    return _describe(client, version, {}, None)


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


def record_evaluation(client: Any, run_id: str, metrics: dict[str, float], gt_md5: str | None) -> str:
    """Tag the version of run ``run_id``'s model with its test AP (``VERSION_METRICS`` of ``metrics``) and ``gt_md5``
    (the md5 of the test ground truth it was measured on), then settle ``champion``; one line saying what happened."""
    version = model_version(client, run_id)
    if version is None:
        return f"registered model: run {run_id} registered no version of '{MODEL_NAME}'; champion unchanged"
    values = {key: math.nan if metrics.get(key) is None else float(metrics[key]) for key in VERSION_METRICS}
    tags = {**{key: repr(value) for key, value in values.items()}, **({GT_TAG: gt_md5} if gt_md5 else {})}
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version.version, key, value)
    _describe(client, version, metrics, gt_md5)
    before, after, settled = settle_champion(client, gt_md5)
    return outcome(str(version.version), values[RANKING_METRIC], gt_md5, before, after, settled)


def settle_champion(client: Any, gt_md5: str | None) -> tuple[Any | None, Any | None, bool]:
    """Move ``champion`` to :func:`champion_choice` of the registry as read now, and read again after every move
    until it holds there. Each round reads all versions first, then the alias: whatever other processes or
    machines do at the same time, the last of these reads sees every tag written before it and no move follows
    it unchecked, so the alias ends on the best (the argument is in docs/tracking.md). The champion before and
    after, and whether it held within ``SETTLE_ROUNDS`` moves."""
    before = None
    for moves in range(SETTLE_ROUNDS + 1):
        versions = _versions(client)  # first every version's tags, then the alias: the order matters
        champion = _champion(client)
        before = before if moves else champion
        choice = champion_choice(versions, champion, gt_md5)
        if choice is None or _same(choice, champion):
            return before, champion, True
        if moves < SETTLE_ROUNDS:  # never a move left unchecked
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, choice.version)
    return before, champion, False


def champion_choice(versions: list[Any], champion: Any | None, gt_md5: str | None) -> Any | None:
    """The version that should hold ``champion``: the highest test mask AP among ``versions`` measured on the
    champion's ground truth (on ``gt_md5`` when there is no champion or it has none recorded); the champion
    keeps a tie, otherwise the oldest tied version wins; None when no version qualifies."""
    reference = (champion.tags.get(GT_TAG) if champion is not None else None) or gt_md5
    scored = [(_tagged_ap(v), v) for v in versions if reference and v.tags.get(GT_TAG) == reference]
    scored = [(ap, v) for ap, v in scored if not math.isnan(ap)]
    if not scored:
        return None
    top = max(ap for ap, _ in scored)
    tied = sorted((v for ap, v in scored if ap == top), key=lambda v: int(v.version))
    return next((v for v in tied if _same(v, champion)), tied[0])


def outcome(version: str, ap: float, gt_md5: str | None, before: Any | None, after: Any | None, settled: bool) -> str:
    """One line on what settling the champion did for the evaluated ``version`` (``before``, ``after``: the
    champion)."""
    head = f"registered model: {MODEL_NAME} v{version} (segm AP {ap:.4f})"
    if not settled:
        return (f"{head}: the champion is still moving after {SETTLE_ROUNDS} moves (other evaluations at the "
                f"same time), {_label(after)} now; the next evaluation settles it")
    if after is not None and str(after.version) == version:
        if _same(before, after):
            return f"registered model: {MODEL_NAME} v{version} is the champion (segm AP {ap:.4f})"
        return f"{head} is the new champion, was {_label(before)}"
    unchanged = "champion unchanged" if _label(before) == _label(after) else f"champion was {_label(before)}"
    if after is None:
        return f"{head} cannot be the champion (no test mask AP or ground-truth md5); {unchanged}"
    if after.tags.get(GT_TAG) != gt_md5:
        return (f"{head} was measured on other test ground truth (md5 {gt_md5 or 'not recorded'}) than champion "
                f"{_label(after)} (md5 {after.tags.get(GT_TAG)}), so it never takes it; {unchanged}")
    return f"{head} does not beat champion {_label(after)}; {unchanged}"


def model_card(version: str, run: Any, metrics: dict[str, float | None], gt_md5: str | None) -> str:
    """The description of version ``version`` of ``yolact`` trained by ``run`` (an MLflow ``Run``): the data it
    was trained on (DVC digest), its test AP with 95% intervals once evaluated (on the ground truth of md5
    ``gt_md5``), the params that matter and the two lines that load and use it (Markdown, as the registry page
    renders it)."""
    params, tags = run.data.params, run.data.tags
    lines = [f"**{MODEL_NAME} v{version}**, trained by run `{run.info.run_id}`"
             + (f" (DVC experiment `{tags['dvc_exp']}`)" if tags.get("dvc_exp") else "")
             + (f" at commit `{tags['git_commit'][:12]}`" if tags.get("git_commit", "unknown") != "unknown" else "")
             + (" with uncommitted changes" if tags.get("git_dirty") == "true" else "") + "."]
    inputs = run.inputs.dataset_inputs if run.inputs else []
    data = sorted({(i.dataset.source, i.dataset.digest) for i in inputs})
    for source, digest in data:
        lines.append(f"Data: `{_source_path(source)}`, DVC md5 `{digest}` "
                     f"(`{', '.join(sorted(_context(i) for i in inputs if i.dataset.digest == digest))}`).")
    if not data:
        lines.append("Data: no digest recorded (not run by DVC and no prepared data found).")
    rows = []
    for kind, label in (("segm", "mask"), ("bbox", "box")):
        value = metrics.get(f"test_{kind}_AP")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        lo, hi = metrics.get(f"test_{kind}_AP_lo"), metrics.get(f"test_{kind}_AP_hi")
        interval = f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "n/a"
        rows.append(f"| {label} AP | {value:.4f} | {interval} |")
    if rows:
        measured = f"ground truth md5 `{gt_md5}`; " if gt_md5 else ""
        lines += ["", f"Test split ({measured}COCO AP, 95% bootstrap interval over images):", "", "| | AP | interval |",
                  "|---|---|---|", *rows]
    else:
        lines.append("Test AP: not evaluated yet (the evaluate stage adds it).")
    shown = [f"`{key}={params[key]}`" for key in CARD_PARAMS if key in params]
    if shown:
        lines += ["", "Params: " + ", ".join(shown) + " (all of them on the run page)."]
    lines += ["", "```python", f'model = mlflow.pyfunc.load_model("models:/{MODEL_NAME}/{version}")',
              "detections = model.predict(image)  # uint8 [H, W, 3] RGB -> DataFrame, one row per detection", "```"]
    return "\n".join(lines)


def _describe(client: Any, version: Any, metrics: dict[str, float | None], gt_md5: str | None) -> Any:
    """Write the model card of ``version`` (with ``metrics`` and ``gt_md5`` once evaluated); the version."""
    card = model_card(version.version, client.get_run(version.run_id), metrics, gt_md5)
    if version.description != card:
        version = client.update_model_version(MODEL_NAME, version.version, description=card)
    return version


def _source_path(source: str) -> str:
    import json

    try:
        return json.loads(source).get("uri", source)
    except (ValueError, AttributeError):
        return source


def _context(dataset_input: Any) -> str:
    return next((t.value for t in dataset_input.tags if t.key == "mlflow.data.context"), "")


def _champion(client: Any) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _tagged_ap(version: Any) -> float:
    """A version's tagged test mask AP; NaN when it has none (never evaluated, or set champion by hand)."""
    value = version.tags.get(RANKING_METRIC)
    return float(value) if value not in (None, "") else math.nan


def _same(version: Any | None, other: Any | None) -> bool:
    return version is not None and other is not None and str(version.version) == str(other.version)


def _label(version: Any | None) -> str:
    return "no champion" if version is None else f"v{version.version} ({_tagged_ap(version):.4f})"


def _versions(client: Any) -> list[Any]:
    """Every version of ``yolact`` with its tags, all pages."""
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{MODEL_NAME}'", page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out

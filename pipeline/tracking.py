"""MLflow tracking: the only module that knows MLflow.

Stages receive a :class:`Run` and call ``log_metrics`` / ``log_artifact``; when the store cannot be
reached the run goes offline (the stage still completes and says the run was not logged) unless
``mlflow.required`` is set. Writes to a shared SQLite store are retried, so experiments running at
once (``dvc queue start -j 2``) never lose a run.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .config import REPO_ROOT, MlflowParams, Params, flatten
from .errors import PipelineError

T = TypeVar("T")
_log = logging.getLogger(__name__)
_RETRIES = 8
_METRIC_BUFFER = 500


def main_repo_root(root: Path = REPO_ROOT) -> Path:
    """The user's repository, also when DVC runs a queued experiment in ``.dvc/tmp/exps/<tmp>``."""
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def resolve_tracking_uri(configured: str, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative ``sqlite:///`` path is taken from the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((root or main_repo_root()) / uri[len(prefix) :])
    return uri


def fingerprint(paths: Iterable[Path]) -> str:
    """A short content hash of files (the prepared data's annotation files)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Run:
    """One MLflow run. Every method is safe to call when offline (``run_id is None``)."""

    def __init__(self, client: Any, run_id: str | None, uri: str, required: bool, quiet: bool = False,
                 parent_run_id: str | None = None):
        self._client = client
        self._quiet = quiet
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.uri = uri
        self._required = required
        self._metrics: list[Any] = []
        self.offline_reason: str | None = None if run_id else "tracking disabled"

    @property
    def online(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._call(lambda c=items[start : start + 100]: self._client.log_batch(self.run_id, params=c))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if len(self._metrics) >= _METRIC_BUFFER:
            self.flush()

    def flush(self) -> None:
        pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), 1000):
            self._call(lambda c=pending[start : start + 1000]: self._client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call(lambda: self._client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            self._call(lambda: self._client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._call(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_to(self, run_id: str, metrics: dict[str, float], artifacts: Iterable[tuple[str, str]] = ()) -> None:
        """Log metrics and ``(path, artifact_path)`` artifacts into another run: the evaluation of a
        model into the model's training run, so that one run holds the whole story of that model."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        self._call(lambda: self._client.log_batch(run_id, metrics=batch))
        for path, artifact_path in artifacts:
            if Path(path).is_dir():
                self._call(lambda: self._client.log_artifacts(run_id, str(path), artifact_path))
            elif Path(path).is_file():
                self._call(lambda: self._client.log_artifact(run_id, str(path), artifact_path))

    def end_other(self, run_id: str, status: str) -> None:
        """Mark another run (a parent this run logged into) as ended."""
        self._call(lambda: self._client.set_terminated(run_id, status))

    def end(self, status: str) -> None:
        self.flush()
        self._call(lambda: self._client.set_terminated(self.run_id, status))
        if self._quiet:
            return
        if self.online:
            print(f"MLflow: run {self.run_id} logged to {self.uri}", file=sys.stderr)
        else:
            print(f"WARNING: MLflow run NOT logged ({self.offline_reason})", file=sys.stderr)

    def _call(self, fn: Callable[[], T]) -> T | None:
        if not self.online:
            return None
        try:
            return _retry(fn)
        except Exception as err:  # the store went away mid-run
            if self._required:
                raise PipelineError(f"mlflow: logging to {self.uri} failed: {_one_line(err)}") from err
            self.offline_reason = f"{self.uri} failed mid-run: {_one_line(err)}"
            print(f"WARNING: MLflow logging stopped: {self.offline_reason}", file=sys.stderr)
            self.run_id = None
            return None


def start_run(
    params: Params,
    stage: str,
    experiment: str | None = None,
    tags: dict[str, Any] | None = None,
    parent: tuple[str, str] | None = None,
) -> Run:
    """Open a run with all params (dotted) and the standard tags; offline if the store is unreachable.

    ``parent = (key, name)`` nests the run under the run of the experiment tagged ``group_key=key``,
    created (named ``name``) by the first run of the group.
    """
    settings: MlflowParams = params.mlflow
    if int(os.environ.get("RANK", "0")) != 0:
        return Run(None, None, "", required=False, quiet=True)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = resolve_tracking_uri(settings.tracking_uri)
    experiment = experiment or settings.experiment
    exp_name = os.environ.get("DVC_EXP_NAME")
    try:
        client, run_id, parent_id = _create_run(uri, experiment, f"{stage} · {exp_name}" if exp_name else stage, parent)
    except Exception as err:
        if settings.required:
            raise PipelineError(
                f"mlflow: tracking store {uri} unreachable ({_one_line(err)}) and mlflow.required is true"
            ) from err
        print(f"WARNING: MLflow store {uri} unreachable: {_one_line(err)}; continuing without tracking",
              file=sys.stderr)
        run = Run(None, None, uri, required=False)
        run.offline_reason = f"store {uri} unreachable"
        return run
    run = Run(client, run_id, uri, settings.required, parent_run_id=parent_id)
    import torch

    from .provenance import git_state

    all_tags = {
        **git_state(),
        **{f"dvc_dep.{path}": value for path, value in _dependency_hashes().items()},
        "dvc_stage": stage,
        "torch_version": torch.__version__,
        **({"dvc_exp": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}),
        **({"mlflow.parentRunId": parent_id} if parent_id else {}),
        **(tags or {}),
    }
    run.set_tags(all_tags)
    run.log_params(flatten(params))
    return run


def _dependency_hashes() -> dict[str, str]:
    """DVC's dep hashes of this stage run, or none (with a warning) if DVC cannot compute them."""
    from .provenance import dvc_dependency_hashes

    try:
        return dvc_dependency_hashes()
    except Exception as err:  # provenance is best effort: a DVC hiccup must not stop training
        print(f"WARNING: DVC dependency hashes not recorded: {_one_line(err)}", file=sys.stderr)
        return {}


def _create_run(uri: str, experiment: str, run_name: str,
                parent: tuple[str, str] | None) -> tuple[Any, str, str | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    lock = _store_lock(uri)
    with lock:
        exp = _retry(lambda: client.get_experiment_by_name(experiment))
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):
                location = (main_repo_root() / "mlartifacts").as_uri()
            exp_id = _retry(lambda: client.create_experiment(experiment, artifact_location=location))
        else:
            exp_id = exp.experiment_id
        parent_id = _group_run(client, exp_id, *parent) if parent else None
    run = _retry(lambda: client.create_run(exp_id, run_name=run_name))
    return client, run.info.run_id, parent_id


def _group_run(client: Any, experiment_id: str, key: str, name: str) -> str:
    """The id of the run tagged ``group_key=key`` in the experiment, created if there is none."""
    found = _retry(lambda: client.search_runs([experiment_id], filter_string=f"tags.group_key = '{key}'",
                                              max_results=1))
    if found:
        return found[0].info.run_id
    return _retry(lambda: client.create_run(experiment_id, run_name=name, tags={"group_key": key})).info.run_id


def _store_lock(uri: str) -> Any:
    """Serialise creating the SQLite schema and experiments across processes."""
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=300)


def _retry(fn: Callable[[], T]) -> T:
    delay = 0.2
    for attempt in range(_RETRIES):
        try:
            return fn()
        except Exception as err:
            transient = "locked" in str(err).lower() or "busy" in str(err).lower()
            if not transient or attempt == _RETRIES - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]

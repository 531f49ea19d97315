"""The MLflow tracking store: where it is (``mlflow.tracking_uri`` resolved against the user's repository), opening experiments and runs under file locks, retrying a busy SQLite store, replaying the spool."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from pipeline.config import REPO_ROOT
from pipeline.utils.errors import PipelineError
from pipeline.tracking.spool import SpoolEntry, pending_entries, spool_dir


T = TypeVar("T")
_log = logging.getLogger(__name__)
_RETRIES = 8
# MLflow 3 opens an experiment without a kind on its GenAI pages (traces); this one opens on its training runs.
# A kind a person set in the UI is left as it is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}


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


def set_experiment(name: str) -> Any:
    """``mlflow.set_experiment(name)`` for code on MLflow's fluent API (the benchmarks), with the experiment
    kind every experiment of the pipeline carries (set on an existing experiment that lacks it)."""
    import mlflow

    experiment = mlflow.set_experiment(name)
    for key, value in EXPERIMENT_TAGS.items():
        if key not in experiment.tags:
            mlflow.set_experiment_tag(key, value)
    return experiment


def sync_spool(uri: str, root: Path | None = None, client: Any = None) -> Any:
    """Replay every run spooled for ``uri`` (:func:`pipeline.tracking.sync.sync_pending`); raises if unreachable."""
    from pipeline.tracking.sync import sync_pending

    _client_settings()
    root = root or main_repo_root()
    try:
        client, _ = _open_experiment(uri, None, root, client)

        def group_run(exp_id: str, key: str, name: str) -> str:
            with _store_lock(uri):
                return _group_run(client, exp_id, key, name)

        return sync_pending(client, uri, root, lambda name: _open_experiment(uri, name, root, client)[1], group_run)
    except Exception as err:
        raise PipelineError(f"mlflow: syncing {spool_dir(root)} to {uri} failed ({_one_line(err)}); the runs not "
                            "synced stay spooled: run it again once the store is reachable") from err


def _sync_quietly(client: Any, uri: str, root: Path) -> None:
    """Sync spooled runs at the start of a stage: one line when there were some, never fatal."""
    if not pending_entries(root):
        return
    try:
        report = sync_spool(uri, root, client)
    except Exception as err:  # the server went away again: the runs stay spooled
        print(f"WARNING: MLflow: spooled runs not synced: {_one_line(err)}", file=sys.stderr)
        return
    if report.synced or report.waiting:
        waiting = f", {len(report.waiting)} waiting for runs not synced yet" if report.waiting else ""
        print(f"MLflow: synced {len(report.synced)} spooled run(s) to {uri}{waiting}", file=sys.stderr)


def _client_settings() -> None:
    """Fail over to the spool in seconds, not minutes, and keep progress bars out of the stage output."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _open_experiment(uri: str, name: str | None, root: Path, client: Any = None) -> tuple[Any, str | None]:
    """A client of the store and the id of experiment ``name``, created if missing; raises if the store
    cannot be reached (``name`` None: only that check)."""
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(tracking_uri=uri)
    if name is None:
        _retry(lambda: client.search_experiments(max_results=1))
        return client, None
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        exp = _retry(lambda: client.get_experiment_by_name(name))
        if exp is None:
            location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
            try:
                return client, _retry(lambda: client.create_experiment(name, artifact_location=location,
                                                                       tags=EXPERIMENT_TAGS))
            except MlflowException as err:  # another process on a server created it just now
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = _retry(lambda: client.get_experiment_by_name(name))
        for key, value in EXPERIMENT_TAGS.items():  # a store made before the tag: fixed on first use
            if key not in exp.tags:
                _retry(lambda: client.set_experiment_tag(exp.experiment_id, key, value))
        return client, exp.experiment_id


def _create_run(client: Any, uri: str, exp_id: str, run_name: str, parent: tuple[str, str] | None,
                entry: SpoolEntry | None) -> tuple[str, str | None]:
    """A new run (tagged with its spool entry, so that a sync finds it) and its group parent's id."""
    with _store_lock(uri):
        parent_id = _group_run(client, exp_id, *parent) if parent else None
    tags = {"spool_id": entry.id} if entry else None
    return _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=tags)).info.run_id, parent_id


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


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]

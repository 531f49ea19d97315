"""MLflow tracking: stages receive a :class:`Run` and call ``log_metrics`` / ``log_artifact``.

No run is lost: a run journals what it logs to a spool entry in the user's repository
(:mod:`pipeline.tracking.spool`); when the store cannot be reached, or fails mid-run, the stage still completes
and the run waits in the spool until ``python -m stages.sync`` (or the start of the next stage) replays
it (:mod:`pipeline.tracking.sync`). ``mlflow.required`` fails fast instead. Writes to a shared SQLite store are
retried, so experiments running at once (``dvc queue start -j 2``) never lose a run. MLflow itself is
known only in this package: here, in :mod:`pipeline.tracking.store`, :mod:`pipeline.tracking.sync` and
:mod:`pipeline.tracking.registry` (the registered model).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.config import MlflowParams, Params, flatten
from pipeline.utils.errors import PipelineError
from pipeline.tracking.spool import GROUP_REF, REF_TAGS, SPOOL_REF, SpoolEntry, synced_run_id
from pipeline.tracking.store import (
    T,
    _client_settings,
    _create_run,
    _one_line,
    _open_experiment,
    _retry,
    _sync_quietly,
    main_repo_root,
    resolve_tracking_uri,
)


_METRIC_BUFFER = 500
_PARAM_MAX = 6000  # MLflow's longest param value
# DVC's md5 of every dep of the stage run (path -> md5, as in dvc.lock): a param (searchable with LIKE) and an artifact
DEPS_PARAM = "dvc_deps"
DEPS_ARTIFACT = "provenance/dvc_deps.json"


class Run:
    """One MLflow run. Everything it logs is journaled to its spool entry (:mod:`pipeline.tracking.spool`) and, while
    the server answers, sent to it; after a failure (or from the start, if the store was unreachable) the
    run goes on in the spool alone and ``python -m stages.sync`` sends it later. Every method is safe to
    call on a disabled run (no client and no entry: a non-zero rank)."""

    def __init__(self, client: Any, uri: str, required: bool, entry: SpoolEntry | None = None,
                 root: Path | None = None, run_id: str | None = None, parent_run_id: str | None = None,
                 quiet: bool = False, offline_reason: str | None = None):
        self._client = client
        self._entry = entry
        self._root = root
        self._quiet = quiet
        self._required = required
        self.uri = uri
        self.run_id = run_id  # on the server (also after an outage: the sync completes it), else None
        self.parent_run_id = parent_run_id  # the group's parent: a server id, or group:<key> when offline
        self._metrics: list[Any] = []
        self._lock = threading.RLock()  # the system metrics monitor logs from its own thread
        self._monitor: Any = None
        self.offline_reason = offline_reason
        self._pending = client is None  # the server lacks something of the journal

    @classmethod
    def disabled(cls) -> "Run":
        return cls(None, "", required=False, quiet=True, offline_reason="tracking disabled")

    @property
    def online(self) -> bool:
        """Logging to the server right now."""
        return self._client is not None and self.offline_reason is None

    @property
    def ref(self) -> str | None:
        """How other runs refer to this one (the evaluate stage to its model's train run): the server run
        id, or ``spool:<id>`` for a run that exists only in the spool until it is synced."""
        return self.run_id or (self._entry.ref if self._entry else None)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        values = {k: _param_value(v) for k, v in params.items()}
        self._journal({"op": "params", "params": values})
        items = [Param(k, v) for k, v in values.items()]
        for start in range(0, len(items), 100):
            self._send(lambda c=items[start : start + 100]: self._client.log_batch(self.run_id, params=c),
                       self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        points = [[k, float(v), now, step or 0] for k, v in metrics.items()]
        with self._lock:
            self._journal({"op": "metrics", "run": None, "points": points})
            self._metrics += points
            if len(self._metrics) >= _METRIC_BUFFER:
                self.flush()

    def flush(self) -> None:
        from mlflow.entities import Metric

        with self._lock:
            pending, self._metrics = [Metric(*p) for p in self._metrics], []
            for start in range(0, len(pending), 1000):
                self._send(lambda c=pending[start : start + 1000]: self._client.log_batch(self.run_id, metrics=c),
                           self.run_id)

    def log_inputs(self, specs: list[dict[str, str]]) -> None:
        """Log the data the run reads as MLflow dataset inputs (:mod:`pipeline.tracking.datasets` specs)."""
        if not specs:
            return
        from pipeline.tracking.datasets import dataset_inputs

        self._journal({"op": "inputs", "datasets": specs})
        self._send(lambda: self._client.log_inputs(self.run_id, datasets=dataset_inputs(specs)), self.run_id)

    def log_json(self, value: Any, artifact_file: str) -> None:
        """Log ``value`` as the JSON artifact ``artifact_file`` (e.g. ``provenance/dvc_deps.json``)."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
            self.log_artifact(path, folder or None)

    def monitor_system(self) -> None:
        """Log MLflow's system metrics (``system/*``) until the run ends (:mod:`pipeline.tracking.system_metrics`)."""
        from pipeline.tracking import system_metrics

        if self._monitor is None and (self._client is not None or self._entry is not None):
            self._monitor = system_metrics.start(self)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        values = {k: str(v) for k, v in tags.items()}
        resolved = {k: (self._resolve(v) if k in REF_TAGS else v) for k, v in values.items()}
        self._journal({"op": "tags", "run": None,
                       "tags": {k: resolved[k] or values[k] for k in values}})
        sendable = [RunTag(k, v) for k, v in resolved.items() if v is not None]
        self._pending |= len(sendable) < len(resolved)
        if sendable:
            self._send(lambda: self._client.log_batch(self.run_id, tags=sendable), self.run_id)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._artifact(None, Path(path), artifact_path)

    def log_to(self, ref: str, metrics: dict[str, float], artifacts: Iterable[tuple[str, str]] = ()) -> None:
        """Log metrics and ``(path, artifact_path)`` artifacts into another run (``ref``: a server run id,
        ``spool:<id>`` or ``group:<key>``): the evaluation of a model into the model's training run, so
        that one run holds the whole story of that model."""
        from mlflow.entities import Metric

        target = self._resolve(ref)
        now = int(time.time() * 1000)
        points = [[k, float(v), now, 0] for k, v in metrics.items()]
        if points:
            self._journal({"op": "metrics", "run": target or ref, "points": points})
            self._send(lambda: self._client.log_batch(target, metrics=[Metric(*p) for p in points]), target)
        for path, artifact_path in artifacts:
            self._artifact(ref, Path(path), artifact_path)

    def end_other(self, ref: str, status: str) -> None:
        """Mark another run (a parent this run logged into) as ended."""
        target = self._resolve(ref)
        self._journal({"op": "end", "run": target or ref, "status": status, "end_time": int(time.time() * 1000)})
        self._send(lambda: self._client.set_terminated(target, status), target)

    def log_model(self, checkpoint: Path) -> None:
        """Log a trained checkpoint as this run's MLflow model and register it as a version of ``yolact``
        (tagged ``dvc_exp`` under ``dvc exp run``); a spooled run's version is registered when it is synced."""
        from pipeline.tracking import registry

        tags = {"dvc_exp": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}
        done = self._send(lambda: registry.register_model(self._client, self.run_id, Path(checkpoint), tags),
                          self.run_id)
        if done:
            print(f"MLflow: registered model {registry.MODEL_NAME} v{done.version}", file=sys.stderr)
        elif self._entry is not None and Path(checkpoint).is_file():
            (stored,) = self._entry.store(Path(checkpoint), None)
            self._journal({"op": "model", "checkpoint": stored[1], "tags": tags})

    def model_evaluated(self, model_ref: str | None, metrics: dict[str, float], gt_md5: str | None) -> str:
        """Tag the registered version of the model trained by run ``model_ref`` with its test AP and the md5 of the
        test ground truth it was measured on, and settle the alias ``champion``
        (:func:`pipeline.tracking.registry.record_evaluation`); one line saying what happened."""
        from pipeline.tracking import registry

        if not model_ref:
            return (f"registered model: the model has no MLflow run, hence no {registry.MODEL_NAME} version; "
                    "champion unchanged")
        wanted = {k: metrics.get(k) for k in registry.VERSION_METRICS + registry.INTERVAL_METRICS}
        target = self._resolve(model_ref)
        message = self._send(lambda: registry.record_evaluation(self._client, target, wanted, gt_md5), target)
        if message:
            return message
        self._journal({"op": "evaluated", "model_run": target or model_ref, "metrics": wanted, "gt_md5": gt_md5})
        return "registered model: the champion is decided when the spooled run is synced (python -m stages.sync)"

    def end(self, status: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.flush()
        self._journal({"op": "end", "run": None, "status": status, "end_time": int(time.time() * 1000)})
        self._send(lambda: self._client.set_terminated(self.run_id, status), self.run_id)
        if self._entry is not None:
            if self._pending:
                self._entry.release()
            else:
                self._entry.remove()
        if self._quiet:
            return
        if not self._pending:
            print(f"MLflow: run {self.run_id} logged to {self.uri}", file=sys.stderr)
        elif self._entry is not None:
            reason = self.offline_reason or "it refers to a spooled run not synced yet"
            print(f"WARNING: MLflow run not logged to {self.uri} ({reason}): spooled to {self._entry.path}; "
                  "`python -m stages.sync` sends it once the server is reachable (the next stage does too)",
                  file=sys.stderr)
        else:
            print(f"WARNING: MLflow run NOT logged ({self.offline_reason})", file=sys.stderr)

    def _journal(self, record: dict[str, Any]) -> None:
        if self._entry is not None:
            with self._lock:
                self._entry.append(record)

    def _resolve(self, ref: str | None) -> str | None:
        """The server run id of a reference, or None while it is only in the spool."""
        if ref is None:
            return None
        if self._entry is not None and ref == self._entry.ref:
            return self.run_id
        if ref.startswith(SPOOL_REF):
            return synced_run_id(self._root, ref[len(SPOOL_REF) :]) if self._root else None
        if ref.startswith(GROUP_REF):
            return None
        return ref

    def _send(self, fn: Callable[[], T], target: str | None) -> T | None:
        """Call the server about run ``target``; on failure go on in the spool (or raise, with
        ``mlflow.required``). ``target`` None: that run is not on the server yet, so it waits for the sync."""
        if not self.online or target is None:
            self._pending = True
            return None
        try:
            return _retry(fn)
        except Exception as err:  # the store went away mid-run
            if self._required:
                raise PipelineError(f"mlflow: logging to {self.uri} failed: {_one_line(err)}") from err
            self.offline_reason = f"{self.uri} failed mid-run: {_one_line(err)}"
            self._pending = True
            where = f"; spooling to {self._entry.path}" if self._entry else ""
            print(f"WARNING: MLflow logging stopped: {self.offline_reason}{where}", file=sys.stderr)
            return None

    def _artifact(self, ref: str | None, path: Path, artifact_path: str | None) -> None:
        if not path.exists():
            return
        target = self.run_id if ref is None else self._resolve(ref)
        if path.is_dir():
            sent = self._send(lambda: self._client.log_artifacts(target, str(path), artifact_path) or True, target)
        else:
            sent = self._send(lambda: self._client.log_artifact(target, str(path), artifact_path) or True, target)
        if not sent and self._entry is not None:
            files = self._entry.store(path, artifact_path)
            self._journal({"op": "artifact", "run": None if ref is None else (target or ref), "files": files})


def start_run(
    params: Params,
    stage: str,
    experiment: str | None = None,
    tags: dict[str, Any] | None = None,
    parent: tuple[str, str] | None = None,
    source: str | None = None,
    roles: tuple[str, ...] | None = None,
) -> Run:
    """Open a run with all params (dotted) and the standard tags; spooled if the store is unreachable.

    ``source`` is the stage (``stages.<source>``, default ``stage``), ``roles`` the roles of the prepared data
    it reads (default :data:`pipeline.tracking.datasets.STAGE_ROLES`): logged as dataset inputs with DVC's
    digest. The long stages log system metrics (:mod:`pipeline.tracking.system_metrics`).

    ``parent = (key, name)`` nests the run under the run of the experiment tagged ``group_key=key``,
    created (named ``name``) by the first run of the group. When the store is reachable, runs spooled
    earlier are synced first.
    """
    settings: MlflowParams = params.mlflow
    if int(os.environ.get("RANK", "0")) != 0:
        return Run.disabled()
    _client_settings()
    root = main_repo_root()
    uri = resolve_tracking_uri(settings.tracking_uri, root)
    experiment = experiment or settings.experiment
    exp_name = os.environ.get("DVC_EXP_NAME")
    run_name = f"{stage} · {exp_name}" if exp_name else stage
    header = {"uri": uri, "experiment": experiment, "run_name": run_name, "parent": list(parent) if parent else None,
              "start_time": int(time.time() * 1000)}
    entry = None
    try:
        client, exp_id = _open_experiment(uri, experiment, root)
        _sync_quietly(client, uri, root)
        entry = None if settings.required else SpoolEntry.create(root, header)
        run_id, parent_id = _create_run(client, uri, exp_id, run_name, parent, entry)
    except Exception as err:
        if settings.required:
            raise PipelineError(
                f"mlflow: tracking store {uri} unreachable ({_one_line(err)}) and mlflow.required is true"
            ) from err
        entry = entry or SpoolEntry.create(root, header)
        print(f"WARNING: MLflow store {uri} unreachable: {_one_line(err)}; spooling the run to {entry.path}",
              file=sys.stderr)
        run = Run(None, uri, False, entry, root, parent_run_id=f"{GROUP_REF}{parent[0]}" if parent else None,
                  offline_reason=f"store {uri} unreachable")
        parent_id = run.parent_run_id
    else:
        run = Run(client, uri, settings.required, entry, root, run_id=run_id, parent_run_id=parent_id)
        if entry is not None:
            entry.append({"op": "created", "run_id": run_id})
    import torch

    from pipeline.tracking import system_metrics
    from pipeline.tracking.datasets import data_inputs, data_tags
    from pipeline.tracking.provenance import code_digest, git_state, source_tags

    source = source or stage
    git = git_state()
    hashes = _dependency_hashes()
    code = code_digest(hashes)
    all_tags = {
        **git,
        **source_tags(source, git["git_commit"]),
        **({"dvc_deps.code": code} if code else {}),
        "dvc_stage": stage,
        "torch_version": torch.__version__,
        **({"dvc_exp": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}),
        **({"mlflow.parentRunId": parent_id} if parent_id else {}),
        **data_tags(source, Path.cwd(), roles),
        **(tags or {}),
    }
    run.set_tags(all_tags)
    deps = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
    run.log_params({**flatten(params), **({DEPS_PARAM: deps} if hashes and len(deps) <= _PARAM_MAX else {})})
    if hashes:
        run.log_json(hashes, DEPS_ARTIFACT)
    run.log_inputs(data_inputs(source, hashes, Path.cwd(), roles))  # the stage reads data/ relative to its cwd
    if system_metrics.wanted(source):
        run.monitor_system()
    return run


def _dependency_hashes() -> dict[str, str]:
    """DVC's dep hashes of this stage run, or none (with a warning) if DVC cannot compute them."""
    from pipeline.tracking.provenance import dvc_dependency_hashes

    try:
        return dvc_dependency_hashes()
    except Exception as err:  # provenance is best effort: a DVC hiccup must not stop training
        print(f"WARNING: DVC dependency hashes not recorded: {_one_line(err)}", file=sys.stderr)
        return {}


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."

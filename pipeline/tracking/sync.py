"""Replay spooled MLflow runs (:mod:`pipeline.tracking.spool`) to the tracking server, exactly once.

Each entry is compared with what the server has and only the difference is sent: the run itself (found by
its id, or by its ``spool_id`` tag, before one is created), params, tags and dataset inputs not there yet,
metric points not there yet (compared by key, step, timestamp and value), artifact files missing or of another
size, the registered model version, the champion decision, the end status. Replaying an entry twice, or again
after an interruption, therefore sends nothing twice; the entry is removed only once everything is there.
"""
from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.tracking.spool import (
    GROUP_REF,
    REF_TAGS,
    SPOOL_REF,
    SpoolEntry,
    pending_entries,
    references,
    synced_run_id,
)

_PARAM_BATCH = 100
_METRIC_BATCH = 1000


@dataclass
class SyncReport:
    synced: list[tuple[str, str]] = field(default_factory=list)  # (entry id, server run id)
    running: list[str] = field(default_factory=list)  # entries still written by a live process
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (entry id, the spooled run it refers to)
    other_stores: list[tuple[str, str]] = field(default_factory=list)  # (entry id, its tracking uri)
    messages: list[str] = field(default_factory=list)  # what the registry did


def sync_pending(client: Any, uri: str, root: Path, experiment_id: Callable[[str], str],
                 group_run: Callable[[str, str, str], str]) -> SyncReport:
    """Replay every unlocked entry under ``root`` that was spooled for ``uri``, oldest first.

    ``experiment_id(name)`` gets or creates an experiment; ``group_run(experiment_id, key, name)`` finds or
    creates a group's parent run (both from :mod:`pipeline.tracking`, as a live run uses them)."""
    report = SyncReport()
    progress = True
    while progress:  # an entry waiting for another spooled run is tried again once that one is synced
        progress = False
        for entry in pending_entries(root):
            if entry.id in {e for e, _ in report.synced}:
                continue
            header = entry.header()
            if header is None:
                continue
            if header["uri"] != uri:
                if (entry.id, header["uri"]) not in report.other_stores:
                    report.other_stores.append((entry.id, header["uri"]))
                continue
            if not entry.lock():
                if entry.id not in report.running:
                    report.running.append(entry.id)
                continue
            try:
                if not (entry.path / "journal.jsonl").is_file():  # synced by another process meanwhile
                    continue
                records = entry.records()
                missing = sorted(r for r in references(records)
                                 if r != entry.ref and synced_run_id(root, r[len(SPOOL_REF):]) is None)
                if missing:
                    if (entry.id, missing[0]) not in report.waiting:
                        report.waiting.append((entry.id, missing[0]))
                    continue
                run_id = replay(client, entry, records, root, experiment_id, group_run, report.messages)
                entry_id = entry.id
                entry.mark_synced(run_id)
                report.synced.append((entry_id, run_id))
                report.waiting = [(e, r) for e, r in report.waiting if e != entry_id]
                progress = True
            finally:
                entry.release()
    return report


def describe(report: SyncReport, uri: str) -> list[str]:
    """What a sync did, for people."""
    lines = [f"synced spooled run {entry} -> run {run_id}" for entry, run_id in report.synced]
    lines += report.messages
    lines += [f"not synced: {entry} is still being written by a running stage" for entry in report.running]
    lines += [f"not synced: {entry} refers to the spooled run {ref}, not synced yet" for entry, ref in report.waiting]
    lines += [f"not synced: {entry} was spooled for another tracking store, {other}"
              for entry, other in report.other_stores]
    return lines + [f"{len(report.synced)} spooled run(s) synced to {uri}"]


def replay(client: Any, entry: SpoolEntry, records: list[dict[str, Any]], root: Path,
           experiment_id: Callable[[str], str], group_run: Callable[[str, str, str], str],
           messages: list[str]) -> str:
    """Send what the server lacks of one entry's run; its server run id."""
    from mlflow.entities import Metric, Param, RunTag

    from pipeline.tracking import registry

    header = records[0]
    exp_id = experiment_id(header["experiment"])
    parent = header.get("parent")
    group_id: list[str] = []

    def group() -> str:
        if not group_id:
            group_id.append(group_run(exp_id, parent[0], parent[1]))
        return group_id[0]

    run_id = _server_run(client, entry, records, exp_id)

    def resolve(ref: str | None) -> str:
        if ref is None or ref == entry.ref:
            return run_id
        if ref.startswith(SPOOL_REF):
            return synced_run_id(root, ref[len(SPOOL_REF):])
        if ref.startswith(GROUP_REF):
            return group()
        return ref

    params: dict[str, str] = {}
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    points: dict[str, set[tuple]] = defaultdict(set)
    artifacts: dict[str, list[list[Any]]] = defaultdict(list)
    ends: dict[str, tuple[str, int | None]] = {}
    inputs: list[dict[str, str]] = []
    for record in records:
        op, target = record["op"], resolve(record.get("run"))
        if op == "params":
            params.update(record["params"])
        elif op == "tags":
            tags[target].update({k: resolve(v) if k in REF_TAGS else v for k, v in record["tags"].items()})
        elif op == "metrics":
            points[target] |= {_identity(*point) for point in record["points"]}
        elif op == "artifact":
            artifacts[target] += record["files"]
        elif op == "end":
            ends[target] = (record["status"], record.get("end_time"))
        elif op == "inputs":
            inputs += record["datasets"]

    if parent:  # the group's parent run, also for a run killed before it journaled its tags
        tags[run_id].setdefault("mlflow.parentRunId", group())
    have = client.get_run(run_id).data.params
    todo = [Param(k, v) for k, v in params.items() if k not in have]
    for start in range(0, len(todo), _PARAM_BATCH):
        client.log_batch(run_id, params=todo[start : start + _PARAM_BATCH])
    if inputs:  # the dataset inputs the server lacks (it also ignores an input it has)
        from pipeline.tracking.datasets import dataset_inputs

        run = client.get_run(run_id)
        have_inputs = {(i.dataset.name, i.dataset.digest) for i in (run.inputs.dataset_inputs if run.inputs else [])}
        todo_inputs = [d for d in inputs if (d["name"], d["digest"]) not in have_inputs]
        if todo_inputs:
            client.log_inputs(run_id, datasets=dataset_inputs(todo_inputs))
    for target, wanted in tags.items():
        have = client.get_run(target).data.tags
        todo = [RunTag(k, v) for k, v in wanted.items() if have.get(k) != v]
        if todo:
            client.log_batch(target, tags=todo)
    for target, wanted in points.items():
        by_key: dict[str, list[tuple]] = defaultdict(list)
        for point in wanted:
            by_key[point[0]].append(point)
        todo = []
        for key, key_points in sorted(by_key.items()):
            have = {_identity(m.key, m.value, m.timestamp, m.step) for m in client.get_metric_history(target, key)}
            todo += [Metric(*point) for point in sorted(key_points, key=lambda p: (p[3], p[2]))
                     if _identity(*point) not in have]
        for start in range(0, len(todo), _METRIC_BATCH):
            client.log_batch(target, metrics=todo[start : start + _METRIC_BATCH])
    for target, files in artifacts.items():
        have = _artifact_sizes(client, target)
        for artifact_file, local, size in files:
            if have.get(artifact_file) != size:
                folder = artifact_file.rpartition("/")[0] or None
                client.log_artifact(target, str(entry.path / local), folder)
    for record in records:
        if record["op"] == "model":
            version = registry.register_model(client, run_id, entry.path / record["checkpoint"], record["tags"])
            messages.append(f"registered model: {registry.MODEL_NAME} v{version.version} from run {run_id}")
        elif record["op"] == "evaluated":
            messages.append(registry.record_evaluation(client, resolve(record["model_run"]), record["metrics"],
                                                       record.get("gt_md5")))
    ends.setdefault(run_id, ("KILLED", None))  # the process died before it ended the run
    for target, (status, end_time) in ends.items():
        client.set_terminated(target, status, end_time)
    return run_id


def _server_run(client: Any, entry: SpoolEntry, records: list[dict[str, Any]], exp_id: str) -> str:
    """The entry's run on the server: the one created before the outage, the one an interrupted sync
    created (tagged ``spool_id``), or a new one."""
    from mlflow.exceptions import MlflowException

    created = [r["run_id"] for r in records if r["op"] == "created"]
    if created:
        try:
            return client.get_run(created[-1]).info.run_id
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"WARNING: run {created[-1]} of spool entry {entry.id} is not on the server (a new store?): "
                  "recreating it from the spool", file=sys.stderr)
    found = client.search_runs([exp_id], filter_string=f"tags.spool_id = '{entry.id}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        header = records[0]
        run_id = client.create_run(exp_id, start_time=header["start_time"], run_name=header["run_name"],
                                   tags={"spool_id": entry.id}).info.run_id
    entry.append({"op": "created", "run_id": run_id})
    return run_id


def _identity(key: str, value: float, timestamp: int, step: int) -> tuple:
    """A metric point ``(key, value, timestamp, step)`` as the server stores it (infinities as the largest
    finite floats), with NaN as ``math.nan`` itself so that equal points compare equal."""
    value = float(value)
    if math.isnan(value):
        value = math.nan
    elif math.isinf(value):
        value = math.copysign(sys.float_info.max, value)
    return key, value, int(timestamp), int(step)


def _artifact_sizes(client: Any, run_id: str) -> dict[str, int]:
    """Every artifact file of a run with its size."""
    sizes, folders = {}, [None]
    while folders:
        for info in client.list_artifacts(run_id, folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                sizes[info.path] = info.file_size
    return sizes

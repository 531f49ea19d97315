"""The spool of runs the store did not get, and its exactly-once sync (pipeline.tracking.spool, pipeline.tracking.sync).

Runs spooled from their start refer to each other by ``spool:<id>`` (an evaluation logs into its model's
training run, which has no server id yet); a sync creates them in order, maps the references, registers
the model and decides the champion. A real server going away is tested in test_mlflow_server.py.
"""
import json
import math
import sys

import pytest

from pipeline.tracking.spool import SpoolEntry, pending_entries
from pipeline.tracking.sync import _identity
from pipeline.tracking.run import Run
from pipeline.tracking.store import _sync_quietly, sync_spool


def spooled_run(root, uri, name, parent=None) -> Run:
    """A run whose store was unreachable from its start, as ``start_run`` makes it."""
    header = {"uri": uri, "experiment": "spool-test", "run_name": name, "parent": parent, "start_time": 1000}
    entry = SpoolEntry.create(root, header)
    return Run(None, uri, False, entry, root, parent_run_id=f"group:{parent[0]}" if parent else None,
               offline_reason="store unreachable")


def test_runs_spooled_from_the_start_sync_with_their_links_model_and_champion(tmp_path, untrained_model, capsys):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.registry import model_version

    uri = f"sqlite:///{tmp_path}/store.db"
    root = tmp_path / "repo"
    root.mkdir()
    (root / "log.csv").write_text("iteration,loss\n1,2.5\n")

    train = spooled_run(root, uri, "train")
    train.set_tags({"dvc_stage": "train"})
    train.log_params({"loss.pos_iou": 0.5})
    data = {"name": "prepared/train", "digest": "0123456789abcdef0123456789abcdef.dir", "source": "data/prepared",
            "context": "train"}
    train.log_inputs([data])
    for step in (1, 2, 3):
        train.log_metrics({"train/loss": 3.0 - step, "train/odd": math.nan if step == 2 else math.inf}, step=step)
    train.log_artifact(root / "log.csv", "train")
    train.log_model(untrained_model)
    train.end("FINISHED")
    assert train.run_id is None and train.ref.startswith("spool:")

    evaluate = spooled_run(root, uri, "evaluate")
    evaluate.set_tags({"dvc_stage": "evaluate", "mlflow.parentRunId": train.ref})
    evaluate.log_metrics({"segm_AP": 0.25})
    evaluate.log_to(train.ref, {"test_segm_AP": 0.25, "test_bbox_AP": 0.5}, [(str(root / "log.csv"), "eval")])
    assert "decided when the spooled run is synced" in evaluate.model_evaluated(
        train.ref, {"test_segm_AP": 0.25, "test_bbox_AP": 0.5}, "a" * 32)
    evaluate.end("FINISHED")

    killed = spooled_run(root, uri, "ablate", parent=("grid-1", "ablation"))
    killed.log_metrics({"val_segm_AP": 0.1}, step=5)
    killed._entry.release()  # its process died: no end record, the lock is free

    running = spooled_run(root, uri, "still running")  # holds its lock: never synced under it
    err = capsys.readouterr().err
    assert err.count("spooled to") == 2  # the two ended runs said where they wait

    report = sync_spool(uri, root)
    assert len(report.synced) == 3 and report.running == [running._entry.id] and not report.waiting
    ids = dict(report.synced)
    client = MlflowClient(tracking_uri=uri)
    train_run = client.get_run(ids[train._entry.id])
    eval_run = client.get_run(ids[evaluate._entry.id])
    killed_run = client.get_run(ids[killed._entry.id])
    assert train_run.info.status == "FINISHED" and train_run.info.run_name == "train"
    assert train_run.data.params == {"loss.pos_iou": "0.5"}
    experiment = client.get_experiment(train_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (logged,) = train_run.inputs.dataset_inputs  # the dataset input, sent by the sync
    assert (logged.dataset.name, logged.dataset.digest) == (data["name"], data["digest"])
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "train"
    assert [(m.step, m.value) for m in client.get_metric_history(train_run.info.run_id, "train/loss")] == [
        (1, 2.0), (2, 1.0), (3, 0.0)]
    odd = sorted((m.step, m.value) for m in client.get_metric_history(train_run.info.run_id, "train/odd"))
    assert [s for s, _ in odd] == [1, 2, 3] and math.isnan(odd[1][1])
    assert train_run.data.metrics["test_segm_AP"] == 0.25  # logged into it by the evaluation
    artifacts = {f.path for folder in ("train", "eval") for f in client.list_artifacts(train_run.info.run_id, folder)}
    assert artifacts == {"train/log.csv", "eval/log.csv"}
    assert eval_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    version = model_version(client, train_run.info.run_id)  # registered at sync time
    assert float(version.tags["test_segm_AP"]) == 0.25 and version.tags["test_gt_md5"] == "a" * 32
    card = client.get_model_version("yolact", version.version).description  # the model card
    assert data["digest"] in card and "| mask AP | 0.2500 |" in card and f'"models:/yolact/{version.version}"' in card
    assert "models:/yolact@champion" in client.get_registered_model("yolact").description
    assert client.get_model_version_by_alias("yolact", "champion").version == version.version
    assert killed_run.info.status == "KILLED"
    group = client.get_run(killed_run.data.tags["mlflow.parentRunId"])
    assert group.data.tags["group_key"] == "grid-1" and group.info.run_name == "ablation"

    def counts():
        return ({k: len(client.get_metric_history(train_run.info.run_id, k)) for k in ("train/loss", "train/odd",
                                                                                        "test_segm_AP")},
                len(client.search_runs([train_run.info.experiment_id])),
                len(client.search_model_versions("name = 'yolact'")))

    before = counts()
    assert before == ({"train/loss": 3, "train/odd": 3, "test_segm_AP": 1}, 4, 1)
    again = sync_spool(uri, root)
    assert not again.synced and counts() == before
    assert [e.id for e in pending_entries(root)] == [running._entry.id]
    running.end("FINISHED")  # unreachable to the end: stays spooled, then the next stage start syncs it
    capsys.readouterr()
    _sync_quietly(client, uri, root)
    assert capsys.readouterr().err == f"MLflow: synced 1 spooled run(s) to {uri}\n"
    assert not pending_entries(root)


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_on_its_own_line(tmp_path):
    entry = SpoolEntry.create(tmp_path, {"uri": "x", "start_time": 1})
    entry.append({"op": "params", "params": {"a": "1"}})
    entry.release()
    with open(entry.path / "journal.jsonl", "a") as journal:
        journal.write('{"op": "metr')  # a writer killed mid-line
    again = SpoolEntry(entry.path)
    assert again.lock()
    assert [r["op"] for r in again.records()] == ["start", "params"]
    again.append({"op": "end", "status": "KILLED"})
    assert [r["op"] for r in again.records()] == ["start", "params", "end"]
    again.release()


def test_a_locked_entry_cannot_be_taken_by_another_writer(tmp_path):
    entry = SpoolEntry.create(tmp_path, {"uri": "x", "start_time": 1})
    assert not SpoolEntry(entry.path).lock()
    entry.release()
    other = SpoolEntry(entry.path)
    assert other.lock()
    other.release()


def test_metric_points_compare_as_the_store_keeps_them():
    assert _identity("k", float("nan"), 1, 2) == _identity("k", math.nan, 1, 2)
    assert len({_identity("k", float("nan"), 1, 2), _identity("k", float("nan"), 1, 2)}) == 1
    assert _identity("k", math.inf, 1, 2) == ("k", sys.float_info.max, 1, 2)  # SQL stores clamp infinities
    assert _identity("k", 0.1, 1, 2) != _identity("k", 0.1, 2, 2)


def test_journal_records_are_json_lines(tmp_path):
    entry = SpoolEntry.create(tmp_path, {"uri": "x", "start_time": 1})
    entry.append({"op": "metrics", "run": None, "points": [["a", 1.5, 10, 1]]})
    entry.release()
    lines = (entry.path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["start", "metrics"]
    with pytest.raises(FileNotFoundError):
        (tmp_path / ".mlflow-spool" / f".{entry.id}.tmp").stat()  # built under a hidden name, then renamed


def test_system_metrics_go_through_the_run_into_its_journal(tmp_path, monkeypatch):
    """MLflow's monitor, writing into the stage's run: spooled with its other metrics, stopped when it ends."""
    import time

    from pipeline.tracking import system_metrics

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    run = spooled_run(tmp_path, f"sqlite:///{tmp_path}/store.db", "train")
    run.monitor_system()
    deadline = time.time() + 30
    while time.time() < deadline and not any(p[0].startswith("system/") for p in run._metrics):
        time.sleep(0.05)
    run.end("FINISHED")
    points = [p for r in run._entry.records() if r["op"] == "metrics" for p in r["points"]]
    assert "system/cpu_utilization_percentage" in {p[0] for p in points}
    assert run._monitor is None
    assert system_metrics.wanted("train") and system_metrics.wanted("ablate") and not system_metrics.wanted("prepare")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    assert not system_metrics.wanted("train")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    assert system_metrics.wanted("prepare")

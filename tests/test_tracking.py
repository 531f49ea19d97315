"""MLflow tracking: one run per stage with params, metric history, metrics, tags and artifacts."""
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.tracking import main_repo_root, resolve_tracking_uri
from tests.conftest import PYTHON, stage_env
from tests.tiny import run_stage


def test_relative_sqlite_uri_is_resolved_against_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == "http://127.0.0.1:5000"


def test_queued_experiments_log_to_the_users_repository():
    assert main_repo_root(Path("/home/u/proj/.dvc/tmp/exps/tmpab12cd")) == Path("/home/u/proj")
    assert main_repo_root(Path("/home/u/proj")) == Path("/home/u/proj")


@pytest.fixture
def project(tiny_project, tmp_path) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(tiny_project, dest, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    return dest


def test_train_and_evaluate_log_one_run_per_model(project):
    from mlflow.tracking import MlflowClient

    run_stage(project, "train")
    run_stage(project, "evaluate")
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("yolact")
    runs = {r.data.tags["dvc_stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train", "evaluate"}
    train_run, eval_run = runs["train"], runs["evaluate"]
    assert train_run.info.status == "FINISHED"
    assert train_run.data.params["loss.pos_iou"] == "0.5"
    assert train_run.data.params["model.backbone.depth"] == "18"
    history = client.get_metric_history(train_run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
    assert len(client.get_metric_history(train_run.info.run_id, "train/lr")) == 12
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for run, prefix in ((train_run, "test_"), (eval_run, "")):
        assert run.data.metrics[f"{prefix}segm_AP"] == pytest.approx(metrics["segm"]["AP"])
        assert run.data.metrics[f"{prefix}bbox_AP50"] == pytest.approx(metrics["bbox"]["AP50"])
    assert len(client.get_metric_history(train_run.info.run_id, "val_segm_AP")) == 2  # eval_every 6 of 12
    tags = train_run.data.tags
    for tag in ("git_commit", "git_dirty", "data_fingerprint", "torch_version", "device"):
        assert tags.get(tag), tag
    assert eval_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    artifacts = {f.path for f in client.list_artifacts(train_run.info.run_id)}
    assert {"model", "train", "data", "eval"} <= artifacts
    assert [f.path for f in client.list_artifacts(train_run.info.run_id, "model")] == ["model/model.pt"]
    assert "eval/examples.png" in {f.path for f in client.list_artifacts(train_run.info.run_id, "eval")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_real_mlflow_server_receives_the_run(project, tmp_path):
    port = _free_port()
    mlflow = Path(PYTHON).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        run_stage(project, "prepare", env=stage_env(MLFLOW_TRACKING_URI=base))
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=yolact") as r:
            experiment = json.loads(r.read())["experiment"]
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 1
        data = runs[0]["data"]
        tags = {t["key"]: t["value"] for t in data["tags"]}
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert tags["dvc_stage"] == "prepare" and runs[0]["info"]["status"] == "FINISHED"
        assert params["data.source"] == "synthetic"
        assert metrics["data.train.images"] == 16
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_unreachable_store_warns_and_still_writes_outputs(project):
    shutil.rmtree(project / "reports/data")
    proc = run_stage(project, "prepare", env=stage_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9"))
    assert "MLflow run NOT logged" in proc.stderr
    assert (project / "reports/data/summary.json").is_file()


def test_required_tracking_fails_fast_with_a_clear_message(project):
    shutil.rmtree(project / "reports/data")
    proc = run_stage(project, "prepare", "--set", "mlflow.required=true",
                     env=stage_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9"), check=False)
    assert proc.returncode == 1
    assert "error: mlflow: tracking store http://127.0.0.1:9 unreachable" in proc.stderr
    assert "mlflow.required is true" in proc.stderr
    assert not (project / "reports/data").exists()

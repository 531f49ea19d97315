"""MLflow tracking: one run per stage with params, metric history, metrics, tags and artifacts."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipeline.tracking.registry import GT_TAG
from pipeline.tracking.store import main_repo_root, resolve_tracking_uri
from tests.conftest import stage_env
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


@pytest.fixture(scope="module")
def evaluated(tiny_project, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the tiny project after its train and evaluate stages (SQLite store); the evaluate output."""
    project = tmp_path_factory.mktemp("evaluated") / "project"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    run_stage(project, "train")
    return project, run_stage(project, "evaluate").stdout


def test_train_and_evaluate_log_one_run_per_model(evaluated):
    from mlflow.tracking import MlflowClient

    project, _ = evaluated
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
    assert eval_run.data.tags["ground_truth_md5"] == gt_md5(project)
    artifacts = {f.path for f in client.list_artifacts(train_run.info.run_id)}
    assert {"train", "data", "eval"} <= artifacts
    assert "eval/examples.png" in {f.path for f in client.list_artifacts(train_run.info.run_id, "eval")}
    (output,) = train_run.outputs.model_outputs  # the model, in MLflow's format ("Logged models")
    model = client.get_logged_model(output.model_id)
    assert str(model.status) == "READY" and model.source_run_id == train_run.info.run_id
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "artifacts", "code", "requirements.txt", "input_example.json"} <= files
    assert not [p for p in (project / ".mlflow-spool").iterdir() if p.name != "synced"]


def test_the_logged_model_carries_the_whole_pipeline_package_as_code(evaluated):
    """The pyfunc model imports from across ``pipeline`` (deploy, models, data, config): all of it ships."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    project, _ = evaluated
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    train_run = client.get_run(torch_payload(project / "models/model.pt")["mlflow_run_id"])
    logged = client.get_logged_model(train_run.outputs.model_outputs[0].model_id)
    code = Path(urlparse(logged.artifact_location).path) / "code" / "pipeline"
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    source = {p.relative_to(project / "pipeline").as_posix() for p in (project / "pipeline").rglob("*.py")}
    assert shipped == source
    assert {"__init__.py", "deploy/pyfunc_model.py", "deploy/predict.py", "models/loading.py"} <= shipped


def test_the_trained_model_is_registered_and_the_first_evaluated_version_is_champion(evaluated):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.registry import model_version

    project, stdout = evaluated
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    metrics = json.loads((project / "reports/metrics.json").read_text())
    train_run = client.get_run(torch_payload(project / "models/model.pt")["mlflow_run_id"])
    version = model_version(client, train_run.info.run_id)
    logged = client.get_logged_model(train_run.outputs.model_outputs[0].model_id)
    assert version.name == "yolact" and version.run_id == train_run.info.run_id
    assert version.source == logged.artifact_location
    assert float(version.tags["test_segm_AP"]) == pytest.approx(metrics["segm"]["AP"])
    assert float(version.tags["test_bbox_AP"]) == pytest.approx(metrics["bbox"]["AP"])
    assert version.tags[GT_TAG] == gt_md5(project)  # the ground truth the champion is compared on
    assert "dvc_exp" not in version.tags  # not a DVC experiment
    assert client.get_model_version_by_alias("yolact", "champion").version == version.version
    ap = metrics["segm"]["AP"]
    assert f"yolact v{version.version} (segm AP {ap:.4f}) is the new champion, was no champion" in stdout


def gt_md5(project: Path) -> str:
    return hashlib.md5((project / "data/prepared/gt_test.json").read_bytes()).hexdigest()


def torch_payload(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_champion_loads_offline_as_a_pyfunc_model_and_predicts(evaluated, monkeypatch):
    import mlflow
    import numpy as np
    import pandas as pd
    from pycocotools import mask as mask_util

    project, _ = evaluated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/yolact@champion")
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, -1, 3)
    image = np.random.default_rng(3).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    detections = model.predict(image)
    assert isinstance(detections, pd.DataFrame) and len(detections) > 0  # an untrained-ish model finds plenty
    assert list(detections.columns) == ["x1", "y1", "x2", "y2", "score", "label", "class_name", "category_id", "mask"]
    assert detections["score"].is_monotonic_decreasing
    assert (detections["x2"] <= 70).all() and (detections["y2"] <= 45).all()
    decoded = mask_util.decode({"size": [45, 70], "counts": detections["mask"][0].encode()})
    assert decoded.shape == (45, 70)


def test_the_champion_predicts_on_a_real_coco_image(evaluated, coco_tiny, monkeypatch):
    import mlflow
    import numpy as np
    from PIL import Image

    project, _ = evaluated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    path = sorted((coco_tiny / "val2017").glob("*.jpg"))[0]
    with Image.open(path) as opened:
        image = np.asarray(opened.convert("RGB"))
    detections = mlflow.pyfunc.load_model("models:/yolact@champion").predict(image)
    height, width = image.shape[:2]
    assert len(detections) > 0 and (detections["x2"] <= width).all() and (detections["y2"] <= height).all()


def test_the_champion_moves_only_to_a_version_with_a_higher_test_mask_ap(evaluated, tmp_path):
    """The alias logic of the evaluate stage (pipeline.tracking.registry.record_evaluation) for a second train run's
    model: a lower test mask AP leaves the champion, a higher one takes it."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.registry import model_version, record_evaluation, register_model

    project, _ = evaluated
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    champion = client.get_model_version_by_alias("yolact", "champion")
    champion_ap = float(champion.tags["test_segm_AP"])
    second = client.create_run(client.get_experiment_by_name("yolact").experiment_id, run_name="train").info.run_id
    version = register_model(client, second, project / "models/model.pt", {})
    assert register_model(client, second, project / "models/model.pt", {}).version == version.version  # once
    gt = champion.tags[GT_TAG]
    lower = record_evaluation(client, second, {"test_bbox_AP": 0.1, "test_segm_AP": champion_ap - 0.01}, gt)
    assert "does not beat" in lower and "champion unchanged" in lower
    assert client.get_model_version_by_alias("yolact", "champion").version == champion.version
    assert float(model_version(client, second).tags["test_segm_AP"]) == pytest.approx(champion_ap - 0.01)
    higher = record_evaluation(client, second, {"test_bbox_AP": 0.1, "test_segm_AP": champion_ap + 0.01}, gt)
    assert f"is the new champion, was v{champion.version}" in higher
    assert client.get_model_version_by_alias("yolact", "champion").version == version.version


def test_unreachable_store_spools_the_run_and_still_writes_outputs(project):
    shutil.rmtree(project / "reports/data")
    unreachable = stage_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    proc = run_stage(project, "prepare", env=unreachable)
    (entry,) = [p for p in (project / ".mlflow-spool").iterdir() if p.name != "synced"]
    assert "MLflow run not logged to http://127.0.0.1:9" in proc.stderr
    assert f"spooled to {entry}" in proc.stderr and "python -m stages.sync" in proc.stderr
    assert (project / "reports/data/summary.json").is_file()
    records = [json.loads(line) for line in (entry / "journal.jsonl").read_text().splitlines()]
    assert records[0]["op"] == "start" and records[0]["uri"] == "http://127.0.0.1:9"
    assert records[-1]["op"] == "end" and records[-1]["status"] == "FINISHED"
    assert any(r["op"] == "params" and r["params"]["data.source"] == "synthetic" for r in records)
    assert any(r["op"] == "artifact" and any(f[0] == "data/summary.json" for f in r["files"]) for r in records)
    sync = run_stage(project, "sync", env=unreachable, check=False)
    assert sync.returncode == 1 and sync.stderr.startswith("error: mlflow: syncing ")
    assert entry.is_dir()  # still spooled


def test_required_tracking_fails_fast_with_a_clear_message(project):
    shutil.rmtree(project / "reports/data")
    proc = run_stage(project, "prepare", "--set", "mlflow.required=true",
                     env=stage_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9"), check=False)
    assert proc.returncode == 1
    assert "error: mlflow: tracking store http://127.0.0.1:9 unreachable" in proc.stderr
    assert "mlflow.required is true" in proc.stderr
    assert not (project / "reports/data").exists()
    assert not [p for p in (project / ".mlflow-spool").glob("*") if p.name != "synced"]  # failed fast, no spool


def test_experiments_made_on_the_fluent_api_get_the_training_kind_too(monkeypatch, tmp_path):
    """The benchmarks' experiments (mlflow.set_experiment), new or made before the kind existed."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, set_experiment

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)  # restored after the test
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    client = MlflowClient(uri)
    old = client.create_experiment("old")
    for name in ("new", "old"):
        set_experiment(name)
    assert {client.get_experiment_by_name(n).tags[EXPERIMENT_KIND_TAG] for n in ("new", "old")} == {EXPERIMENT_KIND}
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_stage_fixes_the_kind_of_an_experiment_made_before_it_and_keeps_one_set_by_hand(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, _open_experiment

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    old = client.create_experiment("yolact")
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert _open_experiment(uri, "yolact", tmp_path, client)[1] == old
    _open_experiment(uri, "mine", tmp_path, client)
    _, new = _open_experiment(uri, "yolact-ablation", tmp_path, client)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_dataset_inputs_are_the_roles_a_stage_reads_with_dvcs_digest(tmp_path, monkeypatch):
    from pipeline.tracking.datasets import data_inputs
    from pipeline.tracking.provenance import code_digest, directory_digest, source_tags

    lock = {"stages/ablate.py": "a" * 32, "pipeline/config/schema.py": "b" * 32, "data/prepared": "c" * 32 + ".dir",
            "models/pretrain": "d" * 32 + ".dir", "weights": "e" * 32 + ".dir"}
    specs = data_inputs("ablate", lock, tmp_path)
    assert [(s["name"], s["digest"], s["context"]) for s in specs] == [
        (f"prepared/{role}", lock["data/prepared"], role) for role in ("train", "val", "test")]
    raw = data_inputs("prepare", {"stages/prepare.py": "a" * 32, "data/synthetic/train": "f" * 32 + ".dir"}, tmp_path)
    assert raw == [{"name": "data/synthetic/train", "digest": "f" * 32 + ".dir", "source": "data/synthetic/train",
                    "context": "raw"}]
    (tmp_path / "data/prepared").mkdir(parents=True)  # outside DVC: the digest DVC would compute
    (tmp_path / "data/prepared/train.json").write_text("{}")
    (digest,) = {s["digest"] for s in data_inputs("evaluate", {}, tmp_path, ("val",))}
    assert digest == directory_digest(tmp_path / "data/prepared") and digest.endswith(".dir")
    assert data_inputs("generate", {}, tmp_path) == []
    assert code_digest(lock) == code_digest({k: lock[k] for k in ("stages/ablate.py", "pipeline/config/schema.py")})
    monkeypatch.setenv("DVC_STAGE", "train")
    assert source_tags("train", "abc") == {"mlflow.source.name": "stages.train", "mlflow.source.type": "JOB",
                                           "mlflow.source.git.commit": "abc"}
    monkeypatch.delenv("DVC_STAGE")
    assert source_tags("train", "unknown") == {"mlflow.source.name": "stages.train", "mlflow.source.type": "LOCAL"}

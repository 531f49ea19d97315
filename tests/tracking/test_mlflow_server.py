"""A real MLflow tracking server (``make mlflow-server``: a database store and proxied artifacts) on a free
127.0.0.1 port: stage runs reach it, parallel queued experiments log every run exactly once, and a run
whose server goes away mid-run is spooled and synced exactly once, equal to a run that saw no outage."""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, REPO, free_port, stage_env
from tests.tiny import make_project, run_stage

DVC = str(Path(PYTHON).parent / "dvc")
SMALL_TRAIN = {"train": {"iterations": 6, "warmup_iterations": 1, "checkpoint_every": 6, "eval_every": 3}}


class Server:
    """``make mlflow-server`` in its own process group, restartable on the same stores."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.root = root
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # -o: never (re)install the venv from a test; MLFLOW: the mlflow of the interpreter running the tests
        self.proc = subprocess.Popen(
            ["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", "mlflow-server", f"MLFLOW_PORT={self.port}",
             f"MLFLOW_DIR={self.root}", "MLFLOW_WORKERS=1", f"MLFLOW={Path(PYTHON).parent / 'mlflow'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.3)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
        self.proc.wait(timeout=30)
        deadline = time.time() + 30
        while True:  # the workers are gone once nothing answers
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
            except OSError:
                return
            assert time.time() < deadline, "mlflow server still answers after it was killed"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def project_with(tiny_project: Path, dest: Path, experiment: str, extra: dict | None = None) -> Path:
    """A copy of the tiny project (data prepared) logging to MLflow experiment ``experiment``."""
    shutil.copytree(tiny_project, dest, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts", ".mlflow-spool"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in {**(extra or {}), "mlflow": {"experiment": experiment}}.items():
        params[section] = {**params[section], **values}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, folder):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def test_a_stage_run_reaches_the_server(server, client, tiny_project, tmp_path):
    project = project_with(tiny_project, tmp_path / "p", "reach")
    run_stage(project, "prepare", env=stage_env(MLFLOW_TRACKING_URI=server.uri))
    (run,) = client.search_runs([client.get_experiment_by_name("reach").experiment_id])
    assert run.data.tags["dvc_stage"] == "prepare" and run.info.status == "FINISHED"
    assert run.data.params["data.source"] == "synthetic"
    assert run.data.metrics["data.train.images"] == 16
    assert "data/summary.json" in artifact_paths(client, run.info.run_id)  # uploaded through the server
    assert not [p for p in (project / ".mlflow-spool").iterdir() if p.name != "synced"]


def test_what_a_user_sees_kind_source_datasets_system_metrics_and_model_card(server, client, tiny_project, tmp_path):
    """Issue 28: the experiment opens on its training runs, the run page shows its source (stage, commit), the
    datasets it read with DVC's digest, system metrics (train), and the registered version has its model card."""
    from pipeline.tracking.provenance import directory_digest
    from pipeline.tracking.registry import model_version

    project = project_with(tiny_project, tmp_path / "p", "seen", SMALL_TRAIN)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=project, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    env = stage_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2")
    run_stage(project, "train", env=env)
    run_stage(project, "evaluate", env=env)

    experiment = client.get_experiment_by_name("seen")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.data.tags["dvc_stage"]: r for r in client.search_runs([experiment.experiment_id])}
    train_run = runs["train"]
    tags = train_run.data.tags
    assert tags["mlflow.source.name"] == "stages.train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == commit
    assert not [k for k in tags if k.startswith("dvc_dep.")]
    digest = directory_digest(project / "data/prepared")  # as dvc.lock would record it
    seen = {(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in train_run.inputs.dataset_inputs}
    assert seen == {("prepared/train", digest, "train"), ("prepared/val", digest, "val")}
    (found,) = client.search_runs([experiment.experiment_id],
                                  f"datasets.digest = '{digest}' AND tags.dvc_stage = 'train'")
    assert found.info.run_id == train_run.info.run_id
    assert [i.dataset.name for i in runs["evaluate"].inputs.dataset_inputs] == ["prepared/test"]
    assert client.get_metric_history(train_run.info.run_id, "system/cpu_utilization_percentage")
    assert not [k for k in runs["evaluate"].data.metrics if k.startswith("system/")]  # a short stage: none

    version = model_version(client, train_run.info.run_id)
    card = client.get_model_version("yolact", version.version).description
    ap = train_run.data.metrics["test_segm_AP"]
    assert digest in card and f"| mask AP | {ap:.4f} |" in card and "loss.pos_iou=0.5" in card
    assert f'mlflow.pyfunc.load_model("models:/yolact/{version.version}")' in card
    assert "models:/yolact@champion" in client.get_registered_model("yolact").description


def dvc(project: Path, *args: str, env: dict) -> str:
    proc = subprocess.run([DVC, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_two_queued_experiments_log_every_run_once_to_the_server(server, client, tiny_project, tmp_path):
    """``dvc exp run --queue`` twice, then both at once (``--run-all -j 2`` starts two queue workers, as
    ``dvc queue start -j 2``, and waits for them): each train and evaluate run is on the server once."""
    from pipeline.tracking.registry import model_version

    project = make_project(tmp_path / "queue", {**SMALL_TRAIN, "mlflow": {"experiment": "queue"}}, git=True)
    local = stage_env(PATH=f"{Path(PYTHON).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    for name in ("data", "reports"):  # generate's and prepare's outputs, recorded as theirs in dvc.lock
        shutil.copytree(tiny_project / name, project / name)
    dvc(project, "commit", "-f", "generate", "prepare", env=local)
    dvc(project, "repro", "pretrain", env=local)  # shared by both experiments, as the warm start is
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "prepared"], cwd=project, check=True)
    pos_iou = {"q1": "0.5", "q2": "0.6"}
    for name, value in pos_iou.items():
        dvc(project, "exp", "run", "--queue", "-n", name, "-S", f"loss.pos_iou={value}", "evaluate", env=local)
    dvc(project, "exp", "run", "--run-all", "-j", "2", env={**local, "MLFLOW_TRACKING_URI": server.uri})

    runs = client.search_runs([client.get_experiment_by_name("queue").experiment_id])
    assert sorted((r.data.tags.get("dvc_exp"), r.data.tags["dvc_stage"]) for r in runs) == [
        ("q1", "evaluate"), ("q1", "train"), ("q2", "evaluate"), ("q2", "train")]  # none lost, none twice
    by_key = {(r.data.tags["dvc_exp"], r.data.tags["dvc_stage"]): r for r in runs}
    for name, value in pos_iou.items():
        train_run, eval_run = by_key[(name, "train")], by_key[(name, "evaluate")]
        assert train_run.info.status == eval_run.info.status == "FINISHED"
        for run in (train_run, eval_run):
            assert run.data.params["loss.pos_iou"] == value
            assert run.data.tags["git_commit"] and run.info.run_name == f"{run.data.tags['dvc_stage']} · {name}"
        steps = [m.step for m in client.get_metric_history(train_run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 7))  # every point once
        assert len(client.get_metric_history(train_run.info.run_id, "val_segm_AP")) == 2
        assert {"test_segm_AP", "test_bbox_AP"} <= set(train_run.data.metrics)
        assert eval_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
        assert "segm_AP" in eval_run.data.metrics
        assert {"train/log.csv", "train/curves.png", "data/summary.json", "eval/metrics.json"} <= artifact_paths(
            client, train_run.info.run_id)
        assert "results/segm.json.gz" in artifact_paths(client, eval_run.info.run_id)
        version = model_version(client, train_run.info.run_id)  # the model, registered once per train run
        assert version.tags["dvc_exp"] == name
        assert float(version.tags["test_segm_AP"]) == pytest.approx(train_run.data.metrics["test_segm_AP"])
        (logged,) = client.search_logged_models([train_run.info.experiment_id],
                                                filter_string=f"source_run_id = '{train_run.info.run_id}'")
        assert "MLmodel" in {f.path for f in client.list_logged_model_artifacts(logged.model_id)}
    # the alias moves only on a higher test mask AP: it ends on the best version registered so far (an earlier
    # test of this module may have registered one as good)
    ours = [model_version(client, by_key[(n, "train")].info.run_id) for n in pos_iou]
    champion = client.get_model_version_by_alias("yolact", "champion")
    assert float(champion.tags["test_segm_AP"]) >= max(float(v.tags["test_segm_AP"]) for v in ours)
    assert not [p for p in (project / ".mlflow-spool").iterdir() if p.name != "synced"]


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_a_server_outage_mid_run_is_spooled_and_synced_exactly_once(server, client, tiny_project, tmp_path):
    """The server is killed while a train stage runs (after its run, params and tags reached it); the
    stage completes, the rest waits in the spool, the restarted server gets it from ``stages.sync``.
    Compared with the same stage run without an outage: the same params, metric keys, steps and values
    (timestamps differ, and the training speed's values), all tags but ``spool_id`` (it names the run's
    spool entry; these scratch projects are no git or DVC repositories, so no ``dvc_dep`` tags), artifact
    paths and a registered model version. Exactly once: a metric batch that reached the server before the outage is
    not sent again, a second sync sends nothing, and replaying an entry whose sync was interrupted just
    before it was marked done adds no run, metric point, artifact or model version."""
    from pipeline.tracking.registry import model_version
    from pipeline.tracking.store import sync_spool

    reference = project_with(tiny_project, tmp_path / "reference", "outage", SMALL_TRAIN)
    outage = project_with(tiny_project, tmp_path / "outage", "outage", SMALL_TRAIN)
    # no system metrics: their points depend on timing, not on what was sent (test_what_a_user_sees... has them)
    env = stage_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
    spool = outage / ".mlflow-spool"
    ref_stage, stage = (subprocess.Popen([PYTHON, "-m", "stages.train"], cwd=project, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True) for project in (reference, outage))
    try:
        entry = wait_for(lambda: [p for p in spool.glob("*") if len(p.name) == 32], "the stage's spool entry")[0]
        run = wait_for(lambda: [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                                              f"tags.spool_id = '{entry.name}'") if r.data.params],
                       "the stage's run with its params on the server")[0]
        stage.send_signal(signal.SIGSTOP)  # hold the stage while its server goes away
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        _, ref_stderr = ref_stage.communicate(timeout=300)  # the reference run ends before the outage
        assert ref_stage.returncode == 0, ref_stderr[-3000:]
        (ref_run,) = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
        server.kill()
        stage.send_signal(signal.SIGCONT)
        _, stderr = stage.communicate(timeout=300)
    finally:
        for proc in (ref_stage, stage):
            if proc.poll() is None:
                proc.kill()
    assert stage.returncode == 0, stderr[-3000:]
    experiment_id = run.info.experiment_id
    assert "MLflow logging stopped" in stderr and "spooled to" in stderr
    assert (outage / "models/model.pt").is_file() and (outage / "reports/train/log.csv").is_file()
    assert [p for p in spool.iterdir() if p.name != "synced"] == [entry]

    server.start()
    run_id = run.info.run_id
    records = [json.loads(line) for line in (entry / "journal.jsonl").read_text().splitlines()]
    assert {"op": "created", "run_id": run_id} in records
    assert client.get_run(run_id).info.status == "RUNNING" and not client.get_run(run_id).data.metrics
    from mlflow.entities import Metric

    first = next(r["points"] for r in records if r["op"] == "metrics")
    client.log_batch(run_id, metrics=[Metric(*p) for p in first])  # a batch that got through before the outage
    interrupted = tmp_path / "interrupted-entry"
    shutil.copytree(entry, interrupted)

    sync = run_stage(outage, "sync", env=env)
    assert f"-> run {run_id}" in sync.stdout and "1 spooled run(s) synced" in sync.stdout
    assert not entry.exists() and (outage / ".mlflow-spool/synced" / entry.name).read_text() == run_id

    synced, expected = client.get_run(run_id), client.get_run(ref_run.info.run_id)
    assert synced.info.status == "FINISHED"
    assert synced.data.params == expected.data.params
    got, want = histories(client, synced), histories(client, expected)
    assert set(got) == set(want) and "train/loss" in got and "val_segm_AP" in got
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        if key not in ("train/images_per_s", "train/seconds"):  # timings: they differ between any two runs
            assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6, nan_ok=True), key
    run_specific = {"spool_id"}
    assert ({k: v for k, v in synced.data.tags.items() if k not in run_specific}
            == {k: v for k, v in expected.data.tags.items() if k not in run_specific})
    assert artifact_paths(client, run_id) == artifact_paths(client, ref_run.info.run_id)
    version = model_version(client, run_id)  # registered at sync time
    assert version is not None and version.run_id == run_id

    def state():
        runs = client.search_runs([experiment_id])
        return (sorted(r.info.run_id for r in runs),
                {k: len(client.get_metric_history(run_id, k)) for k in synced.data.metrics},
                artifact_paths(client, run_id),
                sorted(v.version for v in client.search_model_versions(f"run_id = '{run_id}'")))

    before = state()
    assert sum(before[1].values()) == sum(len(v) for v in want.values())
    assert not sync_spool(server.uri, outage).synced  # again: nothing left to send
    shutil.copytree(interrupted, entry)  # as if the first sync had died just before marking it done
    assert [e for e, _ in sync_spool(server.uri, outage).synced] == [entry.name]
    assert state() == before

"""The DVC pipeline end to end in a scratch git repository with tiny params."""
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import PYTHON, stage_env
from tests.tiny import WARM, make_project

DVC = str(Path(PYTHON).parent / "dvc")


def dvc(project: Path, *args: str) -> str:
    env = stage_env(PATH=f"{Path(PYTHON).parent}:{stage_env()['PATH']}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run([DVC, *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("dvc") / "project", WARM, git=True)
    output = dvc(project, "repro")
    return project, output


def test_dvc_repro_runs_every_stage_and_writes_the_reports(repro):
    project, output = repro
    assert sorted(ran_stages(output)) == sorted([
        "generate", "prepare", "pretrain", "train", "evaluate", "anchors", "ablate@thresholds0-base-0", "ablate@thresholds1-base-0",
        "report",
    ])
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0 <= v <= 1 for v in metrics[iou_type].values())  # null: no GT of that size
        lo, hi = metrics["intervals"][iou_type]["AP"]
        assert lo <= hi
    assert metrics["split"] == "test" and metrics["num_images"] == 8
    table = pd.read_csv(project / "reports/ablation.csv")
    assert {"pos_iou", "neg_iou", "anchor_scales", "bbox_AP", "segm_AP", "mlflow_run_id", "bbox_AP_lo", "bbox_AP_hi",
            "segm_AP_lo", "segm_AP_hi", "significant", "converged", "d_segm_AP"} <= set(table.columns)
    assert len(table) == 2
    for path in ("reports/ablation.md", "reports/ablation_heatmap.png", "reports/anchors/anchor_stats.csv",
                 "reports/eval/examples.png", "reports/eval/per_class_ap.csv", "reports/eval/pr/segm_iou50.csv",
                 "reports/eval/tide.png", "reports/eval_results/segm.json.gz", "reports/train/log.csv",
                 "reports/train/curves.png", "reports/data/summary.json", "reports/anchors/box_sizes.png"):
        assert (project / path).is_file(), path
    assert ran_stages(dvc(project, "repro")) == []  # everything cached


def test_changing_one_grid_value_reruns_exactly_one_ablation_cell(repro):
    project, _ = repro
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ablation"]["thresholds"][1] = [0.7, 0.5]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = ran_stages(dvc(project, "repro"))
    assert [s for s in ran if s.startswith("ablate@")] == ["ablate@thresholds1-base-0"]
    assert not {"prepare", "train", "evaluate"} & set(ran)
    table = pd.read_csv(project / "reports/ablation.csv")
    assert sorted(table["pos_iou"]) == [0.5, 0.7]


def test_exp_run_reruns_only_what_depends_on_the_param(repro):
    project, _ = repro
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "after repro"], cwd=project, check=True)
    before = pd.read_csv(project / "reports/ablation.csv")
    ran = ran_stages(dvc(project, "exp", "run", "-n", "pos06", "-S", "loss.pos_iou=0.6"))
    # the ablation's baseline is a named cell, not loss.*; the warm start depends on the data and the trunk only
    assert set(ran) == {"train", "evaluate"}
    after = pd.read_csv(project / "reports/ablation.csv")
    pd.testing.assert_frame_equal(before, after)
    assert after["d_segm_AP"].notna().all()
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    (exp,) = [e for e in experiments if e.get("name") == "pos06"]
    data = exp["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["loss"]["pos_iou"] == 0.6
    metrics = data["metrics"]["reports/metrics.json"]["data"]
    assert set(metrics["segm"]) >= {"AP", "AP50"}


def test_a_code_change_retrains_from_scratch(repro):
    """Changed loss code never resumes the weights the old code trained (issue: stale checkpoints)."""
    project, _ = repro
    before = torch.load(project / "models/model.pt", map_location="cpu", weights_only=True)
    loss_py = project / "pipeline/models/yolact/loss.py"
    source = loss_py.read_text()
    marker = "def yolact_loss("
    assert marker in source
    # a real change of behaviour: the total loss counts the box term twice
    loss_py.write_text(source + "\n\n_original_yolact_loss = yolact_loss\n\n\n"
                       "def yolact_loss(*args, **kwargs):\n"
                       "    losses = _original_yolact_loss(*args, **kwargs)\n"
                       "    losses['total'] = losses['total'] + losses['box']\n"
                       "    return losses\n")
    output = dvc(project, "repro", "train")
    assert "train" in ran_stages(output)
    assert "resuming from" not in output
    after = torch.load(project / "models/model.pt", map_location="cpu", weights_only=True)
    assert after["provenance"]["code"] != before["provenance"]["code"]
    assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert not list((project / "models/checkpoints").glob("*.pt"))  # a finished run leaves no checkpoint
    loss_py.write_text(source)


def _records(node):
    """Every dict in a nested JSON value."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _records(value)


def test_the_precision_recall_plot_has_its_fields(repro):
    project, _ = repro
    shown = json.loads(dvc(project, "plots", "show", "--json"))["data"]
    (plot_id,) = [key for key in shown if key.startswith("Precision-recall")]
    points = [r for r in _records(shown[plot_id]) if "recall" in r and "precision" in r]
    assert points, f"no data point with recall and precision in {plot_id}"
    assert all(0 <= float(p["recall"]) <= 1 for p in points)


def test_runs_from_a_clean_checkout_are_clean_and_carry_dvc_hashes(repro):
    from mlflow.tracking import MlflowClient

    project, _ = repro
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("yolact")
    train_runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("dvc_stage") == "train"]
    train_run = min(train_runs, key=lambda r: r.info.start_time)  # the first `dvc repro`, on the committed tree
    tags = train_run.data.tags
    assert tags["git_dirty"] == "false"  # DVC rewrote reports/ and dvc.lock: not a change of the sources
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]
    locked = {dep["path"]: dep.get("md5") for dep in lock["deps"]}
    deps = json.loads(train_run.data.params["dvc_deps"])  # DVC's hash of every dep, one param
    assert deps["pipeline/training/loop.py"] == locked["pipeline/training/loop.py"]
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.source.git.commit"] == tags["git_commit"]
    inputs = {i.dataset.name: i.dataset.digest for i in train_run.inputs.dataset_inputs}
    assert inputs == {"prepared/train": locked["data/prepared"], "prepared/val": locked["data/prepared"]}
    pattern = f'%"pipeline/training/loop.py":"{locked["pipeline/training/loop.py"]}"%'  # search by a dep's hash
    found = client.search_runs([experiment.experiment_id], f"params.dvc_deps LIKE '{pattern}'")
    assert train_run.info.run_id in {r.info.run_id for r in found}
    found = client.search_runs([experiment.experiment_id], f"datasets.digest = '{locked['data/prepared']}'")
    assert train_run.info.run_id in {r.info.run_id for r in found}
    ablation = client.get_experiment_by_name("yolact-ablation")
    runs = client.search_runs([ablation.experiment_id])
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs if r.data.tags.get("dvc_stage") == "ablate"}
    assert len(parents) == 1 and None not in parents  # every cell nested under one ablation run
    cells = pd.read_csv(project / "reports/ablation.csv")
    run_ids = {r.info.run_id for r in runs}
    assert set(" ".join(cells["mlflow_run_id"]).split()) <= run_ids

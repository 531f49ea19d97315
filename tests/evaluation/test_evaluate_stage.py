"""The evaluate stage on any model and split, its results files, and validation during training."""
import json
import shutil

import pandas as pd
import pytest
from pycocotools.cocoeval import COCOeval

from pipeline.data.layout import ground_truth_path
from pipeline.data.coco import load_coco
from pipeline.analysis.evaluation_report import read_results
from tests.conftest import stage_env
from tests.tiny import run_stage


@pytest.fixture(scope="module")
def trained(tiny_project, tmp_path_factory):
    project = tmp_path_factory.mktemp("evaluate") / "project"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{project}/mlflow.db")
    run_stage(project, "train", env=env)
    return project, env


def test_training_logs_validation_ap_in_the_log(trained):
    project, _ = trained
    log = pd.read_csv(project / "reports/train/log.csv")
    validated = log[log["val_segm_AP"].notna()]
    assert list(validated["iteration"]) == [6, 12]  # train.eval_every 6 of 12 iterations
    assert validated[["val_bbox_AP", "val_segm_AP"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (project / "reports/train/curves.png").is_file()


def test_any_model_on_any_split_goes_beside_the_dvc_outputs(trained):
    project, env = trained
    run_stage(project, "evaluate", "--model", "models/model.pt", "--split", "val", env=env)
    out = project / "evaluations/model-val"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_images"] == 8
    assert not (project / "reports/metrics.json").exists()  # the DVC output is not touched
    assert (out / "results/bbox.json.gz").is_file() and (out / "tide.png").is_file()


def test_the_results_file_round_trips_through_load_res_to_the_same_ap(trained):
    project, env = trained
    run_stage(project, "evaluate", env=env)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["split"] == "test"
    gt = load_coco(ground_truth_path(project / "data/prepared", "test"))
    for iou_type in ("bbox", "segm"):
        results = read_results(project / f"reports/eval_results/{iou_type}.json.gz")
        if not results:
            pytest.skip("the tiny model detected nothing above the score threshold")
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(metrics[iou_type]["AP"], abs=1e-12)


def test_a_damaged_test_image_stops_evaluate_in_one_line(trained, tmp_path):
    project, env = trained
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts", "reports"),
                    symlinks=True)
    test_images = sorted((copy / "data/synthetic/test").glob("*.png"))
    test_images[0].write_bytes(b"not a png")
    proc = run_stage(copy, "evaluate", env=env, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and test_images[0].name in errors[0] and "Traceback" not in proc.stderr
    assert not (copy / "reports/metrics.json").exists()

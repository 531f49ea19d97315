"""Evaluate, validation and the ablation cells parse each ground-truth file once, however often they score."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pipeline.data.coco as coco_module
from pipeline.ablation.cell import cell_params, run_cell
from pipeline.ablation.grid import CellOutputs
from pipeline.analysis.evaluation_report import EvaluationOutputs, evaluate_model
from pipeline.config import load
from pipeline.data.layout import ground_truth_path, read_label_map
from pipeline.evaluation.inference import validation_scorer
from pipeline.models.loading import load_model

CPU = torch.device("cpu")


@pytest.fixture
def parsed(monkeypatch) -> Counter:
    """How many times each annotation file was parsed, by resolved path."""
    counts: Counter = Counter()
    real = coco_module.COCO

    def counting(path=None):
        if path is not None:
            counts[Path(path).resolve()] += 1
        return real(path)

    monkeypatch.setattr(coco_module, "COCO", counting)
    return counts


def gt(project: Path, split: str) -> Path:
    return ground_truth_path(project / "data/prepared", split).resolve()


def test_evaluate_parses_the_ground_truth_once(tiny_project, untrained_model, parsed, tmp_path):
    params = load(tiny_project / "params.yaml")
    outputs = EvaluationOutputs(tmp_path / "eval", tmp_path / "metrics.json", tmp_path / "results")
    evaluate_model(load_model(untrained_model, CPU), untrained_model, tiny_project / "data/prepared", "test", params,
                   outputs, CPU, progress=False)
    assert parsed[gt(tiny_project, "test")] == 1


def test_validation_parses_the_ground_truth_once_for_every_call(tiny_project, untrained_model, parsed):
    prepared = tiny_project / "data/prepared"
    scorer = validation_scorer(load(tiny_project / "params.yaml"), prepared,
                               [e["category_id"] for e in read_label_map(prepared)], CPU)
    model = load_model(untrained_model, CPU).model
    assert scorer(model) == scorer(model)
    assert parsed[gt(tiny_project, "val")] == 1


def test_an_ablation_cell_parses_each_ground_truth_once(tiny_project, parsed, tmp_path):
    params = cell_params(load(tiny_project / "params.yaml"), 0.5, 0.4, "base", 0)
    assert params.train.iterations // params.train.eval_every >= 2  # validation runs more than once
    run = SimpleNamespace(log_metrics=lambda *a, **k: None, log_artifact=lambda *a, **k: None, run_id="",
                          parent_run_id="", online=False, uri="")
    run_cell(params, tiny_project / "data/prepared", tmp_path / "work", CellOutputs(tmp_path / "cell.json"), run, {})
    assert parsed[gt(tiny_project, "val")] == 1 and parsed[gt(tiny_project, "test")] == 1

"""The warm start: its targets and metric, the stage, and train and ablation cells starting from its weights."""
import hashlib
import json

import pytest
import torch

from pipeline.config import PRETRAIN_WEIGHTS, load
from pipeline.models.backbone.resnet import ResNet
from pipeline.training.checkpoints import weights_hash
from pipeline.training.pretrain import confusion_counts, mean_iou, semantic_target
from pipeline.utils import distributed
from pipeline.utils.distributed import resolve_precision
from tests.conftest import REPO
from tests.tiny import WARM, make_project, run_stage


def test_semantic_target_puts_the_smaller_instance_on_top_and_samples_the_nearest_pixel():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, :, :6] = 1          # large, label 0 -> class 1
    masks[1, 2:6, 2:6] = 1       # small, inside it, label 2 -> class 3
    target = semantic_target(masks, torch.tensor([0, 2]), (4, 4))
    assert target.tolist() == [[1, 1, 1, 0], [1, 3, 3, 0], [1, 3, 3, 0], [1, 1, 1, 0]]
    assert semantic_target(masks[:0], torch.tensor([], dtype=torch.long), (2, 2)).tolist() == [[0, 0], [0, 0]]


def test_mean_iou_is_over_the_labels_in_the_ground_truth():
    target = torch.tensor([[[0, 0, 1, 1]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 2]]]), 3).permute(0, 3, 1, 2).float()
    counts = confusion_counts(logits, target, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    # background: 1 hit / (2 true + 1 predicted - 1); class 1: 1 / (2 + 2 - 1); class 2 is absent from the truth
    assert mean_iou(counts) == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_the_default_precision_is_the_same_on_every_host(monkeypatch):
    precision = load(REPO / "params.yaml").train.precision
    for native_bf16 in (True, False):
        monkeypatch.setattr(distributed, "native_cpu_bf16", lambda: native_bf16)
        assert resolve_precision(precision, torch.device("cpu")) == "fp32"
        # auto stays an opt-in, and it does differ between hosts
        assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native_bf16 else "fp32")


def test_params_validate_on_a_fresh_clone_before_pretrain_has_run(tmp_path):
    project = make_project(tmp_path / "fresh", WARM)
    assert not (project / PRETRAIN_WEIGHTS).exists()
    for stage in ("generate", "prepare"):  # each loads and validates params.yaml, which names the unwritten warm start
        run_stage(project, stage)
    proc = run_stage(project, "train", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert PRETRAIN_WEIGHTS in line and "run `dvc repro pretrain`" in line


@pytest.fixture(scope="module")
def warm_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("warm") / "project", WARM)
    for stage in ("generate", "prepare", "pretrain"):
        run_stage(project, stage)
    return project


def test_pretrain_writes_resnet_weights_and_its_val_metric(warm_project):
    params = load(warm_project / "params.yaml")
    state = torch.load(warm_project / PRETRAIN_WEIGHTS, map_location="cpu", weights_only=True)
    bb = params.model.backbone
    resnet = ResNet(depth=bb.depth, base_channels=bb.base_channels, out_indices=bb.out_indices)
    resnet.load_state_dict(state)  # exactly the trunk's ResNet
    metrics = json.loads((warm_project / "reports/pretrain/metrics.json").read_text())
    assert 0 <= metrics["val_mIoU"] <= 1 and metrics["iterations"] == params.pretrain.iterations


def test_train_and_an_ablation_cell_start_from_the_warm_start_and_record_its_hash(warm_project):
    digest = hashlib.sha256((warm_project / PRETRAIN_WEIGHTS).read_bytes()).hexdigest()
    expected = hashlib.sha256(f"model.backbone.pretrained:{digest}\n".encode()).hexdigest()[:16]
    run_stage(warm_project, "train")
    payload = torch.load(warm_project / "models/model.pt", map_location="cpu", weights_only=True)
    assert payload["provenance"]["weights"] == expected
    assert payload["params"]["model"]["backbone"]["pretrained"] == "pretrain"
    run_stage(warm_project, "ablate", "--pos-iou", "0.5", "--neg-iou", "0.4", "--scales", "base", "--seed", "0")
    cell = json.loads((warm_project / "reports/ablation/cells/p0.5-n0.4-base-s0.json").read_text())
    assert cell["warm_start"] == expected


def test_a_changed_warm_start_changes_the_provenance(warm_project, monkeypatch):
    import pipeline.training.checkpoints as checkpoints

    params = load(warm_project / "params.yaml")
    monkeypatch.setattr(checkpoints, "weights_path", lambda value: warm_project / PRETRAIN_WEIGHTS)
    before = weights_hash(params)
    state = torch.load(warm_project / PRETRAIN_WEIGHTS, weights_only=True)
    state["conv1.weight"] += 1
    changed = warm_project / "changed.pt"
    torch.save(state, changed)
    monkeypatch.setattr(checkpoints, "weights_path", lambda value: changed)
    assert weights_hash(params) != before


def test_pretrain_is_bypassed_without_the_warm_start(tmp_path):
    project = make_project(tmp_path / "cold")
    for stage in ("generate", "prepare", "pretrain"):
        run_stage(project, stage)
    assert json.loads((project / "models/pretrain/bypassed.json").read_text())["bypassed"] is True
    assert not (project / PRETRAIN_WEIGHTS).exists()

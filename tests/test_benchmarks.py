"""Smoke tests of the benchmark helpers on tiny sizes (correctness of what they compute, never speed)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import matching as match_bench
from benchmarks.loader import loader_against_training, train_loader, transform_breakdown
from benchmarks.report import TARGETS, check_targets
from benchmarks.run import SYNTHETIC_DATA, main
from benchmarks.timing import Sections, Timing, measure, measure_interleaved
from benchmarks.workloads import (
    choose_format,
    flops_of,
    maskrcnn_targets,
    matmul_gflops,
    random_images,
    random_instances,
    yolact_infer_step,
    yolact_train_step,
)
from pipeline.anchors import make_priors
from pipeline.config import load
from pipeline.model import build_model, count_flops
from tests.conftest import REPO
from tests.reference_match import reference_match

CPU = torch.device("cpu")
TINY_YOLACT = [*SYNTHETIC_DATA, "model.backbone.pretrained=null", "input.size=64",
               "model.backbone.depth=18", "model.backbone.base_channels=8", "model.fpn.out_channels=16",
               "model.head.num_prototypes=4"]


def test_measure_runs_warmup_then_timed_calls():
    calls = []
    timing = measure(lambda: calls.append(1), CPU, warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(timing.seconds) == 3 and all(s >= 0 for s in timing.seconds)
    assert Timing([3.0, 1.0, 2.0]).best == 1.0 and Timing([3.0, 1.0, 2.0]).median == 2.0
    with pytest.raises(ValueError):
        measure(lambda: None, CPU, warmup=0, repeats=0)


def test_sections_accumulate_and_tabulate():
    sections = Sections()
    for _ in range(2):
        with sections("alpha", verbose=False):
            pass
    with sections("beta", verbose=False):
        pass
    assert list(sections.seconds) == ["alpha", "beta"]
    table = sections.table()
    assert "alpha" in table and "beta" in table and table.splitlines()[-1].startswith("total")


def test_random_instances_are_valid_targets():
    targets = random_instances(2, 32, 3, 80, torch.Generator().manual_seed(0))
    assert len(targets) == 2
    for t in targets:
        boxes, masks = t["boxes"], t["masks"]
        assert boxes.shape == (3, 4) and masks.shape == (3, 32, 32) and masks.dtype == torch.uint8
        assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((t["labels"] >= 0) & (t["labels"] < 80)).all() and t["crowd_boxes"].shape == (0, 4)
        assert masks.flatten(1).any(1).all()
        # every mask pixel lies inside its box
        ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        for box, mask in zip(boxes * 32, masks.bool()):
            assert (xs[mask] >= box[0].floor()).all() and (xs[mask] < box[2].ceil()).all()
            assert (ys[mask] >= box[1].floor()).all() and (ys[mask] < box[3].ceil()).all()
    converted = maskrcnn_targets(targets, 32)
    assert torch.equal(converted[0]["boxes"], targets[0]["boxes"] * 32)
    assert torch.equal(converted[0]["labels"], targets[0]["labels"] + 1)


@pytest.fixture(scope="module")
def tiny_yolact():
    params = load(REPO / "configs/yolact550_r50_coco.yaml", TINY_YOLACT)
    torch.manual_seed(0)
    return params, build_model(params, num_classes=80)


def test_train_step_updates_weights_and_counts_backward_flops(tiny_yolact):
    params, model = tiny_yolact
    generator = torch.Generator().manual_seed(0)
    images = random_images(1, 64, generator)
    targets = random_instances(1, 64, 2, 80, generator)
    step = yolact_train_step(model, images, targets, params.loss, params.train, None, channels_last=False)
    before = model.head.conf_layer.weight.detach().clone()
    train_flops = flops_of(step)
    assert not torch.equal(before, model.head.conf_layer.weight)
    forward_flops = count_flops(model.eval(), images)
    # Backward costs about two forwards: the counter must have seen it.
    assert 2.0 * forward_flops < train_flops < 4.0 * forward_flops


def test_infer_step_returns_detections_per_image(tiny_yolact):
    params, model = tiny_yolact
    images = random_images(2, 64, torch.Generator().manual_seed(1))
    detections = yolact_infer_step(model, images, params.eval, False, torch.bfloat16, channels_last=True)()
    assert len(detections) == 2 and not model.training
    assert all(d["masks"].dtype == torch.float32 and len(d["masks"]) == len(d["scores"]) for d in detections)


def test_choose_format_leaves_the_model_in_the_chosen_format(tiny_yolact):
    params, model = tiny_yolact
    images = random_images(1, 64, torch.Generator().manual_seed(2))
    choice = choose_format(lambda cl: yolact_infer_step(model, images, params.eval, False, None, cl), CPU, warmup=0)
    assert set(choice.probe_s) == {"contiguous", "channels_last"}
    assert choice.channels_last == (choice.probe_s["channels_last"] < choice.probe_s["contiguous"])
    memory_format = torch.channels_last if choice.channels_last else torch.contiguous_format
    assert model.backbone.conv1.weight.is_contiguous(memory_format=memory_format)


def test_measure_interleaved_runs_steps_in_turn():
    calls = []
    timings = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, CPU, 1, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert {name: len(t.seconds) for name, t in timings.items()} == {"a": 2, "b": 2}


def test_matmul_gflops_is_positive():
    gflops, timing = matmul_gflops(64, torch.float32, CPU, warmup=1, repeats=2)
    assert gflops > 0 and len(timing.seconds) == 2


def test_compare_matching_detects_equal_and_different_outputs():
    generator = torch.Generator().manual_seed(0)
    boxes, labels = match_bench.random_ground_truth(3, 5, 80, generator)
    assert all(((b >= 0) & (b <= 1)).all() and (b[:, 2:] >= b[:, :2]).all() for b in boxes)
    priors = make_priors(64, [(8, 8), (4, 4), (2, 2)], [[8], [16], [32]], [1.0, 0.5, 2.0])
    same = match_bench.compare_matching(boxes, labels, priors, 0.5, 0.4, reference_match, CPU, repeats=1)
    assert same["identical"] and same["num_priors"] == len(priors) and same["speedup"] > 0

    def off_by_one(*args):
        conf_t, matched_idx, loc_t = reference_match(*args)
        return conf_t, matched_idx, loc_t + 1e-6

    different = match_bench.compare_matching(boxes, labels, priors, 0.5, 0.4, off_by_one, CPU, repeats=1)
    assert not different["identical"]
    assert different["identical_by_output"] == {"conf_t": True, "matched_idx": True, "loc_t": False}


def test_check_targets():
    values = {t.key: t.minimum for t in TARGETS} | {"match_identical": True}
    assert all(row["met"] for row in check_targets(values))
    values |= {"loader_vs_train": 2.9, "match_identical": False}
    met = {row["key"]: row["met"] for row in check_targets(values)}
    assert met["loader_vs_train"] is False and met["match_speedup"] is False and met["train_fp32_vs_maskrcnn"]
    assert {row["met"] for row in check_targets({})} == {None}


def test_loader_against_training_alternates_batches_and_steps(tiny_project):
    params = load(tiny_project / "params.yaml")
    loader = train_loader(params, tiny_project / "data/prepared")
    steps = []
    stats = loader_against_training(loader, lambda: steps.append(1), CPU, batches=2, warmup_steps=1)
    assert len(steps) == 3 and len(stats["loader_seconds"]) == len(stats["train_seconds"]) == 2
    assert stats["images"] == 2 * params.train.batch_size == 2 * stats["batch_size"]
    assert stats["loader_images_per_s"] == pytest.approx(stats["images"] / sum(stats["loader_seconds"]))
    with pytest.raises(ValueError):
        loader_against_training(loader, lambda: None, CPU, batches=len(loader))
    rows = transform_breakdown(loader.dataset, images=3)
    names = [row["op"] for row in rows]
    transforms = {type(t).__name__ for t in loader.dataset.transforms.transforms}
    assert set(names) == {"read image and masks", "finish_target"} | transforms
    assert all(row["calls"] == 3 for row in rows) and sum(row["share"] for row in rows) == pytest.approx(1)
    assert [row["self_ms"] for row in rows] == sorted((row["self_ms"] for row in rows), reverse=True)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_run_writes_the_reports(tiny_project, tmp_path, restore_threads):
    # One thread: tiny operators on two threads crawl when other processes share the cores.
    result = main(["--quick", "--device", "cpu", "--threads", "1", "--params", str(tiny_project / "params.yaml"),
                   "--prepared", str(tiny_project / "data/prepared"), "--out", str(tmp_path)])
    assert result["machine"]["threads"] == 1
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == json.loads(json.dumps(result))
    for key in ("train_fp32_vs_maskrcnn", "infer_bf16_speedup_vs_maskrcnn_fp32", "match_speedup", "loader_vs_train"):
        assert written[key] > 0
    assert 0 < written["train_bf16_peak_share"]
    assert written["match_identical"] is True
    assert written["machine"]["torch"] == torch.__version__
    assert [row["key"] for row in written["targets"]] == [t.key for t in TARGETS]
    assert set(written["profiles"]) == {row["key"] for row in written["targets"] if row["met"] is False}
    markdown = (tmp_path / "bench.md").read_text()
    assert all(t.label in markdown for t in TARGETS)
    assert "Mask R-CNN" in markdown and "| total |" in markdown

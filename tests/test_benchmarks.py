"""Smoke tests of the benchmark helpers on tiny sizes (correctness of what they compute, never speed)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from benchmarks import matching as match_bench
from benchmarks import workloads
from benchmarks.evaluation_time import PHASES, evaluation_breakdown
from pipeline.utils.hardware import BF16_FLAGS, ISA_FLAGS, cpu_bf16, cpu_description
from benchmarks.loader import as_one_worker, loader_against_training, training_loader, transform_breakdown, worker_rate
from benchmarks.peak import PeakShapes, attainable_peak
from benchmarks.reference_match import reference_match
from benchmarks.report import TARGETS, TOP_LEVEL, check_targets
from benchmarks.run import QUICK, SYNTHETIC_DATA
from benchmarks.timing import Sections, Timing, measure, measure_interleaved
from benchmarks.workloads import (
    build_maskrcnn,
    flops_of,
    maskrcnn_infer_step,
    maskrcnn_targets,
    maskrcnn_train_step,
    random_images,
    random_instances,
    yolact_infer_step,
    yolact_train_step,
)
from pipeline.models.priors.anchors import make_priors
from pipeline.config import load
from pipeline.data.layout import read_label_map
from pipeline.utils.distributed import Dist
from pipeline.models.yolact.model import build_model, count_flops
from pipeline.training.sampling import SampleStream
from tests.analysis.test_reports_portable import ABSOLUTE
from tests.conftest import PYTHON, REPO
from tests.tiny import tiny_params

CPU = torch.device("cpu")
TINY_YOLACT = [*SYNTHETIC_DATA, "model.backbone.pretrained=null", "input.size=64",
               "model.backbone.depth=18", "model.backbone.base_channels=8", "model.fpn.out_channels=16",
               "model.head.num_prototypes=4"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny operators on two threads crawl when other processes share the cores; the benchmarks' code paths
    do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmarks_do_not_import_tests():
    for path in (REPO / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name == "tests" or name.startswith("tests.") for name in names), path.name


def test_measure_runs_warmup_then_timed_calls():
    calls = []
    timing = measure(lambda: calls.append(1), CPU, warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(timing.seconds) == 3 and all(s >= 0 for s in timing.seconds)
    assert Timing([3.0, 1.0, 2.0]).median == 2.0 and Timing([3.0, 1.0, 2.0]).as_dict()["median_s"] == 2.0
    with pytest.raises(ValueError):
        measure(lambda: None, CPU, warmup=0, repeats=0)


def test_measure_interleaved_runs_steps_in_turn():
    calls = []
    timings = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, CPU, 1, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert {name: len(t.seconds) for name, t in timings.items()} == {"a": 2, "b": 2}


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


@pytest.fixture(scope="module")
def tiny_maskrcnn():
    torch.manual_seed(0)
    return build_maskrcnn(64, **dict(QUICK.maskrcnn_options))


def test_train_step_updates_weights_and_counts_backward_flops(tiny_yolact):
    params, model = tiny_yolact
    generator = torch.Generator().manual_seed(0)
    images = random_images(1, 64, generator)
    targets = random_instances(1, 64, 2, 80, generator)
    step = yolact_train_step(model, images, targets, params.loss, params.train, None)
    before = model.head.conf_layer.weight.detach().clone()
    train_flops = flops_of(step)
    assert not torch.equal(before, model.head.conf_layer.weight)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    forward_flops = count_flops(model.eval(), images)
    # Backward costs about two forwards: the counter must have seen it.
    assert 2.0 * forward_flops < train_flops < 4.0 * forward_flops


def test_both_train_steps_clip_and_step_the_same_optimizer(tiny_yolact, monkeypatch):
    params, model = tiny_yolact
    clipped = []
    clip = nn.utils.clip_grad_norm_
    monkeypatch.setattr(workloads.nn.utils, "clip_grad_norm_", lambda p, c: clipped.append(c) or clip(p, c))
    generator = torch.Generator().manual_seed(3)
    images = random_images(2, 64, generator)
    targets = random_instances(2, 64, 2, 80, generator)
    yolact_train_step(model, images, targets, params.loss, params.train, None)()
    maskrcnn = build_maskrcnn(64, **dict(QUICK.maskrcnn_options))
    # like YOLACT here: plain BatchNorm, every layer trained
    assert all(p.requires_grad for p in maskrcnn.parameters())
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in maskrcnn.modules())
    before = maskrcnn.roi_heads.box_predictor.cls_score.weight.detach().clone()
    maskrcnn_train_step(maskrcnn, images, maskrcnn_targets(targets, 64), params.train, None)()
    assert clipped == [params.train.grad_clip, params.train.grad_clip]
    assert not torch.equal(before, maskrcnn.roi_heads.box_predictor.cls_score.weight)
    assert maskrcnn.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_both_infer_steps_end_in_binary_masks_at_image_size(tiny_yolact, tiny_maskrcnn, precision):
    params, model = tiny_yolact
    images = random_images(1, 64, torch.Generator().manual_seed(1))
    ours = yolact_infer_step(model, images, params.eval, False, precision)()
    theirs = maskrcnn_infer_step(tiny_maskrcnn, images, params.eval.mask_threshold, precision)()
    assert not tiny_maskrcnn.training  # YOLACT's step runs its BatchNorm-folded eval copy
    for detections in (ours, theirs):
        assert len(detections) == 1
        d = detections[0]
        n = len(d["scores"])
        assert n <= params.eval.max_detections and d["boxes"].shape == (n, 4) and d["labels"].shape == (n,)
        assert d["masks"].dtype == torch.bool and d["masks"].shape == (n, 64, 64)
    # Mask R-CNN's own post-processing ran under the same autocast as its network.
    assert len(theirs[0]["scores"]) > 0
    assert theirs[0]["scores"].dtype == (precision or torch.float32)


def test_attainable_peak_takes_the_faster_kernel():
    peak = attainable_peak(PeakShapes(64, 1, 8, 8), torch.float32, CPU, warmup=1, repeats=2)
    assert peak["kernel"] in ("matmul", "conv3x3")
    assert peak["gflops"] == max(peak["matmul"]["gflops"], peak["conv3x3"]["gflops"]) > 0
    assert len(peak["conv3x3"]["seconds"]) == 2 and "channels-last" in peak["conv3x3"]["shape"]
    assert peak["matmul"]["gflops"] == pytest.approx(2 * 64**3 / peak["matmul"]["median_s"] / 1e9)


def test_compare_matching_warms_up_both_and_checks_the_timed_outputs():
    generator = torch.Generator().manual_seed(0)
    boxes, labels = match_bench.random_ground_truth(3, 5, 80, generator)
    assert all(((b >= 0) & (b <= 1)).all() and (b[:, 2:] >= b[:, :2]).all() for b in boxes)
    priors = make_priors(64, [(8, 8), (4, 4), (2, 2)], [[8], [16], [32]], [1.0, 0.5, 2.0])
    calls = []

    def counted(*args):
        calls.append(1)
        return reference_match(*args)

    same = match_bench.compare_matching(boxes, labels, priors, 0.5, 0.4, CPU, warmup=1, repeats=5, reference=counted)
    assert len(calls) == 3 * (1 + 5)  # images x (warm-up + timed)
    assert len(same["match_batch"]["seconds"]) == len(same["reference"]["seconds"]) == 5
    assert same["speedup"] == same["reference"]["median_s"] / same["match_batch"]["median_s"]
    assert same["identical"] and same["num_priors"] == len(priors)

    def off_on_the_last_call(*args):
        conf_t, matched_idx, loc_t = reference_match(*args)
        calls.append(1)
        return conf_t, matched_idx, loc_t + (1e-6 if len(calls) > 3 else 0)  # the timed call only

    calls.clear()
    different = match_bench.compare_matching(boxes, labels, priors, 0.5, 0.4, CPU, warmup=1, repeats=1,
                                             reference=off_on_the_last_call)
    assert not different["identical"]
    assert different["identical_by_output"] == {"conf_t": True, "matched_idx": True, "loc_t": False}


def test_check_targets():
    values = {t.key: t.minimum for t in TARGETS} | {"match_identical": True}
    assert all(row["met"] for row in check_targets(values))
    values |= {"loader_vs_train": 2.9, "match_identical": False}
    met = {row["key"]: row["met"] for row in check_targets(values)}
    assert met["loader_vs_train"] is False and met["match_speedup"] is False and met["train_fp32_vs_maskrcnn_fp32"]
    assert {row["met"] for row in check_targets({})} == {None}


def test_training_loader_is_the_training_sample_stream(tiny_project):
    params = load(tiny_project / "params.yaml")
    loader = training_loader(params, tiny_project / "data/prepared")
    samples = loader.dataset
    images, targets = next(iter(loader))
    first = next(iter(SampleStream(len(samples), params.train.batch_size, params.seed, 0, Dist())))
    assert len(images) == params.train.batch_size == len(first)
    for image, target, key in zip(images, targets, first):
        expected_image, expected_target = samples[key]  # the same (index, seed): the same augmentation
        assert torch.equal(image, expected_image) and target["image_id"] == expected_target["image_id"]
    threads = torch.get_num_threads()
    with as_one_worker():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_loader_rates_and_breakdown(tiny_project):
    params = load(tiny_project / "params.yaml")
    loader = training_loader(params, tiny_project / "data/prepared")
    steps = []
    stats = loader_against_training(loader, lambda: steps.append(1), CPU, batches=2, warmup_steps=1)
    assert len(steps) == 3 and len(stats["loader_seconds"]) == len(stats["train_seconds"]) == 2
    assert stats["images"] == 2 * params.train.batch_size == 2 * stats["batch_size"]
    assert stats["worker_images_per_s"] == pytest.approx(stats["images"] / sum(stats["loader_seconds"]))
    rate = worker_rate(loader, batches=2)
    assert rate["images"] == 2 * params.train.batch_size and rate["worker_images_per_s"] > 0
    rows = transform_breakdown(loader.dataset.dataset, images=3)
    names = [row["op"] for row in rows]
    transforms = {type(t).__name__ for t in loader.dataset.dataset.transforms.transforms}
    assert set(names) == {"read image and masks", "finish_target"} | transforms
    assert all(row["calls"] == 3 for row in rows) and sum(row["share"] for row in rows) == pytest.approx(1)
    assert [row["self_ms"] for row in rows] == sorted((row["self_ms"] for row in rows), reverse=True)


def test_evaluation_breakdown_covers_every_phase(tiny_project):
    params = load(tiny_project / "params.yaml")
    prepared = tiny_project / "data/prepared"
    labels = read_label_map(prepared)
    torch.manual_seed(0)
    model = build_model(params, num_classes=len(labels))
    result = evaluation_breakdown(model, params, prepared, "val", [e["category_id"] for e in labels], CPU)
    assert result["images"] == params.data.synthetic.val_images
    assert [row["phase"] for row in result["phases"]] == list(PHASES)
    assert sum(row["share"] for row in result["phases"]) == pytest.approx(1)
    assert sum(row["ms_per_image"] for row in result["phases"]) == pytest.approx(result["ms_per_image"])


AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse4_2 avx f16c avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another
"""


def test_cpu_description_reads_the_model_and_the_isa_flags():
    cpu = cpu_description(AMX_CPUINFO)
    assert cpu["cpu"] == "Intel(R) Xeon(R) Platinum 8480+" and cpu["cpu_id"] == "GenuineIntel family 6 model 143 stepping 8"
    assert cpu["isa_flags"] == ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    assert cpu_description("")["isa_flags"] == [] and cpu_description("")["cpu"]


def test_bf16_is_native_only_with_bf16_instructions_that_onednn_uses():
    assert cpu_bf16(True, ["avx512f", "amx_bf16"])["bf16_native"] is True
    assert cpu_bf16(True, ["avx512f", "avx512_bf16"])["bf16_native"] is True
    assert cpu_bf16(True, ["avx2", "avx512f", "avx512bw"]) == {  # oneDNN takes bf16 on plain AVX-512, emulated
        "bf16_native": False, "bf16_basis": "no AMX-BF16 or AVX512-BF16 in the ISA: oneDNN's bf16 kernels convert to fp32"}
    assert cpu_bf16(False, ["avx2"])["bf16_native"] is False


def clean_tree(dest: Path) -> Path:
    """What a fresh clone of this working tree holds (tracked and unignored files; no data/, models/ or
    mlflow.db), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git working tree: no clean tree to copy")
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():  # not a deleted file, nor a symlinked .venv
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_quick_run_from_a_fresh_clone_makes_its_data_and_writes_the_reports(tmp_path):
    clone = clean_tree(tmp_path / "clone")
    assert not (clone / "data").exists() and not (clone / "models").exists()
    (clone / "tiny.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}

    def bench(params: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "benchmarks.run", "--quick", "--device", "cpu", "--threads", "1",
                               "--params", params], cwd=clone, env=env, capture_output=True, text=True, timeout=600)

    # data that cannot be made (a COCO root without its annotations): one line of why, no traceback, no report
    (clone / "empty_coco").mkdir()
    coco = tiny_params({"data": {"source": "coco", "root": "empty_coco"}})
    (clone / "coco.yaml").write_text(yaml.safe_dump(coco, sort_keys=False))
    failed = bench("coco.yaml")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert failed.stderr.strip().splitlines()[-1].startswith("error: `python -m stages.prepare` failed")
    assert (clone / "reports/bench.json").read_bytes() == (REPO / "reports/bench.json").read_bytes()

    proc = bench("tiny.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "running `python -m stages.generate`" in proc.stdout and "running `python -m stages.prepare`" in proc.stdout
    assert (clone / "data/prepared/train.json").is_file() and not (clone / "models").exists()
    written = json.loads((clone / "reports/bench.json").read_text())
    markdown = (clone / "reports/bench.md").read_text()
    found = [m.group(0) for text in (json.dumps(written, indent=1), markdown) for m in ABSOLUTE.finditer(text)]
    assert not found, found[:5]  # no machine's paths, the weights' included
    assert written["command"] == "python -m benchmarks.run --quick --device cpu --threads 1 --params tiny.yaml"
    assert written["evaluation"]["weights"] == "random (seeded): no trained model at models/model.pt"
    assert written["evaluation"]["images"] == QUICK.eval_images

    machine = written["machine"]
    assert machine["threads"] == 1 and machine["cpu"] and isinstance(machine["bf16_native"], bool)
    assert set(machine["isa_flags"]) <= set(ISA_FLAGS) and machine["bf16_basis"]
    assert machine["bf16_native"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()
                                          and set(BF16_FLAGS) & set(machine["isa_flags"]))
    kind = "native" if machine["bf16_native"] else "emulated"
    assert f"bf16 is {kind} here" in markdown and f"| YOLACT | bf16 ({kind}) |" in markdown
    assert f"| Mask R-CNN | bf16 ({kind}) |" in markdown and f"both bf16 autocast ({kind} bf16)" in markdown
    assert list(written)[:len(TOP_LEVEL)] == list(TOP_LEVEL)
    assert all(written[key] > 0 for key in TOP_LEVEL if key != "match_identical")
    assert written["match_identical"] is True
    assert [row["key"] for row in written["targets"]] == [t.key for t in TARGETS]
    assert set(written["profiles"]) == {row["key"] for row in written["targets"] if row["met"] is False}

    inference, training, peak = written["inference"], written["training"], written["peak"]
    for precision in ("fp32", "bf16"):
        ours, theirs = inference["yolact"][precision], inference["maskrcnn"][precision]
        assert written[f"infer_{precision}_vs_maskrcnn_{precision}"] == theirs["seconds_per_image"] / ours["seconds_per_image"]
        ours, theirs = training["yolact"][precision], training["maskrcnn"][precision]
        assert written[f"train_{precision}_vs_maskrcnn_{precision}"] == ours["images_per_s"] / theirs["images_per_s"]
        for model in ("yolact", "maskrcnn"):
            entry = inference[model][precision]
            assert entry["mask_shape"] == [inference["image_size"]] * 2 and entry["mask_dtype"] == "torch.bool"
            assert len(entry["seconds"]) == inference["repeats"][precision]
            # every share is of the peak of the step's own dtype
            assert training[model][precision]["peak_share"] == pytest.approx(
                training[model][precision]["gflops"] / peak[precision]["gflops"])
        assert peak[precision]["gflops"] == max(peak[precision]["matmul"]["gflops"], peak[precision]["conv3x3"]["gflops"])
    assert written["train_bf16_peak_share"] == training["yolact"]["bf16"]["peak_share"]
    assert inference["batch"] == 1 and training["batch"] == 2
    assert written["loader_vs_train"] == (written["loader"]["default"]["worker_images_per_s"]
                                          / written["loader"]["default"]["train_images_per_s"])
    assert written["loader"]["gpu_preset"]["worker_images_per_s"] > 0
    assert [row["phase"] for row in written["evaluation"]["phases"]] == list(PHASES)
    onnx = written["onnx_runtime"]  # the exported graph computes what PyTorch computes, timed alike
    assert onnx["largest_difference"] < 1e-3 and len(onnx["pytorch"]["seconds"]) == len(onnx["onnxruntime"]["seconds"])
    assert onnx["onnxruntime_vs_pytorch"] == onnx["pytorch"]["median_s"] / onnx["onnxruntime"]["median_s"]

    assert all(t.label in markdown and t.key in markdown for t in TARGETS)
    compared = {"inference": {"YOLACT", "Mask R-CNN"}, "training": {"YOLACT", "Mask R-CNN"},
                "matching": {"match_batch", "reference"}, "data loader": {"loader", "training"}}
    for figure, sides in compared.items():
        described = written["methods"][figure]
        assert sides | {"both"} <= set(described) and all(described.values())
        assert all(f"| {figure} | {side} | {described[side]} |" in markdown for side in sides | {"both"})
    assert "## ONNX Runtime" in markdown and "| total |" in markdown

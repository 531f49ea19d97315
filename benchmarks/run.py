"""``python -m benchmarks.run``: measure everything in one process and write ``reports/bench.{json,md}``.

Sections, in order: peak matmul (fp32, bf16); YOLACT R-50 at 550 px, batch 2, against torchvision's
Mask R-CNN at the same size and batch (memory-format choice, inference, FLOPs, training); the batched
matcher against the reference loop; the data loader against training at the default config
(params.yaml); finally a profile of the workload behind each missed target. ``--quick`` runs the same
code on tiny sizes (the smoke test).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision
from torch.utils.data import DataLoader

from pipeline.config import REPO_ROOT, ConfigError, Params, load, resolve_path
from pipeline.data import read_label_map
from pipeline.errors import PipelineError
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.model import build_model, count_flops
from pipeline.distributed import autocast_dtype, select_device

from . import matching as match_bench
from .loader import loader_against_training, train_loader, transform_breakdown
from .profiling import top_ops
from .report import TOP_LEVEL, check_targets, render_markdown
from .timing import Sections, measure_interleaved
from .workloads import (
    Step,
    build_maskrcnn,
    choose_format,
    flops_of,
    maskrcnn_infer_step,
    maskrcnn_targets,
    maskrcnn_train_step,
    matmul_gflops,
    random_images,
    random_instances,
    set_memory_format,
    to_device,
    yolact_infer_step,
    yolact_train_step,
)

YOLACT_CONFIG = "configs/yolact550_r50_coco.yaml"
# The preset's model and recipe without its COCO data (not needed to time the network).
SYNTHETIC_DATA = ("data.source=synthetic", "data.root=data/synthetic", "data.train_split=train",
                  "data.val_split=val", "data.test_split=test")
YOLACT_OVERRIDES = (*SYNTHETIC_DATA, "model.backbone.pretrained=null", "train.precision=fp32")
# The YOLACT recipe shrunk for the smoke test: the same code paths at a fraction of the cost.
QUICK_OVERRIDES = ("input.size=64", "model.backbone.depth=18", "model.backbone.base_channels=8",
                   "model.fpn.out_channels=16", "model.head.num_prototypes=4")
NUM_CLASSES = 80  # COCO, as the R-50 recipe is trained
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Settings:
    batch: int = 2
    instances_per_image: int = 4
    matmul_size: int = 2048  # on the CPU; CUDA uses matmul_size_cuda
    matmul_size_cuda: int = 8192
    match_batch: int = 8
    match_gt: int = 100
    loader_batches: int = 12
    loader_profile_images: int = 24
    warmup: int = 1
    repeats: int = 3
    maskrcnn_options: tuple[tuple[str, int], ...] = ()  # MaskRCNN arguments beyond torchvision's defaults
    quick: bool = False


# Mask R-CNN's RoI heads cost the same at any image size: the smoke test samples far fewer RoIs.
QUICK = Settings(matmul_size=256, matmul_size_cuda=1024, match_batch=2, match_gt=10, loader_batches=2,
                 loader_profile_images=2, warmup=0, repeats=1, quick=True,
                 maskrcnn_options=(("rpn_pre_nms_top_n_train", 64), ("rpn_post_nms_top_n_train", 16),
                                   ("rpn_pre_nms_top_n_test", 64), ("rpn_post_nms_top_n_test", 16),
                                   ("box_batch_size_per_image", 16)))

Profile = Callable[[], list[dict[str, Any]]]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmarks, write ``bench.json`` and ``bench.md`` under ``--out`` and return the result."""
    args = _parser().parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    default_params = load(resolve_path(args.params))
    prepared = resolve_path(args.prepared)
    ensure_prepared(prepared, args)
    torch.manual_seed(0)

    sections = Sections()
    result: dict[str, Any] = {"command": " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])}
    profiles: dict[str, tuple[str, Profile]] = {}  # per target key: what is profiled, and how

    with sections("peak matmul"):
        size = settings.matmul_size_cuda if device.type == "cuda" else settings.matmul_size
        result["matmul"] = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gflops, timing = matmul_gflops(size, dtype, device, settings.warmup + 1, settings.repeats + 2)
            result["matmul"][name] = {"size": size, "gflops": gflops, **timing.as_dict()}

    priors = compare_models(settings, device, sections, result, profiles)

    with sections("matching"):
        from tests.reference_match import reference_match

        generator = torch.Generator().manual_seed(1)
        boxes, labels = match_bench.random_ground_truth(settings.match_batch, settings.match_gt, NUM_CLASSES, generator)
        loss = load(REPO_ROOT / YOLACT_CONFIG, YOLACT_OVERRIDES).loss
        result["matching"] = match_bench.compare_matching(
            boxes, labels, priors, loss.pos_iou, loss.neg_iou, reference_match, device, settings.repeats)
        boxes, labels = [b.to(device) for b in boxes], [l.to(device) for l in labels]
        profiles["match_speedup"] = (
            f"One `match_batch` call ({settings.match_batch} images x {settings.match_gt} GTs), operators by self time.",
            lambda: top_ops(lambda: match_bench.match_batch(boxes, labels, priors, loss.pos_iou, loss.neg_iou), device))

    with sections("data loader against default-config training"):
        loader = train_loader(default_params, prepared)
        step, about = default_train_step(default_params, prepared, loader, device)
        result["loader"] = {**about, **loader_against_training(loader, step, device, settings.loader_batches)}
        profiles["loader_vs_train"] = (
            f"Loading {settings.loader_profile_images} training samples one by one, time per step "
            "(reading = image decode + annotation masks), batching excluded.",
            lambda: transform_breakdown(loader.dataset, settings.loader_profile_images))

    yolact, maskrcnn = result["yolact"], result["maskrcnn"]
    result["train_fp32_vs_maskrcnn"] = yolact["train"]["fp32"]["images_per_s"] / maskrcnn["train"]["fp32"]["images_per_s"]
    result["train_bf16_peak_share"] = yolact["train"]["bf16"]["peak_share"]
    result["infer_bf16_speedup_vs_maskrcnn_fp32"] = (
        maskrcnn["infer"]["fp32"]["seconds_per_image"] / yolact["infer"]["bf16"]["seconds_per_image"])
    result["match_speedup"] = result["matching"]["speedup"]
    result["match_identical"] = result["matching"]["identical"]
    result["loader_vs_train"] = result["loader"]["loader_images_per_s"] / result["loader"]["train_images_per_s"]
    result["targets"] = check_targets(result)

    result["profiles"] = {}
    with sections("profiles of missed targets"):
        for row in result["targets"]:
            if row["met"] is False:
                what, profile = profiles[row["key"]]
                result["profiles"][row["key"]] = {"what": what, "top": profile()}

    result["sections"] = dict(sections.seconds)
    result["load_average"] = dict(sections.load)
    result["machine"] = machine_info(device)
    result["settings"] = {**asdict(settings), "image_size": result["yolact"]["image_size"]}
    ordered = {key: result[key] for key in (*TOP_LEVEL, "targets", "machine")}
    ordered.update({k: v for k, v in result.items() if k not in ordered})

    out = resolve_path(args.out)
    atomic_write_json(out / "bench.json", ordered)
    atomic_write_text(out / "bench.md", render_markdown(ordered))
    print("\n" + sections.table() + "\n")
    for row in result["targets"]:
        status = "not measured" if row["met"] is None else ("met" if row["met"] else "MISSED")
        print(f"{row['key']}: {_number(row['value'])} (target >= {row['minimum']:g}: {status})")
    print(f"match_identical: {result['match_identical']}\nwrote {out / 'bench.json'} and {out / 'bench.md'}")
    return ordered


def compare_models(
    settings: Settings, device: torch.device, sections: Sections, result: dict[str, Any],
    profiles: dict[str, tuple[str, Profile]],
) -> torch.Tensor:
    """YOLACT (fp32, bf16) against Mask R-CNN (fp32): fills ``result["yolact"]`` and ``result["maskrcnn"]``
    and the profiles of their targets; returns YOLACT's priors ``[P, 4]`` for the matching benchmark."""
    overrides = list(YOLACT_OVERRIDES) + (list(QUICK_OVERRIDES) if settings.quick else [])
    params = load(REPO_ROOT / YOLACT_CONFIG, overrides)
    size, batch = params.input.size, settings.batch
    generator = torch.Generator().manual_seed(0)
    images = random_images(batch, size, generator).to(device)
    instances = to_device(random_instances(batch, size, settings.instances_per_image, NUM_CLASSES, generator), device)
    mr_targets = maskrcnn_targets(instances, size)
    yolact = build_model(params, NUM_CLASSES).to(device)
    maskrcnn = build_maskrcnn(size, **dict(settings.maskrcnn_options)).to(device)
    # One copy per workload: each keeps its own memory format, and the inference copies keep their fresh
    # weights (a few SGD steps on random targets make Mask R-CNN detect nothing, which skips its mask head).
    models = {(use, f"yolact {p}"): copy.deepcopy(yolact) for use in ("train", "infer") for p in PRECISIONS}
    models |= {(use, "maskrcnn fp32"): copy.deepcopy(maskrcnn) for use in ("train", "infer")}
    del yolact, maskrcnn

    def infer_step(name: str, channels_last: bool, n: int = batch) -> Step:
        model = models["infer", name]
        if name.startswith("maskrcnn"):
            return maskrcnn_infer_step(model, images[:n], channels_last)
        return yolact_infer_step(model, images[:n], params.eval, params.loss.use_focal_loss,
                                 PRECISIONS[name.split()[1]], channels_last)

    def train_step(name: str, channels_last: bool, n: int = batch) -> Step:
        model = models["train", name]
        if name.startswith("maskrcnn"):
            return maskrcnn_train_step(model, images[:n], mr_targets[:n], params.train, channels_last)
        return yolact_train_step(model, images[:n], instances[:n], params.loss, params.train,
                                 PRECISIONS[name.split()[1]], channels_last)

    names = [*(f"yolact {p}" for p in PRECISIONS), "maskrcnn fp32"]
    with sections("memory-format choice"):
        formats = {name: choose_format(lambda c: infer_step(name, c), device, settings.warmup) for name in names}
    cl = {name: choice.channels_last for name, choice in formats.items()}

    with sections("inference, interleaved"):
        infer_steps = {name: infer_step(name, cl[name]) for name in names}
        # The format probes left each model warm in its chosen format: one more timed run instead of a warm-up.
        infer = measure_interleaved(infer_steps, device, 0, settings.warmup + settings.repeats)
        detections = {name: step() for name, step in infer_steps.items()}

    with sections("FLOPs (batch 1)"):
        yolact = models["infer", "yolact fp32"]
        first = set_memory_format(yolact, images[:1], cl["yolact fp32"])
        forward_flops = count_flops(yolact.eval(), first)
        with torch.no_grad():
            priors = yolact(first)["priors"]
        mr_forward_flops = flops_of(infer_step("maskrcnn fp32", cl["maskrcnn fp32"], n=1))
        # Training FLOPs on the training copies: their SGD step must not touch the inference weights.
        train_flops = flops_of(train_step("yolact fp32", cl["yolact fp32"], n=1))
        mr_train_flops = flops_of(train_step("maskrcnn fp32", cl["maskrcnn fp32"], n=1))

    with sections("training, interleaved"):
        train_steps = {name: train_step(name, cl[name]) for name in names}
        train = measure_interleaved(train_steps, device, settings.warmup, settings.repeats)
    peaks = {name: entry["gflops"] for name, entry in result["matmul"].items()}

    def train_entry(name: str, flops: int) -> dict[str, Any]:
        gflops = flops / 1e9 * batch / train[name].best
        precision = name.split()[1]
        return {"channels_last": cl[name], "images_per_s": batch / train[name].best, "gflops": gflops,
                "peak_share": gflops / peaks[precision], **train[name].as_dict()}

    def infer_entry(name: str, flops: int) -> dict[str, Any]:
        per_image = infer[name].best / batch
        gflops = flops / 1e9 / per_image
        precision = name.split()[1]
        return {"channels_last": cl[name], "seconds_per_image": per_image, "gflops": gflops,
                "peak_share": gflops / peaks[precision],
                "detections_per_image": sum(len(d["scores"]) for d in detections[name]) / batch,
                **infer[name].as_dict()}

    flops_method = "torch.utils.flop_counter over one step at batch 1 (forward + loss + backward for training)"
    result["yolact"] = {
        "depth": params.model.backbone.depth, "image_size": size, "batch": batch,
        "score_threshold": params.eval.score_threshold, "flops_method": flops_method,
        "forward_gflops_per_image": forward_flops / 1e9, "train_gflops_per_image": train_flops / 1e9,
        "memory_format_probe_s": {p: formats[f"yolact {p}"].probe_s for p in PRECISIONS},
        "train": {p: train_entry(f"yolact {p}", train_flops) for p in PRECISIONS},
        "infer": {p: infer_entry(f"yolact {p}", forward_flops) for p in PRECISIONS},
    }
    result["maskrcnn"] = {
        "image_size": size, "batch": batch, "options": dict(settings.maskrcnn_options), "flops_method": flops_method,
        "forward_gflops_per_image": mr_forward_flops / 1e9, "train_gflops_per_image": mr_train_flops / 1e9,
        "memory_format_probe_s": {"fp32": formats["maskrcnn fp32"].probe_s},
        "train": {"fp32": train_entry("maskrcnn fp32", mr_train_flops)},
        "infer": {"fp32": infer_entry("maskrcnn fp32", mr_forward_flops)},
    }
    profiles["train_fp32_vs_maskrcnn"] = (
        f"One YOLACT fp32 training step (batch {batch}), operators by self time.",
        lambda: top_ops(train_steps["yolact fp32"], device))
    profiles["train_bf16_peak_share"] = (
        f"One YOLACT bf16 training step (batch {batch}), operators by self time.",
        lambda: top_ops(train_steps["yolact bf16"], device))
    profiles["infer_bf16_speedup_vs_maskrcnn_fp32"] = (
        f"One YOLACT bf16 inference step (batch {batch}: forward + detect), operators by self time.",
        lambda: top_ops(infer_steps["yolact bf16"], device))
    return priors


def default_train_step(
    params: Params, prepared: Path, loader: DataLoader, device: torch.device
) -> tuple[Step, dict[str, Any]]:
    """A training step of the default config's model (its precision and memory format) on the first batch of
    ``loader``, and what it is."""
    model = build_model(params, num_classes=len(read_label_map(prepared))).to(device)
    images, targets = next(iter(loader))
    train = params.train
    step = yolact_train_step(model, images.to(device), to_device(targets, device), params.loss, train,
                             autocast_dtype(train.precision, device), train.channels_last)
    bb = params.model.backbone
    return step, {
        "model": f"R-{bb.depth} (base {bb.base_channels} channels) at {params.input.size} px",
        "precision": train.precision, "channels_last": train.channels_last, "num_workers": params.data.num_workers,
    }


def ensure_prepared(prepared: Path, args: argparse.Namespace) -> None:
    """The loader comparison needs prepared data: run the prepare stage for the default path, else stop."""
    if (prepared / "train.json").is_file():
        return
    if args.prepared != "data/prepared" or args.quick:
        sys.exit(f"error: {prepared} holds no prepared data (train.json); run `python -m stages.prepare` first")
    print(f"[bench] {prepared} is missing: running `python -m stages.prepare --params {args.params}` first", flush=True)
    subprocess.run([sys.executable, "-m", "stages.prepare", "--params", args.params], cwd=REPO_ROOT, check=True)


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)")
    parser.add_argument("--params", default="params.yaml", help="the default config, for the loader comparison")
    parser.add_argument("--prepared", default="data/prepared", help="prepared data of --params")
    parser.add_argument("--out", default="reports", help="where bench.json and bench.md go")
    return parser


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, PipelineError) as err:
        sys.exit(f"error: {err}")

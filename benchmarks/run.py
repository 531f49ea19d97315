"""``python -m benchmarks.run``: measure everything in one process and write ``reports/bench.{json,md}``.

Sections, in order: peak matmul (fp32, bf16); YOLACT R-50 at 550 px, batch 2 (FLOPs, training and
inference in fp32 and bf16, each in its faster memory format); torchvision's Mask R-CNN at the same
size and batch (fp32); ``match_batch`` against the reference loop; the data loader against training
at the default config (params.yaml). Targets that are missed get a profile of their workload.
``--quick`` runs the same code on tiny sizes (the smoke test).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision

from pipeline.config import REPO_ROOT, Params, load, resolve_path
from pipeline.data import read_label_map
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.model import build_model, count_flops
from pipeline.train import autocast_dtype, select_device

from . import matching as match_bench
from .loader import loader_throughput, train_loader
from .profiling import top_ops, top_functions
from .report import check_targets, render_markdown
from .timing import Sections, measure
from .workloads import (
    Step,
    build_maskrcnn,
    flops_of,
    maskrcnn_infer_step,
    maskrcnn_targets,
    maskrcnn_train_step,
    matmul_gflops,
    measure_best_format,
    random_images,
    random_instances,
    to_device,
    yolact_infer_step,
    yolact_train_step,
)

YOLACT_CONFIG = "configs/yolact550_r50_coco.yaml"
YOLACT_OVERRIDES = ("data.source=synthetic", "model.backbone.pretrained=null", "train.precision=fp32")
# The YOLACT recipe shrunk for the smoke test: same code paths, a fraction of a second per step.
QUICK_OVERRIDES = ("input.size=64", "model.backbone.depth=18", "model.backbone.base_channels=8",
                   "model.fpn.out_channels=16", "model.head.num_prototypes=4")
NUM_CLASSES = 80  # COCO, as the R-50 recipe is trained
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Settings:
    batch: int = 2
    instances_per_image: int = 4
    matmul_size: int = 2048  # CPU; CUDA uses matmul_size_cuda
    matmul_size_cuda: int = 8192
    match_batch: int = 8
    match_gt: int = 100
    loader_batches: int = 20
    warmup: int = 1
    repeats: int = 3
    default_train_repeats: int = 5
    maskrcnn_options: tuple[tuple[str, int], ...] = ()  # MaskRCNN arguments beyond torchvision's defaults
    quick: bool = False


# Mask R-CNN's RoI heads cost the same at any image size: the smoke test samples far fewer RoIs.
QUICK = Settings(matmul_size=256, matmul_size_cuda=1024, match_batch=2, match_gt=10, loader_batches=2,
                 warmup=0, repeats=1, default_train_repeats=1, quick=True,
                 maskrcnn_options=(("rpn_pre_nms_top_n_train", 64), ("rpn_post_nms_top_n_train", 16),
                                   ("rpn_pre_nms_top_n_test", 64), ("rpn_post_nms_top_n_test", 16),
                                   ("box_batch_size_per_image", 16)))


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default 3, quick 2)")
    parser.add_argument("--params", default="params.yaml", help="the default config, for the loader comparison")
    parser.add_argument("--prepared", default="data/prepared", help="prepared data of --params")
    parser.add_argument("--out", default="reports", help="where bench.json and bench.md go")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else Settings()
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    device = select_device(args.device)
    default_params = load(resolve_path(args.params))
    prepared = resolve_path(args.prepared)
    ensure_prepared(prepared, args)

    torch.manual_seed(0)
    sections = Sections()
    result: dict[str, Any] = {"command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])}
    profile_steps: dict[str, tuple[str, Callable[[], list[dict[str, Any]]]]] = {}

    with sections("peak matmul"):
        size = settings.matmul_size_cuda if device.type == "cuda" else settings.matmul_size
        result["matmul"] = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gflops, timing = matmul_gflops(size, dtype, device, settings.warmup + 1, settings.repeats + 2)
            result["matmul"][name] = {"size": size, "gflops": gflops, **timing.as_dict()}

    overrides = list(YOLACT_OVERRIDES) + (list(QUICK_OVERRIDES) if settings.quick else [])
    yolact_params = load(REPO_ROOT / YOLACT_CONFIG, overrides)
    image_size = yolact_params.input.size
    generator = torch.Generator().manual_seed(0)
    images = random_images(settings.batch, image_size, generator).to(device)
    instances = to_device(random_instances(settings.batch, image_size, settings.instances_per_image, NUM_CLASSES, generator), device)
    yolact = build_model(yolact_params, NUM_CLASSES).to(device)

    with sections("YOLACT FLOPs and priors"):
        forward_flops = count_flops(yolact.eval(), images[:1])
        train_flops = flops_of(yolact_train_step(
            yolact, images[:1], instances[:1], yolact_params.loss, yolact_params.train, None, False))
        with torch.no_grad():
            priors = yolact.eval()(images[:1])["priors"]

    def yolact_train(precision: str, channels_last: bool) -> Step:
        return yolact_train_step(yolact, images, instances, yolact_params.loss, yolact_params.train,
                                 PRECISIONS[precision], channels_last)

    def yolact_infer(precision: str, channels_last: bool) -> Step:
        return yolact_infer_step(yolact, images, yolact_params.eval, yolact_params.loss.use_focal_loss,
                                 PRECISIONS[precision], channels_last)

    peaks = {name: entry["gflops"] for name, entry in result["matmul"].items()}
    yolact_result: dict[str, Any] = {
        "depth": yolact_params.model.backbone.depth,
        "forward_gflops_per_image": forward_flops / 1e9,
        "train_gflops_per_image": train_flops / 1e9,
        "train_flops_method": "torch.utils.flop_counter over one forward + loss + backward step at batch 1",
        "train": {}, "infer": {},
    }
    with sections("YOLACT training"):
        for precision in PRECISIONS:
            choice = measure_best_format(lambda cl: yolact_train(precision, cl), device, settings.warmup, settings.repeats)
            per_s = settings.batch / choice.timing.best
            gflops = train_flops / 1e9 * per_s
            yolact_result["train"][precision] = {
                **choice.as_dict(), "images_per_s": per_s, "gflops": gflops, "peak_share": gflops / peaks[precision],
            }
    with sections("YOLACT inference"):
        for precision in PRECISIONS:
            choice = measure_best_format(lambda cl: yolact_infer(precision, cl), device, settings.warmup, settings.repeats)
            detections = yolact_infer(precision, choice.channels_last)()
            per_image = choice.timing.best / settings.batch
            gflops = forward_flops / 1e9 / per_image
            yolact_result["infer"][precision] = {
                **choice.as_dict(), "seconds_per_image": per_image, "gflops": gflops,
                "peak_share": gflops / peaks[precision],
                "detections_per_image": sum(len(d["scores"]) for d in detections) / len(detections),
            }
    result["yolact"] = yolact_result

    maskrcnn = build_maskrcnn(image_size, **dict(settings.maskrcnn_options)).to(device)
    mr_targets = maskrcnn_targets(instances, image_size)
    maskrcnn_result: dict[str, Any] = {"train": {}, "infer": {}}
    with sections("Mask R-CNN training"):
        choice = measure_best_format(
            lambda cl: maskrcnn_train_step(maskrcnn, images, mr_targets, yolact_params.train, cl),
            device, settings.warmup, settings.repeats)
        maskrcnn_result["train"]["fp32"] = {**choice.as_dict(), "images_per_s": settings.batch / choice.timing.best}
    with sections("Mask R-CNN inference"):
        choice = measure_best_format(lambda cl: maskrcnn_infer_step(maskrcnn, images, cl), device,
                                     settings.warmup, settings.repeats)
        detections = maskrcnn_infer_step(maskrcnn, images, choice.channels_last)()
        maskrcnn_result["forward_gflops_per_image"] = flops_of(
            maskrcnn_infer_step(maskrcnn, images[:1], choice.channels_last)) / 1e9
        maskrcnn_result["infer"]["fp32"] = {
            **choice.as_dict(), "seconds_per_image": choice.timing.best / settings.batch,
            "detections_per_image": sum(len(d["scores"]) for d in detections) / len(detections),
        }
    result["maskrcnn"] = maskrcnn_result
    ours_train, theirs_train = yolact_result["train"], maskrcnn_result["train"]["fp32"]["images_per_s"]
    theirs_infer = maskrcnn_result["infer"]["fp32"]["seconds_per_image"]
    yolact_result["train_bf16_vs_maskrcnn_fp32"] = ours_train["bf16"]["images_per_s"] / theirs_train
    yolact_result["infer_fp32_speedup_vs_maskrcnn_fp32"] = theirs_infer / yolact_result["infer"]["fp32"]["seconds_per_image"]
    del maskrcnn

    with sections("matching"):
        from tests.reference_match import reference_match

        boxes, labels = match_bench.random_ground_truth(settings.match_batch, settings.match_gt, NUM_CLASSES, generator)
        loss = yolact_params.loss
        result["matching"] = match_bench.compare_matching(
            boxes, labels, priors, loss.pos_iou, loss.neg_iou, reference_match, device, settings.repeats)

    with sections("data loader"):
        loader = train_loader(default_params, prepared)
        result["loader"] = {
            "num_workers": default_params.data.num_workers, "batch_size": default_params.train.batch_size,
            **loader_throughput(loader, settings.loader_batches),
        }
    with sections("default-config training"):
        result["default_train"] = default_training(default_params, prepared, device, settings)

    result["train_fp32_vs_maskrcnn"] = ours_train["fp32"]["images_per_s"] / theirs_train
    result["train_bf16_peak_share"] = ours_train["bf16"]["peak_share"]
    result["infer_bf16_speedup_vs_maskrcnn_fp32"] = theirs_infer / yolact_result["infer"]["bf16"]["seconds_per_image"]
    result["match_speedup"] = result["matching"]["speedup"]
    result["match_identical"] = result["matching"]["identical"]
    result["loader_vs_train"] = result["loader"]["images_per_s"] / result["default_train"]["images_per_s"]
    result["targets"] = check_targets(result)

    # What to profile when a target is missed: (description, profile of one warm call).
    def warm_ops(build: Callable[[], Step]) -> Callable[[], list[dict[str, Any]]]:
        def run() -> list[dict[str, Any]]:
            step = build()
            step()
            return top_ops(step, device)
        return run

    fp32_cl, bf16_cl = ours_train["fp32"]["channels_last"], ours_train["bf16"]["channels_last"]
    profile_steps["train_fp32_vs_maskrcnn"] = (
        "One YOLACT fp32 training step (batch 2), operators by self time.",
        warm_ops(lambda: yolact_train("fp32", fp32_cl)))
    profile_steps["train_bf16_peak_share"] = (
        "One YOLACT bf16 training step (batch 2), operators by self time.",
        warm_ops(lambda: yolact_train("bf16", bf16_cl)))
    profile_steps["infer_bf16_speedup_vs_maskrcnn_fp32"] = (
        "One YOLACT bf16 inference step (batch 2, forward + detect), operators by self time.",
        warm_ops(lambda: yolact_infer("bf16", yolact_result["infer"]["bf16"]["channels_last"])))
    profile_steps["match_speedup"] = (
        f"One `match_batch` call ({settings.match_batch} images), operators by self time.",
        lambda: top_ops(lambda: match_bench.match_batch(
            [b.to(device) for b in boxes], [l.to(device) for l in labels], priors, loss.pos_iou, loss.neg_iou), device))
    profile_steps["loader_vs_train"] = (
        f"{settings.loader_batches} loader batches, Python functions by own time (cProfile).",
        lambda: top_functions(lambda: loader_throughput(train_loader(default_params, prepared), settings.loader_batches)))

    result["profiles"] = {}
    with sections("profiles of missed targets"):
        for row in result["targets"]:
            if row["met"] is False:
                what, profile = profile_steps[row["key"]]
                result["profiles"][row["key"]] = {"what": what, "top": profile()}

    result["sections"] = dict(sections.seconds)
    result["machine"] = machine_info(device)
    result["settings"] = {**asdict(settings), "image_size": image_size,
                          "score_threshold": yolact_params.eval.score_threshold}
    ordered = {key: result[key] for key in ("train_fp32_vs_maskrcnn", "train_bf16_peak_share",
                                            "infer_bf16_speedup_vs_maskrcnn_fp32", "match_speedup",
                                            "match_identical", "loader_vs_train", "targets", "machine")}
    ordered.update({k: v for k, v in result.items() if k not in ordered})

    out = resolve_path(args.out)
    atomic_write_json(out / "bench.json", ordered)
    atomic_write_text(out / "bench.md", render_markdown(ordered))
    print("\n" + sections.table())
    print("\n" + "\n".join(
        f"{row['key']}: {_number(row['value'])} (>= {row['minimum']:g}: {'met' if row['met'] else 'MISSED'})"
        for row in result["targets"]))
    print(f"match_identical: {result['match_identical']}\nwrote {out / 'bench.json'} and {out / 'bench.md'}")
    return ordered


def default_training(params: Params, prepared: Path, device: torch.device, settings: Settings) -> dict[str, Any]:
    """Training img/s of the default config's model on one real batch of its loader (its precision and format)."""
    model = build_model(params, num_classes=len(read_label_map(prepared))).to(device)
    batch_images, targets = next(iter(train_loader(params, prepared)))
    train = params.train
    step = yolact_train_step(model, batch_images.to(device), to_device(targets, device), params.loss, train,
                             autocast_dtype(train.precision, device), train.channels_last)
    timing = measure(step, device, settings.warmup + 1, settings.default_train_repeats)
    bb = params.model.backbone
    return {
        "model": f"R-{bb.depth} (base {bb.base_channels} channels) at {params.input.size} px",
        "precision": train.precision, "channels_last": train.channels_last, "batch_size": len(batch_images),
        "images_per_s": len(batch_images) / timing.best, **timing.as_dict(),
    }


def ensure_prepared(prepared: Path, args: argparse.Namespace) -> None:
    """The loader comparison needs the prepared data: run the prepare stage for the default path, else stop."""
    if (prepared / "train.json").is_file():
        return
    if args.prepared != "data/prepared" or args.quick:
        sys.exit(f"error: {prepared} has no prepared data (train.json); run `python -m stages.prepare` first")
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


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()

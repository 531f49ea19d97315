"""``python -m benchmarks.run``: measure everything in one process and write ``reports/bench.{json,md}``.

Sections, in order: the attainable peak per dtype (:mod:`benchmarks.peak`); YOLACT R-50 against
torchvision's Mask R-CNN R-50-FPN at 550 px, both channels-last on the same threads (FLOPs; inference at
batch 1 and training at batch 2, each at fp32 and at bf16 autocast); the batched matcher against the
seed's loop; the training input path against training at the default config (params.yaml), and at the
GPU preset's augmentation; where evaluation time goes at the default config; finally the profiles of the
missed targets. ``--quick`` runs the same code on tiny sizes (the smoke test).
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from pipeline.config import REPO_ROOT, ConfigError, Params, load, portable_uri, resolve_path
from pipeline.data.layout import read_label_map
from pipeline.utils.distributed import autocast_dtype, resolve_precision, select_device
from pipeline.utils.errors import PipelineError
from pipeline.models.loading import load_model
from pipeline.utils.io import atomic_write_json, atomic_write_text
from pipeline.models.yolact.model import build_model

from . import matching as match_bench
from .evaluation_time import evaluation_breakdown
from .onnx_runtime import compare_onnx_forward
from .loader import loader_against_training, training_loader, transform_breakdown, worker_rate
from .machine import machine_info
from .peak import PeakShapes, attainable_peak
from .profiling import top_ops
from .report import MODEL_NAMES, TOP_LEVEL, check_targets, describe_methods, render_markdown
from .timing import Sections, Timing, measure_interleaved
from .workloads import (
    Step,
    build_maskrcnn,
    flops_of,
    maskrcnn_infer_step,
    maskrcnn_targets,
    maskrcnn_train_step,
    random_images,
    random_instances,
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
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # the autocast dtype of each (None: autocast off)


@dataclass(frozen=True)
class Settings:
    infer_batch: int = 1
    train_batch: int = 2
    instances_per_image: int = 4
    # 69 = 550 / 8: the P3 level of both FPNs, where their 3x3 convolutions cost most.
    peak: PeakShapes = PeakShapes(matmul=2048, conv_batch=2, conv_channels=256, conv_size=69)
    peak_cuda: PeakShapes = PeakShapes(matmul=8192, conv_batch=32, conv_channels=256, conv_size=69)
    match_batch: int = 8
    match_gt: int = 100
    loader_batches: int = 12
    loader_profile_images: int = 24
    eval_split: str = "val"
    eval_images: Optional[int] = None  # the first images of eval_split broken down (None: all)
    warmup: int = 1  # untimed calls before the timed ones (>= 1: a model step's first runs under torch.profiler)
    repeats: int = 5  # timed calls per figure (the median counts)
    # Timed calls of each bf16 model step where bf16 is emulated: one emulated Mask R-CNN training step
    # takes minutes on a 2-core AVX2 CPU. Both sides of a bf16 ratio get the same number.
    emulated_bf16_repeats: int = 1
    maskrcnn_options: tuple[tuple[str, int], ...] = ()  # MaskRCNN arguments beyond torchvision's defaults
    quick: bool = False


# Mask R-CNN's RoI heads cost the same at any image size: the smoke test samples far fewer RoIs and keeps
# fewer detections (its mask head runs on each).
QUICK = Settings(peak=PeakShapes(256, 1, 32, 16), peak_cuda=PeakShapes(1024, 2, 64, 32), match_batch=2,
                 match_gt=10, loader_batches=2, loader_profile_images=2, eval_images=8, repeats=1, quick=True,
                 maskrcnn_options=(("rpn_pre_nms_top_n_train", 64), ("rpn_post_nms_top_n_train", 16),
                                   ("rpn_pre_nms_top_n_test", 64), ("rpn_post_nms_top_n_test", 16),
                                   ("box_batch_size_per_image", 16), ("box_detections_per_img", 10)))

OpTable = list[dict[str, Any]]
# Per target key: what is profiled, and a call giving its operator tables by name.
Profiles = dict[str, tuple[str, Callable[[], dict[str, OpTable]]]]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmarks, write ``bench.json`` and ``bench.md`` under ``--out`` and return the result."""
    args = _parser().parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    if args.emulated_bf16_repeats is not None:
        settings = replace(settings, emulated_bf16_repeats=args.emulated_bf16_repeats)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    params_file = resolve_path(args.params)
    # The default config's model from scratch: weights never change a timing, and a fresh clone has no warm start.
    default_params = load(params_file, ["model.backbone.pretrained=null"])
    prepared = resolve_path(args.prepared)
    ensure_prepared(prepared, params_file, default_params)
    torch.manual_seed(0)

    sections = Sections()
    arguments = sys.argv[1:] if argv is None else argv
    result: dict[str, Any] = {"command": " ".join(["python -m benchmarks.run", *map(portable_uri, arguments)])}
    result["machine"] = machine_info(device)
    profiles: Profiles = {}

    with sections("attainable peak"):
        shapes = settings.peak_cuda if device.type == "cuda" else settings.peak
        result["peak"] = {name: attainable_peak(shapes, dtype, device, settings.warmup, settings.repeats)
                          for name, dtype in DTYPES.items()}

    preset = load(REPO_ROOT / YOLACT_CONFIG, [*YOLACT_OVERRIDES, *(QUICK_OVERRIDES if settings.quick else ())])
    priors = compare_models(preset, settings, device, sections, result, profiles)

    if device.type == "cpu":
        with sections("ONNX Runtime forward"):
            result["onnx_runtime"] = compare_onnx_forward(build_model(preset, NUM_CLASSES), preset.input.size,
                                                          settings.warmup, settings.repeats)

    with sections("matching"):
        generator = torch.Generator().manual_seed(1)
        boxes, labels = match_bench.random_ground_truth(settings.match_batch, settings.match_gt, NUM_CLASSES, generator)
        loss = preset.loss
        result["matching"] = match_bench.compare_matching(
            boxes, labels, priors, loss.pos_iou, loss.neg_iou, device, settings.warmup, settings.repeats)
        boxes, labels = [b.to(device) for b in boxes], [l.to(device) for l in labels]
        profiles["match_speedup"] = (
            f"One `match_batch` call ({settings.match_batch} images x {settings.match_gt} GTs), operators by self time.",
            lambda: {"match_batch": top_ops(
                lambda: match_bench.match_batch(boxes, labels, priors, loss.pos_iou, loss.neg_iou), device)})

    with sections("training input path"):
        result["loader"] = compare_loading(default_params, preset, prepared, device, settings,
                                           result["training"]["yolact"]["fp32"]["images_per_s"], profiles)

    with sections("evaluation time"):
        model_path = resolve_path(args.model) if args.model else params_file.parent / "models/model.pt"
        model, eval_params, weights = evaluation_model(default_params, prepared, device, model_path)
        category_ids = [entry["category_id"] for entry in read_label_map(prepared)]
        result["evaluation"] = {"weights": weights, **evaluation_breakdown(
            model, eval_params, prepared, settings.eval_split, category_ids, device, settings.eval_images)}

    inference, training = result["inference"], result["training"]
    for precision in PRECISIONS:
        result[f"infer_{precision}_vs_maskrcnn_{precision}"] = (
            inference["maskrcnn"][precision]["seconds_per_image"] / inference["yolact"][precision]["seconds_per_image"])
        result[f"train_{precision}_vs_maskrcnn_{precision}"] = (
            training["yolact"][precision]["images_per_s"] / training["maskrcnn"][precision]["images_per_s"])
    result["train_bf16_peak_share"] = training["yolact"]["bf16"]["peak_share"]
    result["match_speedup"] = result["matching"]["speedup"]
    result["match_identical"] = result["matching"]["identical"]
    result["loader_vs_train"] = result["loader"]["default"]["worker_images_per_s"] / result["loader"]["default"]["train_images_per_s"]
    result["targets"] = check_targets(result)

    result["profiles"] = {}
    with sections("profiles of missed targets"):
        for row in result["targets"]:
            if row["met"] is False:
                what, tables = profiles[row["key"]]
                result["profiles"][row["key"]] = {"what": what, "tables": tables()}

    result["sections"] = dict(sections.seconds)
    result["load_average"] = dict(sections.load)
    result["settings"] = asdict(settings)
    result["methods"] = describe_methods(result)
    ordered = {key: result[key] for key in (*TOP_LEVEL, "targets", "machine", "methods")}
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
    params: Params, settings: Settings, device: torch.device, sections: Sections, result: dict[str, Any],
    profiles: Profiles,
) -> Tensor:
    """YOLACT against Mask R-CNN at fp32 and bf16: fills ``result["flops"]``, ``result["inference"]`` and
    ``result["training"]`` and the profiles of their targets; returns YOLACT's priors ``[P, 4]`` for matching.

    Every step gets its own copy of its model's initial weights (training copies take SGD steps; the
    inference copies keep fresh weights, which detect the full 100 per image). The two models of one
    precision are timed in turn, after ``settings.warmup`` calls each, the first under torch.profiler.
    """
    size = params.input.size
    generator = torch.Generator().manual_seed(0)
    images = random_images(settings.train_batch, size, generator).to(device)
    instances = to_device(random_instances(settings.train_batch, size, settings.instances_per_image, NUM_CLASSES,
                                           generator), device)
    initial = {"yolact": build_model(params, NUM_CLASSES).to(device),
               "maskrcnn": build_maskrcnn(size, **dict(settings.maskrcnn_options)).to(device)}

    def infer_step(model: str, precision: str, batch: int = settings.infer_batch) -> Step:
        copy_ = copy.deepcopy(initial[model])
        if model == "yolact":
            return yolact_infer_step(copy_, images[:batch], params.eval, params.loss.use_focal_loss,
                                     PRECISIONS[precision])
        return maskrcnn_infer_step(copy_, images[:batch], params.eval.mask_threshold, PRECISIONS[precision])

    def train_step(model: str, precision: str, batch: int = settings.train_batch) -> Step:
        copy_ = copy.deepcopy(initial[model])
        if model == "yolact":
            return yolact_train_step(copy_, images[:batch], instances[:batch], params.loss, params.train,
                                     PRECISIONS[precision])
        return maskrcnn_train_step(copy_, images[:batch], maskrcnn_targets(instances[:batch], size), params.train,
                                   PRECISIONS[precision])

    with sections("FLOPs (fp32, batch 1)"):
        flops = {model: {"infer": flops_of(infer_step(model, "fp32", 1)), "train": flops_of(train_step(model, "fp32", 1))}
                 for model in MODEL_NAMES}
        with torch.no_grad():
            priors = initial["yolact"].eval()(images[:1])["priors"]
    result["models"] = {"yolact": f"YOLACT R-{params.model.backbone.depth}", "maskrcnn": "Mask R-CNN R-50-FPN"}
    result["flops"] = {model: {"forward_gflops_per_image": f["infer"] / 1e9, "train_gflops_per_image": f["train"] / 1e9}
                       for model, f in flops.items()}

    native_bf16 = result["machine"]["bf16_native"]
    repeats = {"fp32": settings.repeats, "bf16": settings.repeats if native_bf16 else settings.emulated_bf16_repeats}
    peaks = {precision: result["peak"][precision]["gflops"] for precision in PRECISIONS}
    op_tables: dict[tuple[str, str, str], OpTable] = {}  # (kind, model, precision) -> its profiled warm-up
    ev, heads, train = params.eval, initial["maskrcnn"].roi_heads, params.train
    inference: dict[str, Any] = {
        "batch": settings.infer_batch, "image_size": size, "repeats": repeats,
        "postprocess": {
            "yolact": {"score_threshold": ev.score_threshold, "nms": ev.nms, "nms_iou": ev.nms_iou, "top_k": ev.top_k,
                       "max_detections": ev.max_detections, "mask_threshold": ev.mask_threshold},
            "maskrcnn": {"score_threshold": heads.score_thresh, "nms": "standard", "nms_iou": heads.nms_thresh,
                         "max_detections": heads.detections_per_img, "mask_threshold": ev.mask_threshold},
        },
        "yolact": {}, "maskrcnn": {}}
    training: dict[str, Any] = {
        "batch": settings.train_batch, "image_size": size, "instances_per_image": settings.instances_per_image,
        "repeats": repeats, "optimizer": {"name": train.optimizer, "lr": train.lr, "momentum": train.momentum,
                                          "weight_decay": train.weight_decay, "grad_clip": train.grad_clip},
        "yolact": {}, "maskrcnn": {}}
    for precision in PRECISIONS:
        with sections(f"inference {precision}, interleaved"):
            steps = {model: infer_step(model, precision) for model in MODEL_NAMES}
            timings, outputs, tables = profiled_in_turn(steps, device, settings.warmup, repeats[precision])
            for model, timing in timings.items():
                op_tables["infer", model, precision] = tables[model]
                per_image = timing.median / settings.infer_batch
                detections = outputs[model]
                gflops = flops[model]["infer"] / 1e9 / per_image
                inference[model][precision] = {
                    "seconds_per_image": per_image, "gflops": gflops, "peak_share": gflops / peaks[precision],
                    "detections_per_image": sum(len(d["scores"]) for d in detections) / settings.infer_batch,
                    "mask_shape": list(detections[0]["masks"].shape[1:]), "mask_dtype": str(detections[0]["masks"].dtype),
                    **timing.as_dict()}
        with sections(f"training {precision}, interleaved"):
            steps = {model: train_step(model, precision) for model in MODEL_NAMES}
            timings, _, tables = profiled_in_turn(steps, device, settings.warmup, repeats[precision])
            for model, timing in timings.items():
                op_tables["train", model, precision] = tables[model]
                images_per_s = settings.train_batch / timing.median
                gflops = flops[model]["train"] / 1e9 * images_per_s
                training[model][precision] = {"images_per_s": images_per_s, "gflops": gflops,
                                              "peak_share": gflops / peaks[precision], **timing.as_dict()}
    result["inference"], result["training"] = inference, training

    for precision in PRECISIONS:
        for kind, label, batch in (("infer", "inference", settings.infer_batch), ("train", "training", settings.train_batch)):
            tables = {f"{MODEL_NAMES[model]} {precision} {label}": op_tables[kind, model, precision] for model in MODEL_NAMES}
            profiles[f"{kind}_{precision}_vs_maskrcnn_{precision}"] = (
                f"The first warm-up call of each side's {precision} {label} step (batch {batch}), operators by self time.",
                lambda tables=tables: tables)
    profiles["train_bf16_peak_share"] = (
        f"The first warm-up call of YOLACT's bf16 training step (batch {settings.train_batch}), operators by self time.",
        lambda: {"YOLACT bf16 training": op_tables["train", "yolact", "bf16"]})
    return priors


def profiled_in_turn(
    steps: dict[str, Step], device: torch.device, warmup: int, repeats: int
) -> tuple[dict[str, Timing], dict[str, Any], dict[str, OpTable]]:
    """:func:`measure_interleaved` of ``steps`` whose first warm-up call runs under torch.profiler (the
    operator table kept for a missed target's profile at no extra run); returns the timings, the output of
    each step's last timed call and the operator tables."""
    outputs: dict[str, Any] = {}

    def keeping_output(name: str, step: Step) -> Step:
        return lambda: outputs.__setitem__(name, step())

    kept = {name: keeping_output(name, step) for name, step in steps.items()}
    tables = {name: top_ops(step, device) for name, step in kept.items()}
    return measure_interleaved(kept, device, warmup - 1, repeats), outputs, tables


def compare_loading(
    default: Params, preset: Params, prepared: Path, device: torch.device, settings: Settings,
    yolact_fp32_images_per_s: float, profiles: Profiles,
) -> dict[str, Any]:
    """One worker of the training input path at the default config, timed in turn with the default training
    step, and at the GPU preset's input section (its size and augmentation) on the same prepared data, against
    ``yolact_fp32_images_per_s``, the preset model's fp32 training rate measured here."""
    loader = training_loader(default, prepared)
    step, about = default_train_step(default, prepared, loader, device)
    default_rate = {**about, **loader_against_training(loader, step, device, settings.loader_batches)}
    profiles["loader_vs_train"] = (
        f"Loading {settings.loader_profile_images} training samples one by one as a worker does, time per step "
        "(reading = image decode + annotation masks), batching excluded.",
        lambda: {"loading": transform_breakdown(loader.dataset.dataset, settings.loader_profile_images)})
    gpu_params = replace(default, input=preset.input, train=replace(default.train, batch_size=preset.train.batch_size))
    augment = preset.input.augment
    gpu_rate = worker_rate(training_loader(gpu_params, prepared), settings.loader_batches)
    return {
        "default": default_rate,
        "gpu_preset": {
            "input": f"{preset.input.size} px, photometric {augment.photometric}, expand {augment.expand} "
                     f"(up to {augment.max_expand}x), random crop {augment.random_crop}, flip {augment.hflip}",
            "num_workers": preset.data.num_workers, **gpu_rate,
            "yolact_fp32_train_images_per_s": yolact_fp32_images_per_s,
            "workers_to_feed_yolact_fp32_here": yolact_fp32_images_per_s / gpu_rate["worker_images_per_s"],
        },
    }


def default_train_step(
    params: Params, prepared: Path, loader: torch.utils.data.DataLoader, device: torch.device
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
        "precision": resolve_precision(train.precision, device), "channels_last": train.channels_last,
        "num_workers": params.data.num_workers,
    }


def evaluation_model(
    params: Params, prepared: Path, device: torch.device, path: Path
) -> tuple[torch.nn.Module, Params, str]:
    """The trained model at ``path`` with ``params`` taking its input and loss sections (as the evaluate stage
    scores it), else the default config's model with seeded random weights (they keep the full 100 detections
    per image); and which of the two it is."""
    if path.is_file():
        trained = load_model(path, device)
        return trained.model, replace(params, input=trained.params.input, loss=trained.params.loss), portable_uri(str(path))
    torch.manual_seed(params.seed)
    model = build_model(params, num_classes=len(read_label_map(prepared))).to(device)
    return model, params, "random (seeded): no trained model at " + portable_uri(str(path))


def ensure_prepared(prepared: Path, params_file: Path, params: Params) -> None:
    """The loader and evaluation benchmarks need prepared data. Missing at the stages' own output
    (data/prepared, as on a fresh clone), it is made as ``dvc repro prepare`` would: the generate stage first
    when the synthetic set is missing too, then prepare; missing elsewhere, stop in one line."""
    if (prepared / "train.json").is_file():
        return
    if prepared != REPO_ROOT / "data/prepared":
        sys.exit(f"error: {prepared} holds no prepared data (train.json); run `python -m stages.prepare` first")
    data = params.data
    generated = (resolve_path(data.root) / "annotations" / f"instances_{data.train_split}.json").is_file()
    for stage in ([] if generated or data.source != "synthetic" else ["generate"]) + ["prepare"]:
        command = [sys.executable, "-m", f"stages.{stage}", "--params", str(params_file)]
        print(f"[bench] no prepared data at {portable_uri(str(prepared))}: running `python -m stages.{stage}`", flush=True)
        if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
            sys.exit(f"error: `python -m stages.{stage}` failed (above); fix it, then run the benchmarks again")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, help="timed calls per figure (default 5; --quick 1)")
    parser.add_argument("--emulated-bf16-repeats", type=int,
                        help="timed calls per bf16 model step where bf16 is emulated (default 1)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)")
    parser.add_argument("--params", default="params.yaml", help="the default config, for the loader and evaluation")
    parser.add_argument("--prepared", default="data/prepared", help="prepared data of --params")
    parser.add_argument("--model", help="trained model whose evaluation is broken down (default: models/model.pt "
                                         "beside --params; random weights if there is none)")
    parser.add_argument("--out", default="reports", help="where bench.json and bench.md go")
    return parser


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, PipelineError) as err:
        sys.exit(f"error: {err}")

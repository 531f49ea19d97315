"""``python -m benchmarks.gpu_check``: one short run that shows the CUDA path works and how fast it goes.

At most about 8 minutes on one GPU (``make gpu-check``); one JSON out (default ``reports/gpu_check.json``):

- ``environment``: torch, torchvision, CUDA and cuDNN versions, the GPU;
- ``train``: training steps of YOLACT R-50 at 550 px (``configs/yolact550_r50_coco.yaml``) and of Mask R-CNN
  R-50-FPN (``configs/mask_rcnn_r50_fpn_coco.yaml``, its own 800 px and batch) on random images with a few
  elliptical instances each, as ``pipeline.training.loop`` runs a step (``network(arch).forward`` under
  autocast, ``loss``, the gradient scaler, clipping, the optimizer), under fp16 autocast with
  ``torch.amp.GradScaler`` and under bf16 autocast: images/s (median of synchronised timed steps after
  warm-up), peak memory, whether every loss was finite;
- ``inference``: images/s at 550 px, batch 1 and 8, both models in eval mode, fp32 and bf16 autocast, through
  ``network(arch).inference_model``, its ``detect`` and ``to_image`` at the input size (what ``pipeline.evaluation.inference.predict``
  runs per batch, RLE encoding excluded);
- ``evaluate``: a tiny synthetic COCO set generated and prepared in a temporary directory, an untrained
  tiny model of each architecture through ``predict`` and COCOeval ``score`` on the device (skipped when
  pycocotools is not installed);
- ``sync_bn``: ``train.sync_bn`` in a one-process world: a process group of world size 1 (nccl on CUDA,
  gloo on the CPU), ``nn.SyncBatchNorm.convert_sync_batchnorm``, DDP, two training steps.

Every section (and each model and precision inside one) is guarded: a failure is recorded as
``{"error": ...}`` and the rest still runs; the exit code is 1 if anything failed. Without CUDA the check
prints one line and exits 0. ``--quick --device cpu`` runs every section on tiny sizes on the CPU (the test;
fp16 and SyncBatchNorm's steps need CUDA and are recorded as skipped there).

Nothing here imports MLflow, DVC or (outside the evaluate section) pycocotools: the GPU machine may lack them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from pipeline.config import REPO_ROOT, Params, load
from pipeline.models.detections import to_image
from pipeline.models.networks import network
from pipeline.training.schedule import build_optimizer, learning_rate

from .timing import measure, synchronize
from .workloads import random_images, random_instances, to_device

NO_CUDA = "gpu-check: no CUDA device; nothing to check (run it on a GPU machine)"
DEFAULT_OUT = Path("reports/gpu_check.json")
CONFIGS = {"yolact": "configs/yolact550_r50_coco.yaml", "mask_rcnn": "configs/mask_rcnn_r50_fpn_coco.yaml"}
NUM_CLASSES = 80  # COCO, as both R-50 recipes are trained
AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# The presets' model and recipe without their COCO data (not needed to time a network on random images).
PRESET_OVERRIDES = ("data.source=synthetic", "data.root=data/synthetic", "data.train_split=train", "data.val_split=val", "data.test_split=test",
                    "model.backbone.pretrained=null")
# The same code paths at a fraction of the cost, for the test.
QUICK_MODEL = ("input.size=64", "model.backbone.depth=18", "model.backbone.base_channels=8",
               "model.fpn.out_channels=16", "model.head.num_prototypes=4")
QUICK_MASK_RCNN = ("model.mask_rcnn.rpn_pre_nms_top_n_train=64", "model.mask_rcnn.rpn_post_nms_top_n_train=16",
                   "model.mask_rcnn.rpn_pre_nms_top_n_test=64", "model.mask_rcnn.rpn_post_nms_top_n_test=16",
                   "model.mask_rcnn.box_batch_size_per_image=16", "model.mask_rcnn.representation_size=32",
                   "model.mask_rcnn.mask_head_channels=8")
# The evaluate section's tiny project (params.yaml's CPU model, a handful of synthetic images).
EVAL_DATA = ("data.source=synthetic", "data.root=data/synthetic", "data.train_split=train", "data.val_split=val", "data.test_split=test",
             "data.num_workers=0", "data.synthetic.train_images=2", "data.synthetic.val_images=2",
             "data.synthetic.width=80", "data.synthetic.height=64", "model.backbone.pretrained=null")
EVAL_QUICK = (*QUICK_MODEL, "anchors.scales=[[8],[16],[24],[40],[64]]")


@dataclass(frozen=True)
class Settings:
    infer_size: int = 550
    infer_batches: tuple[int, ...] = (1, 8)
    train_batch: Optional[int] = None  # None: the preset's train.batch_size
    instances_per_image: int = 4
    train_warmup: int = 3
    train_repeats: int = 10
    infer_warmup: int = 3
    infer_repeats: int = 10
    eval_images: int = 8
    sync_bn_batch: int = 2
    quick: bool = False


QUICK = Settings(infer_size=64, infer_batches=(1, 2), train_batch=2, instances_per_image=2, train_warmup=1,
                 train_repeats=2, infer_warmup=1, infer_repeats=2, eval_images=4, sync_bn_batch=2, quick=True)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cpu" and not args.quick:
        raise SystemExit("gpu-check: --device cpu only with --quick (the test of this script)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    device = torch.device(args.device)
    settings = QUICK if args.quick else Settings()
    start = time.perf_counter()
    report: dict[str, Any] = {"environment": _guarded(lambda: environment(device)),
                              "settings": {**settings.__dict__, "infer_batches": list(settings.infer_batches)}}
    for name, section in (("train", train_section), ("inference", inference_section),
                          ("evaluate", evaluate_section), ("sync_bn", sync_bn_section)):
        _log(f"{name} ...")
        tick = time.perf_counter()
        report[name] = _guarded(lambda: section(device, settings))
        _release(device)
        _log(f"{name}: {time.perf_counter() - tick:.1f} s")
    report["seconds"] = round(time.perf_counter() - start, 1)
    failed = errors(report)
    report["failed"] = failed
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu-check: {'FAILED in ' + ', '.join(failed) if failed else 'ok'} in {report['seconds']:.0f} s -> {out}")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (the test)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only with --quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON written (default {DEFAULT_OUT})")
    return parser


# --------------------------------------------------------------------------------------------------
# Guards and bookkeeping


def _guarded(fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``{"error": ..., "traceback": ...}`` if it raised."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - every failure is a finding to record, the rest still runs
        _log(f"error: {type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)[-4000:]}


def errors(node: Any, path: str = "") -> list[str]:
    """The dotted paths of every ``{"error": ...}`` in ``node``."""
    if isinstance(node, dict):
        if "error" in node:
            return [path or "."]
        return [p for key, value in node.items() for p in errors(value, f"{path}.{key}" if path else str(key))]
    return []


def _log(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_enabled": torch.backends.cudnn.enabled, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "device": str(device), "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
                    "bf16_supported": torch.cuda.is_bf16_supported(), "driver_visible": os.environ.get("CUDA_VISIBLE_DEVICES")})
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


# --------------------------------------------------------------------------------------------------
# Models


def preset(arch: str, settings: Settings, *extra: str) -> Params:
    """The R-50 preset of ``arch`` merged onto params.yaml, without its COCO data or pretrained weights."""
    overrides = [*PRESET_OVERRIDES, *extra]
    if settings.quick:
        overrides += [*QUICK_MODEL, *(QUICK_MASK_RCNN if arch == "mask_rcnn" else ())]
    return load(REPO_ROOT / CONFIGS[arch], overrides)


def build(params: Params, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = network(params.model.arch).build(params, NUM_CLASSES).to(device)
    if params.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def batch(size: int, count: int, per_image: int, device: torch.device, seed: int = 0,
          channels_last: bool = False) -> tuple[Tensor, list[dict[str, Any]]]:
    """Random images ``[B, 3, S, S]`` and targets in the dataset's format (normalised x1y1x2y2 boxes, 0-based
    labels, uint8 masks ``[G, S, S]``, no crowd boxes, ``image_id``, ``orig_size``) on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    images = random_images(count, size, generator)
    targets = random_instances(count, size, per_image, NUM_CLASSES, generator)
    for index, target in enumerate(targets):
        target.update(image_id=index + 1, orig_size=(size, size))
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, to_device(targets, device)


def train_step(model: nn.Module, params: Params, images: Tensor, targets: list[dict[str, Any]],
               amp_dtype: Optional[torch.dtype], forward_model: Optional[nn.Module] = None
               ) -> Callable[[], float]:
    """A closure running one iteration as ``pipeline.training.loop`` does (the learning rate of its warm-up,
    forward under autocast, the architecture's loss, the gradient scaler for fp16, clipping, the optimizer
    step); it returns the iteration's total loss."""
    net, tp, device = network(params.model.arch), params.train, images.device
    optimizer = build_optimizer(model, tp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward_model = forward_model or model
    state = {"iteration": 0, "losses": [], "scaler": scaler}

    def step() -> float:
        iteration = state["iteration"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(iteration, tp)
        model.train()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = net.forward(forward_model, images, targets, seed=iteration)
        losses = net.loss(outputs, targets, params.loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if tp.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        state["iteration"] += 1
        total = losses["total"].detach()
        state["losses"].append(total)
        return total

    step.state = state  # type: ignore[attr-defined]
    return step


# --------------------------------------------------------------------------------------------------
# Sections


def train_section(device: torch.device, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arch in CONFIGS:
        out[arch] = {}
        for precision in ("fp16", "bf16"):
            if precision == "fp16" and device.type != "cuda":
                out[arch][precision] = {"skipped": "fp16 autocast and the gradient scaler need CUDA"}
                continue
            _log(f"train {arch} {precision}")
            out[arch][precision] = _guarded(lambda: _train_one(arch, precision, device, settings))
            _release(device)
    return out


def _train_one(arch: str, precision: str, device: torch.device, settings: Settings) -> dict[str, Any]:
    params = preset(arch, settings)
    count = settings.train_batch or params.train.batch_size
    size = params.input.size
    model = build(params, device)
    images, targets = batch(size, count, settings.instances_per_image, device,
                            channels_last=params.train.channels_last)
    step = train_step(model, params, images, targets, AMP[precision])
    _reset_peak(device)
    timing = measure(step, device, settings.train_warmup, settings.train_repeats)
    losses = [float(v) for v in step.state["losses"]]  # type: ignore[attr-defined]
    scaler = step.state["scaler"]  # type: ignore[attr-defined]
    return {
        "config": CONFIGS[arch], "image_size": size, "batch": count, "instances_per_image": settings.instances_per_image,
        "autocast": precision, "grad_scaler": scaler.is_enabled(), "channels_last": params.train.channels_last,
        "images_per_s": count / timing.median, "step_median_s": timing.median, "step_seconds": timing.seconds,
        "warmup_steps": settings.train_warmup, "peak_memory_gib": _peak_gib(device),
        "loss_finite": all(math.isfinite(v) for v in losses), "losses": losses,
        "final_grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
    }


def inference_section(device: torch.device, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arch in CONFIGS:
        out[arch] = {}
        setup = _guarded(lambda: _infer_setup(arch, device, settings))
        if isinstance(setup, dict):
            out[arch] = setup
            continue
        params, model = setup
        for count in settings.infer_batches:
            for precision in ("fp32", "bf16"):
                key = f"batch{count}_{precision}"
                _log(f"inference {arch} {key}")
                out[arch][key] = _guarded(lambda: _infer_one(model, params, count, precision, device, settings))
        del model, setup
        _release(device)
    return out


def _infer_setup(arch: str, device: torch.device, settings: Settings) -> tuple[Params, nn.Module]:
    # An untrained model scores nearly nothing above eval.score_threshold: with the threshold at 0 both keep
    # eval.max_detections per image, as a trained model does on COCO, so the masks are assembled as in evaluation.
    params = preset(arch, settings, f"input.size={settings.infer_size}", "eval.score_threshold=0.0")
    return params, build(params, device).eval()


def _infer_one(model: nn.Module, params: Params, count: int, precision: str, device: torch.device,
               settings: Settings) -> dict[str, Any]:
    net, size, ep = network(params.model.arch), params.input.size, params.eval
    model = net.inference_model(model)
    images, _ = batch(size, count, 1, device, seed=1, channels_last=params.train.channels_last)
    amp_dtype = AMP[precision]
    counts: list[int] = []

    @torch.no_grad()
    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            detections = net.detect(model, images, ep, params.loss.use_focal_loss)
            in_pixels = [to_image(d, size, size, ep.mask_threshold) for d in detections]
        counts[:] = [len(d["scores"]) for d in in_pixels]

    _reset_peak(device)
    timing = measure(step, device, settings.infer_warmup, settings.infer_repeats)
    return {"image_size": size, "batch": count, "autocast": precision, "images_per_s": count / timing.median,
            "call_median_s": timing.median, "call_seconds": timing.seconds, "peak_memory_gib": _peak_gib(device),
            "detections_per_image": counts, "runs": "network(arch).inference_model, its detect + to_image at the input size"}


def evaluate_section(device: torch.device, settings: Settings) -> dict[str, Any]:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return {"skipped": "pycocotools not installed"}
    # Imported here: these modules need pycocotools.
    from pipeline.data.layout import ground_truth_path, read_label_map
    from pipeline.evaluation.inference import flat_metrics, predict, score, split_loader
    from pipeline.prepare.roles import prepare
    from pipeline.synthetic.shapes import generate

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root, prepared = Path(tmp) / "synthetic", Path(tmp) / "prepared"
        overrides = [*EVAL_DATA, f"data.synthetic.test_images={settings.eval_images}",
                     *(EVAL_QUICK if settings.quick else ())]
        params = load(REPO_ROOT / "params.yaml", overrides)
        data = params.data
        generate(root, data.synthetic, params.seed, workers=1)
        splits = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
        prepare(root, splits, prepared, categories=data.categories, max_images=data.max_images,
                keep_empty_train=data.keep_empty_train, strict=data.strict, val_images=data.val_images,
                seed=params.seed, repository=Path(tmp))
        label_map = read_label_map(prepared)
        category_ids = [entry["category_id"] for entry in label_map]
        for arch in CONFIGS:
            def run_arch(arch: str = arch) -> dict[str, Any]:
                arch_params = load(REPO_ROOT / "params.yaml", [*overrides, f"model.arch={arch}"])
                torch.manual_seed(0)
                model = network(arch).build(arch_params, len(label_map)).to(device).eval()
                loader = split_loader(prepared, "test", arch_params.input, arch_params.eval.batch_size, 0)
                predictions = predict(model, loader, arch_params.eval, arch_params.loss.use_focal_loss, category_ids,
                                      device, progress=False)
                evaluations = score(ground_truth_path(prepared, "test"), predictions)
                metrics = flat_metrics(evaluations)
                return {"ran": True, "device": str(device), "num_images": predictions.num_images,
                        "detections": {t: len(r) for t, r in predictions.results.items()},
                        "seconds_per_image": predictions.seconds_per_image,
                        "metric_keys": sorted(metrics), "metrics": metrics}
            _log(f"evaluate {arch}")
            out[arch] = _guarded(run_arch)
    return out


def sync_bn_section(device: torch.device, settings: Settings) -> dict[str, Any]:
    """``train.sync_bn`` as ``pipeline.training.loop`` sets it up, in a process group of one."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised")
    backend = "nccl" if device.type == "cuda" else "gloo"
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=0, world_size=1)
        params = preset("yolact", settings, "train.sync_bn=true")
        torch.manual_seed(0)
        model = network("yolact").build(params, NUM_CLASSES).to(device)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        converted = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        if params.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        result: dict[str, Any] = {"backend": backend, "world_size": dist.get_world_size(), "sync_bn_modules": converted,
                                  "image_size": params.input.size, "batch": settings.sync_bn_batch}
        if device.type != "cuda":
            # DDP refuses SyncBatchNorm on CPU modules (and SyncBatchNorm's forward CPU tensors).
            return {**result, "ok": True, "ddp_and_steps": {"skipped": "SyncBatchNorm under DDP needs CUDA"}}
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0])
        images, targets = batch(params.input.size, settings.sync_bn_batch, settings.instances_per_image, device,
                                channels_last=params.train.channels_last)
        step = train_step(model, params, images, targets, AMP.get(params.train.precision), forward_model=ddp)
        losses = [float(step()) for _ in range(2)]
        synchronize(device)
        return {**result, "ddp": True, "autocast": params.train.precision, "steps": 2, "losses": losses,
                "ok": all(math.isfinite(v) for v in losses)}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmarks time: synthetic batches and one-call training/inference steps of both models.

Each ``*_step`` function converts its model to a memory format and returns a closure that runs one
step (setting train or eval mode) on a fixed batch; :func:`choose_format` times a step in both memory
formats and keeps the faster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import EvalParams, LossParams, TrainParams
from pipeline.loss import yolact_loss
from pipeline.postprocess import Detections, detect
from pipeline.schedule import build_optimizer

from .timing import Timing, measure

Step = Callable[[], object]
Target = dict[str, Tensor]


# --------------------------------------------------------------------------------------------------
# Synthetic inputs


def random_images(batch: int, size: int, generator: torch.Generator) -> Tensor:
    """``[B, 3, S, S]`` values in [0, 1) (Mask R-CNN normalises internally; YOLACT does not care)."""
    return torch.rand(batch, 3, size, size, generator=generator)


def random_instances(
    batch: int, size: int, per_image: int, num_classes: int, generator: torch.Generator
) -> list[Target]:
    """Per image ``per_image`` elliptical instances in the dataset's target format.

    ``boxes [G, 4]`` normalised x1y1x2y2 (sides 0.1..0.5 of the image), ``labels [G]`` 0-based,
    ``masks [G, S, S]`` uint8 (the ellipse inscribed in the box), ``crowd_boxes [0, 4]``.
    """
    centres_1d = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    targets = []
    for _ in range(batch):
        wh = torch.rand(per_image, 2, generator=generator) * 0.4 + 0.1
        top_left = torch.rand(per_image, 2, generator=generator) * (1 - wh)
        centre, half = top_left + wh / 2, wh / 2
        dx = (centres_1d[None, None, :] - centre[:, 0, None, None]) / half[:, 0, None, None]
        dy = (centres_1d[None, :, None] - centre[:, 1, None, None]) / half[:, 1, None, None]
        targets.append({
            "boxes": torch.cat([top_left, top_left + wh], dim=1),
            "labels": torch.randint(0, num_classes, (per_image,), generator=generator),
            "masks": (dx**2 + dy**2 <= 1).to(torch.uint8),
            "crowd_boxes": torch.zeros(0, 4),
        })
    return targets


def maskrcnn_targets(targets: Sequence[Target], size: int) -> list[Target]:
    """The same instances in torchvision's detection format: pixel boxes, 1-based labels, masks."""
    return [
        {"boxes": t["boxes"] * size, "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets
    ]


def to_device(targets: Sequence[dict], device: torch.device) -> list[dict]:
    """Per-image target dicts with their tensors moved to ``device`` (other values kept)."""
    return [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]


# --------------------------------------------------------------------------------------------------
# Steps


def set_memory_format(model: nn.Module, images: Tensor, channels_last: bool) -> Tensor:
    """Convert ``model``'s parameters in place; returns ``images [B, 3, S, S]`` in the same format."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    return images.contiguous(memory_format=memory_format)


def sgd(model: nn.Module, train: TrainParams) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def yolact_train_step(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Target],
    loss_params: LossParams,
    train: TrainParams,
    amp_dtype: Optional[torch.dtype],
    channels_last: bool,
) -> Step:
    """One training iteration as ``pipeline.train`` runs it: forward under autocast, loss, backward,
    gradient clipping (``train.grad_clip``), the optimizer step (``train.optimizer``).
    ``images [B, 3, S, S]`` on the model's device."""
    images = set_memory_format(model, images, channels_last)
    optimizer = build_optimizer(model, train)

    def step() -> None:
        model.train()
        with _autocast(images.device, amp_dtype):
            predictions = model(images)
        losses = yolact_loss(predictions, targets, loss_params)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if train.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()

    return step


def yolact_infer_step(
    model: nn.Module,
    images: Tensor,
    eval_params: EvalParams,
    use_focal_loss: bool,
    amp_dtype: Optional[torch.dtype],
    channels_last: bool,
) -> Callable[[], list[Detections]]:
    """Eval-mode forward (under autocast) and :func:`pipeline.postprocess.detect` in fp32."""
    images = set_memory_format(model, images, channels_last)

    @torch.no_grad()
    def step() -> list[Detections]:
        model.eval()
        with _autocast(images.device, amp_dtype):
            out = model(images)
        return detect(
            out["loc"].float(), out["conf"].float(), out["mask"].float(), out["proto"].float(), out["priors"],
            score_threshold=eval_params.score_threshold, nms=eval_params.nms, nms_iou=eval_params.nms_iou,
            top_k=eval_params.top_k, max_detections=eval_params.max_detections, use_focal_loss=use_focal_loss,
        )

    return step


def build_maskrcnn(image_size: int, **options: int) -> nn.Module:
    """torchvision's Mask R-CNN R-50-FPN, randomly initialised, resizing to exactly ``image_size``.

    ``options`` are further ``MaskRCNN`` arguments (the smoke test shrinks the proposal and RoI counts).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=image_size, max_size=image_size, **options
    )


def maskrcnn_train_step(
    model: nn.Module, images: Tensor, targets: Sequence[Target], train: TrainParams, channels_last: bool
) -> Step:
    """Forward with targets (the sum of torchvision's losses), backward, SGD step."""
    images = set_memory_format(model, images, channels_last)
    optimizer = sgd(model, train)

    def step() -> None:
        model.train()
        losses = model(list(images), list(targets))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def maskrcnn_infer_step(model: nn.Module, images: Tensor, channels_last: bool) -> Callable[[], list[Target]]:
    """Eval-mode forward, torchvision's own post-processing (NMS, masks pasted at image size) included."""
    images = set_memory_format(model, images, channels_last)

    @torch.no_grad()
    def step() -> list[Target]:
        model.eval()
        return model(list(images))

    return step


# --------------------------------------------------------------------------------------------------
# Measurement


def flops_of(fn: Step) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, forward and backward, by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class FormatChoice:
    channels_last: bool
    probe_s: dict[str, float]  # best warm call in each format

    def as_dict(self) -> dict[str, object]:
        return {"channels_last": self.channels_last, "probe_s": self.probe_s}


def choose_format(
    build_step: Callable[[bool], Step], device: torch.device, warmup: int, rounds: int = 2
) -> FormatChoice:
    """Time ``build_step(channels_last)`` in each memory format, alternating for ``rounds`` rounds (the
    first after ``warmup`` calls), and pick the format with the faster best call.

    Alternating keeps a burst of load from other processes from deciding alone. The model is left in
    the chosen format.
    """
    probes: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for channels_last in probes:
            step = build_step(channels_last)
            probes[channels_last] += measure(step, device, warmup if round_ == 0 else 0, 1).seconds
    chosen = min(probes, key=lambda c: min(probes[c]))
    if not chosen:
        build_step(chosen)
    return FormatChoice(chosen, {("channels_last" if c else "contiguous"): min(t) for c, t in probes.items()})


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int) -> tuple[float, Timing]:
    """Best ``torch.matmul`` throughput of two random ``[size, size]`` matrices of ``dtype``, in GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    timing = measure(lambda: torch.matmul(a, b), device, warmup, repeats)
    return 2 * size**3 / timing.best / 1e9, timing

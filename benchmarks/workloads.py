"""What the benchmarks time: synthetic batches and one-call inference and training steps of both models.

Both models are held to the same step. Inference: eval mode, one autocast region (or none, fp32) around the
network and its post-processing, ending in boxes (pixels), scores, labels and binary masks at the input
size for at most 100 detections per image. Training: forward under that autocast (Mask R-CNN computes its
losses inside its forward, YOLACT's loss runs after it as in ``pipeline.training.loop``), backward, gradient clipping
(``train.grad_clip``) and the optimizer of ``train.optimizer`` (:func:`pipeline.training.schedule.build_optimizer`).
Both run channels-last. Each ``*_step`` function converts its model and returns a closure that runs one step
on a fixed batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import EvalParams, LossParams, TrainParams
from pipeline.models.yolact.loss import yolact_loss
from pipeline.models.detections import Detections, to_image
from pipeline.models.networks import network_of
from pipeline.models.yolact.postprocess import detect
from pipeline.training.schedule import build_optimizer

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


def set_memory_format(model: nn.Module, images: Tensor, channels_last: bool = True) -> Tensor:
    """Convert ``model``'s parameters in place; returns ``images [B, 3, S, S]`` in the same format."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    return images.contiguous(memory_format=memory_format)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``; disabled (fp32) for ``None``."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def optimizer_step(total_loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, train: TrainParams) -> None:
    """Backward, gradient clipping at ``train.grad_clip`` (if set) and one optimizer step, as ``pipeline.training.loop``."""
    optimizer.zero_grad(set_to_none=True)
    total_loss.backward()
    if train.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()


def yolact_train_step(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Target],
    loss_params: LossParams,
    train: TrainParams,
    amp_dtype: Optional[torch.dtype],
    channels_last: bool = True,
) -> Step:
    """One training iteration as ``pipeline.training.loop`` runs it: forward under autocast, then
    ``pipeline.models.yolact.loss.yolact_loss`` (outside autocast, as there) and :func:`optimizer_step`.
    ``images [B, 3, S, S]`` on the model's device."""
    images = set_memory_format(model, images, channels_last)
    optimizer = build_optimizer(model, train)

    def step() -> None:
        model.train()
        with autocast(images.device, amp_dtype):
            predictions = model(images)
        optimizer_step(yolact_loss(predictions, targets, loss_params)["total"], model, optimizer, train)

    return step


def yolact_infer_step(
    model: nn.Module,
    images: Tensor,
    eval_params: EvalParams,
    use_focal_loss: bool,
    amp_dtype: Optional[torch.dtype],
) -> Callable[[], list[Detections]]:
    """Eval forward of the BatchNorm-folded copy (:meth:`pipeline.models.networks.Network.inference_model`),
    :func:`pipeline.models.yolact.postprocess.detect` (on the outputs cast to fp32, its contract) and
    :func:`pipeline.models.detections.to_image` at the input size (masks resized, cut and thresholded inside
    each box), all under one autocast, as ``pipeline.evaluation.inference.predict`` runs them.
    Per image: ``boxes [N, 4]`` pixels, ``scores [N]``, ``labels [N]``, ``masks [N, S, S]`` bool."""
    model = network_of(model).inference_model(model)
    images = set_memory_format(model, images)
    size = images.shape[-1]

    @torch.no_grad()
    def step() -> list[Detections]:
        model.eval()
        with autocast(images.device, amp_dtype):
            out = model(images)
            detections = detect(
                out["loc"].float(), out["conf"].float(), out["mask"].float(), out["proto"].float(), out["priors"],
                score_threshold=eval_params.score_threshold, nms=eval_params.nms, nms_iou=eval_params.nms_iou,
                top_k=eval_params.top_k, max_detections=eval_params.max_detections, use_focal_loss=use_focal_loss,
            )
            return [to_image(d, size, size, eval_params.mask_threshold) for d in detections]

    return step


def build_maskrcnn(image_size: int, **options: int) -> nn.Module:
    """torchvision's Mask R-CNN R-50-FPN, randomly initialised, resizing to exactly ``image_size``.

    Without weights torchvision trains every backbone stage with plain BatchNorm, as YOLACT does here.
    ``options`` are further ``MaskRCNN`` arguments (the smoke test shrinks the proposal and RoI counts).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=image_size, max_size=image_size, **options
    )


def maskrcnn_train_step(
    model: nn.Module, images: Tensor, targets: Sequence[Target], train: TrainParams, amp_dtype: Optional[torch.dtype]
) -> Step:
    """Forward with targets under autocast (torchvision computes its losses inside the forward), their sum,
    then :func:`optimizer_step` with the same optimizer and clipping as YOLACT's step."""
    images = set_memory_format(model, images)
    optimizer = build_optimizer(model, train)

    def step() -> None:
        model.train()
        with autocast(images.device, amp_dtype):
            losses = model(list(images), list(targets))
        optimizer_step(sum(losses.values()), model, optimizer, train)

    return step


def maskrcnn_infer_step(
    model: nn.Module, images: Tensor, mask_threshold: float, amp_dtype: Optional[torch.dtype]
) -> Callable[[], list[Target]]:
    """Eval forward with torchvision's own post-processing (NMS, at most 100 detections, mask probabilities
    pasted at the input size), then the masks thresholded at ``mask_threshold``, all under one autocast.
    Per image: ``boxes [N, 4]`` pixels, ``scores [N]``, ``labels [N]``, ``masks [N, S, S]`` bool."""
    images = set_memory_format(model, images)

    @torch.no_grad()
    def step() -> list[Target]:
        model.eval()
        with autocast(images.device, amp_dtype):
            outputs = model(list(images))
            return [{**out, "masks": out["masks"][:, 0] > mask_threshold} for out in outputs]

    return step


def flops_of(fn: Step) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, forward and backward, by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()

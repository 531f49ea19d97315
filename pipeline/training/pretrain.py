"""The warm start: the ResNet-FPN trunk trained once on dense semantic segmentation of the train masks.

The analogue of ImageNet initialisation for the embedded data, where nothing can be downloaded: a task
that teaches the trunk what the objects look like without anchors or matching thresholds, so that every
detector trained from it (``train``, each ablation cell, Mask R-CNN) starts from the same features. The
net is the detector's own ResNet and FPN (``model.backbone``, ``model.fpn``) with a 1x1 classifier on
the finest FPN level; each pixel of that level is labelled with the class of the smallest instance
covering it, 0 for background. Training reads the train role only; the val role gives its metric (mean
IoU). Only the ResNet's weights are kept (warm-starting the FPN as well measured no gain: docs/ablation.md),
as a state dict that ``model.backbone.pretrained: pretrain`` loads (:func:`pipeline.config.weights_path`).
Training runs on the CPU in fp32, whatever ``train.*`` says: the stage runs once per data and trunk, and
every detector of the pipeline starts from what it writes.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.config import Params, PretrainParams, replace
from pipeline.data.dataset import InstanceDataset, collate
from pipeline.data.layout import read_label_map
from pipeline.data.transforms import build_transforms
from pipeline.models.backbone.trunk import build_trunk
from pipeline.training.sampling import SampleStream, SeededSamples, worker_init
from pipeline.training.schedule import parameter_groups
from pipeline.utils.distributed import Dist
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_file

LOG_COLUMNS = ("iteration", "lr", "loss", "seconds", "val_mIoU")


class SegmentationNet(nn.Module):
    """ResNet + FPN + a 1x1 classifier on the finest FPN level: ``[B, 3, S, S] -> [B, C+1, S/8, S/8]``."""

    def __init__(self, backbone: nn.Module, fpn: nn.Module, num_classes: int):
        super().__init__()
        self.backbone, self.fpn = backbone, fpn
        self.classifier = nn.Conv2d(fpn.out_channels, num_classes + 1, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.fpn(self.backbone(images))[0])


def semantic_target(masks: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
    """``[h, w]`` long class map at ``size`` of instance ``masks [G, S, S]`` with 0-based ``labels [G]``:
    label + 1 of the smallest instance covering a pixel (sampled at the nearest full-size pixel), else 0."""
    full = torch.zeros(masks.shape[-2:], dtype=torch.long)
    for i in masks.flatten(1).sum(1).argsort(descending=True, stable=True).tolist():
        full[masks[i].bool()] = int(labels[i]) + 1
    return F.interpolate(full[None, None].float(), size=size, mode="nearest")[0, 0].long()


def semantic_targets(targets: list[dict[str, Any]], size: tuple[int, int]) -> Tensor:
    """``[B, h, w]``: :func:`semantic_target` of each image's target."""
    return torch.stack([semantic_target(t["masks"], t["labels"], size) for t in targets])


def confusion_counts(logits: Tensor, target: Tensor, num_labels: int) -> Tensor:
    """``[L, L]`` pixel counts of (true, predicted) labels; ``logits [B, L, h, w]``, ``target [B, h, w]``."""
    index = target.flatten() * num_labels + logits.argmax(1).flatten()
    return torch.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def mean_iou(counts: Tensor) -> float:
    """Mean IoU over the labels that occur in the ground truth of ``counts [L, L]`` (background included)."""
    counts = counts.double()
    hits = counts.diag()
    union = counts.sum(0) + counts.sum(1) - hits
    present = counts.sum(1) > 0
    return float((hits[present] / union[present]).mean())


def learning_rate(iteration: int, pp: PretrainParams) -> float:
    """Linear warm-up to ``pp.lr``, then cosine decay to 0 at ``pp.iterations``."""
    if iteration < pp.warmup_iterations:
        return pp.lr * (iteration + 1) / pp.warmup_iterations
    progress = (iteration - pp.warmup_iterations) / max(pp.iterations - pp.warmup_iterations, 1)
    return 0.5 * pp.lr * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(net: SegmentationNet, loader: DataLoader, num_labels: int) -> float:
    """Mean IoU of ``net`` over the images of ``loader``."""
    net.eval()
    counts = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for images, targets in loader:
        logits = net(images.contiguous(memory_format=torch.channels_last))
        counts += confusion_counts(logits, semantic_targets(targets, logits.shape[-2:]), num_labels)
    net.train()
    return mean_iou(counts)


def pretrain(params: Params, prepared_dir: Path, on_log: Callable[[dict[str, float]], None] = lambda row: None,
             progress: bool = True) -> dict[str, Tensor]:
    """Train :class:`SegmentationNet` for ``params.pretrain.iterations`` on the train role; returns the
    ResNet's state dict. ``on_log`` receives a row every ``pretrain.eval_every`` iterations."""
    pp = params.pretrain
    params = replace(params, **{"model.backbone.pretrained": None})  # the trunk it trains starts from scratch
    num_classes = len(read_label_map(prepared_dir))
    train_set = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    val_set = InstanceDataset(prepared_dir, "val", build_transforms(params.input, train=False))
    if len(train_set) == 0 or len(val_set) == 0:
        raise PipelineError(f"{prepared_dir}: pretrain needs train and val images "
                            f"({len(train_set)} and {len(val_set)} prepared)")
    torch.manual_seed(params.seed)
    backbone, fpn = build_trunk(params)
    net = SegmentationNet(backbone, fpn, num_classes).to(memory_format=torch.channels_last)
    decay, no_decay = parameter_groups(net)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": pp.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=pp.lr)
    loader = DataLoader(SeededSamples(train_set), batch_sampler=SampleStream(len(train_set), pp.batch_size,
                        params.seed, 0, Dist()), collate_fn=collate, num_workers=params.data.num_workers,
                        worker_init_fn=worker_init, persistent_workers=params.data.num_workers > 0)
    val_loader = DataLoader(val_set, batch_size=pp.batch_size, collate_fn=collate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=pp.iterations, desc="pretrain", unit="it", mininterval=1.0, dynamic_ncols=True)
    net.train()
    batches, seconds = iter(loader), 0.0
    for iteration in range(pp.iterations):
        tick = time.perf_counter()
        images, targets = next(batches)
        lr = learning_rate(iteration, pp)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = net(images.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, semantic_targets(targets, logits.shape[-2:]))
        if not torch.isfinite(loss):
            raise PipelineError(f"pretrain: non-finite loss at iteration {iteration + 1} (lower pretrain.lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - tick
        done = iteration + 1
        if done % pp.eval_every == 0 or done == pp.iterations:
            on_log({"iteration": done, "lr": lr, "loss": float(loss.detach()), "seconds": seconds,
                    "val_mIoU": validate(net, val_loader, num_classes + 1)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return backbone.state_dict()


def save_weights(path: Path, state_dict: dict[str, Tensor]) -> None:
    """Write a state dict atomically (a reader never sees half a file)."""
    with atomic_file(path) as tmp:
        torch.save(state_dict, tmp)

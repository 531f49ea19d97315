"""Optimizer and learning-rate schedule: SGD (YOLACT) or AdamW, linear warm-up, step or cosine decay."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.config import TrainParams


def learning_rate(iteration: int, train: TrainParams) -> float:
    """LR for 0-based ``iteration``: linear warm-up from ``warmup_lr``, then step or cosine decay.

    Cosine decays from ``lr`` after the warm-up to 0 at ``iterations``; ``lr_steps`` are then unused.
    """
    if iteration < train.warmup_iterations:
        return train.warmup_lr + (train.lr - train.warmup_lr) * iteration / train.warmup_iterations
    if train.lr_schedule == "cosine":
        progress = (iteration - train.warmup_iterations) / max(train.iterations - train.warmup_iterations, 1)
        return 0.5 * train.lr * (1.0 + math.cos(math.pi * progress))
    return train.lr * train.lr_gamma ** sum(iteration >= step for step in train.lr_steps)


def build_optimizer(model: nn.Module, train: TrainParams) -> torch.optim.Optimizer:
    """SGD with momentum (YOLACT) or AdamW; no weight decay on norms and biases."""
    decay, no_decay = parameter_groups(model)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, betas=(train.momentum, 0.999), fused=True)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


def parameter_groups(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Weight decay on conv/linear weights only, not on biases or norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay

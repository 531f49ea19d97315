"""Data-loading throughput at a given configuration: what training would consume per second."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.config import Params
from pipeline.data import InstanceDataset, build_transforms, collate


def train_loader(params: Params, prepared_dir: Path, seed: int = 0) -> DataLoader:
    """The train split with train transforms, ``train.batch_size`` and ``data.num_workers``, shuffled."""
    dataset = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    workers = params.data.num_workers
    return DataLoader(
        dataset, batch_size=params.train.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )


def loader_throughput(loader: DataLoader, batches: int, warmup: int = 1) -> dict[str, float]:
    """Images per second over ``batches`` consecutive batches, after ``warmup`` batches (worker start-up)."""
    if warmup + batches > len(loader):
        raise ValueError(f"{warmup + batches} batches requested, the loader has {len(loader)}")
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch, _targets = next(iterator)
        images += len(batch)
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}

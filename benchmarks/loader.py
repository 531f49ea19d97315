"""The data loader against the training step it feeds, at one configuration."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from pipeline.config import Params
from pipeline.data import InstanceDataset, build_transforms, collate, finish_target

from .timing import measure_interleaved


def train_loader(params: Params, prepared_dir: Path, seed: int = 0) -> DataLoader:
    """The train split with train transforms, ``train.batch_size`` and ``data.num_workers``, shuffled."""
    dataset = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    workers = params.data.num_workers
    return DataLoader(
        dataset, batch_size=params.train.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )


def loader_against_training(
    loader: DataLoader, train_step: Callable[[], object], device: torch.device, batches: int, warmup_steps: int = 2
) -> dict[str, Any]:
    """Images per second of the loader and of ``train_step`` (one step on a batch of the same size), timed
    in turn for ``batches`` rounds after one untimed batch (worker start-up) and ``warmup_steps`` untimed steps.

    Both rates are means over the same rounds: batches differ in cost with their augmentations, and
    alternating exposes both to the same load from other processes.
    """
    if batches + 1 > len(loader):
        raise ValueError(f"{batches + 1} batches requested, the loader has {len(loader)}")
    iterator = iter(loader)
    batch_size = len(next(iterator)[0])
    for _ in range(warmup_steps):
        train_step()
    timings = measure_interleaved({"loader": lambda: next(iterator), "train": train_step}, device, 0, batches)
    images = batches * batch_size
    return {
        "batches": batches, "batch_size": batch_size, "images": images,
        "loader_images_per_s": images / sum(timings["loader"].seconds),
        "train_images_per_s": images / sum(timings["train"].seconds),
        "loader_seconds": timings["loader"].seconds, "train_seconds": timings["train"].seconds,
    }


def transform_breakdown(dataset: InstanceDataset, images: int) -> list[dict[str, object]]:
    """Where loading ``images`` samples spends its time: reading (decode + masks), each transform, and
    :func:`pipeline.data.finish_target`, slowest first (name, calls, ms, share); batching excluded."""
    steps = getattr(dataset.transforms, "transforms", [dataset.transforms])
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    count = min(images, len(dataset))
    for index in range(count):
        image_id = dataset.image_ids[index]
        image, target = timed("read image and masks", dataset.load, image_id)
        for step in steps:
            image, target = timed(type(step).__name__, step, image, target)
        timed("finish_target", finish_target, target, image_id)
    total = sum(seconds.values()) or 1.0
    return [
        {"op": name, "calls": count, "self_ms": s * 1e3, "share": s / total}
        for name, s in sorted(seconds.items(), key=lambda item: item[1], reverse=True)
    ]

"""The training input path, timed as one loader worker runs it, against the training step it feeds."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from pipeline.config import Params
from pipeline.data.dataset import InstanceDataset, collate, finish_target
from pipeline.data.transforms import build_transforms
from pipeline.utils.distributed import Dist
from pipeline.training.sampling import SampleStream, SeededSamples, worker_init

from .timing import measure_interleaved


def training_loader(params: Params, prepared_dir: Path) -> DataLoader:
    """The DataLoader ``pipeline.training.loop.train`` builds for a fresh single-process run, loading in-process:
    the train split with train transforms behind :class:`SeededSamples`, batches of ``train.batch_size``
    from :class:`SampleStream` (seed ``params.seed``, from iteration 0), ``collate``. Endless."""
    dataset = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    stream = SampleStream(len(dataset), params.train.batch_size, params.seed, start_iteration=0, dist_info=Dist())
    return DataLoader(SeededSamples(dataset), batch_sampler=stream, collate_fn=collate, num_workers=0)


@contextlib.contextmanager
def as_one_worker() -> Iterator[None]:
    """Run the body with torch's threads as a loader worker has them (:func:`pipeline.training.sampling.worker_init`)."""
    threads = torch.get_num_threads()
    worker_init(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def worker_batches(loader: DataLoader) -> Callable[[], Any]:
    """A call that loads the next batch of ``loader`` in this process as one worker would."""
    batches = iter(loader)

    def next_batch() -> Any:
        with as_one_worker():
            return next(batches)

    return next_batch


def worker_rate(loader: DataLoader, batches: int, warmup: int = 1) -> dict[str, Any]:
    """Images per second of one worker: ``warmup`` untimed batches, then ``batches`` timed (their mean rate)."""
    next_batch = worker_batches(loader)
    for _ in range(warmup):
        next_batch()
    seconds, images = [], 0
    for _ in range(batches):
        start = time.perf_counter()
        images += len(next_batch()[0])
        seconds.append(time.perf_counter() - start)
    return {"batches": batches, "batch_size": images // batches, "images": images,
            "worker_images_per_s": images / sum(seconds), "loader_seconds": seconds}


def loader_against_training(
    loader: DataLoader, train_step: Callable[[], object], device: torch.device, batches: int, warmup_steps: int = 1
) -> dict[str, Any]:
    """Images per second of one worker of ``loader`` and of ``train_step`` (one step on a batch of the same
    size), timed in turn for ``batches`` rounds after one untimed batch and ``warmup_steps`` untimed steps.

    Both rates are means over the same rounds: batches differ in cost with their augmentations, and
    alternating exposes both to the same load from other processes.
    """
    next_batch = worker_batches(loader)
    batch_size = len(next_batch()[0])
    for _ in range(warmup_steps):
        train_step()
    timings = measure_interleaved({"loader": next_batch, "train": train_step}, device, 0, batches)
    images = batches * batch_size
    return {
        "batches": batches, "batch_size": batch_size, "images": images,
        "worker_images_per_s": images / sum(timings["loader"].seconds),
        "train_images_per_s": images / sum(timings["train"].seconds),
        "loader_seconds": timings["loader"].seconds, "train_seconds": timings["train"].seconds,
    }


def transform_breakdown(dataset: InstanceDataset, images: int) -> list[dict[str, object]]:
    """Where loading ``images`` samples spends its time: reading (decode + masks), each transform, and
    :func:`pipeline.data.dataset.finish_target`, slowest first (name, calls, ms, share); batching excluded."""
    steps = getattr(dataset.transforms, "transforms", [dataset.transforms])
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    count = min(images, len(dataset))
    with as_one_worker():
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

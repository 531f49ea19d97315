"""What MLflow's system metrics cost the training loop: training images/s with the monitor sampling and
without, in alternating blocks of the same length (A B A B ...), and the time of one sample.

The default config's training step (as ``make bench`` times it: random 4-instance images at ``input.size``,
batch ``train.batch_size``) runs for ``--block-s`` seconds per block; in every other block the monitor of
:mod:`pipeline.tracking.system_metrics` samples every ``--interval`` seconds (default 1 s, 30 times the
pipeline's rate: an upper bound for it). Run it on an idle machine::

    python -m benchmarks.system_metrics_cost --out reports/system_metrics_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.config import load
from pipeline.models.yolact.model import build_model
from pipeline.tracking import system_metrics
from pipeline.utils.io import atomic_write_json

from .workloads import random_images, random_instances, yolact_train_step


class _Sink:
    """The part of a stage's run the monitor writes to, keeping the points in memory."""

    run_id, uri = "cost", None

    def __init__(self) -> None:
        self.points = 0

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        self.points += len(metrics)


def images_per_s(step, batch: int, seconds: float) -> float:
    """Training images/s of ``step`` over whole steps filling at least ``seconds``."""
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def measure(params_path: str, interval: float, block_s: float, rounds: int) -> dict[str, Any]:
    params = load(params_path, ("model.backbone.pretrained=null",))  # weights never change a timing
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(0)
    batch, size = params.train.batch_size, params.input.size
    step = yolact_train_step(build_model(params, num_classes=8), random_images(batch, size, generator),
                             random_instances(batch, size, 4, 8, generator), params.loss, params.train, None,
                             params.train.channels_last)
    images_per_s(step, batch, block_s)  # warm-up
    without, with_monitor, points = [], [], 0
    for _ in range(rounds):
        without.append(images_per_s(step, batch, block_s))
        sink = _Sink()
        monitor = system_metrics.start(sink, interval=interval)
        with_monitor.append(images_per_s(step, batch, block_s))
        monitor.finish()
        points += sink.points
    monitor = system_metrics.start(_Sink(), interval=3600.0)
    start = time.perf_counter()
    for _ in range(20):
        monitor.collect_metrics()
    sample_s = (time.perf_counter() - start) / 20
    monitor.finish()
    ratio = statistics.median(with_monitor) / statistics.median(without)
    return {
        "step": f"R-{params.model.backbone.depth} at {size} px, batch {batch}, {params.train.precision}, random images",
        "interval_s": interval, "block_s": block_s, "rounds": rounds, "threads": torch.get_num_threads(),
        "images_per_s_without": without, "images_per_s_with": with_monitor, "metric_points_logged": points,
        "median_ratio_with_over_without": ratio, "one_sample_ms": 1e3 * sample_s,
        "cost_at_pipeline_interval": sample_s / system_metrics.SAMPLING_INTERVAL_S,
    }


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples while monitored")
    parser.add_argument("--block-s", type=float, default=20.0, help="seconds of training per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks with and without the monitor, each")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    result = measure(args.params, args.interval, args.block_s, args.rounds)
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    return result


if __name__ == "__main__":
    main()

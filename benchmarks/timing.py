"""Wall-clock measurement: synchronised timers, warm-up + repeated runs, and per-section totals."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read afterwards covers them (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call (warm-up calls excluded). Every figure of the benchmarks is the median:
    one statistic for both sides of every ratio."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_dict(self) -> dict[str, object]:
        return {"median_s": self.median, "seconds": self.seconds}


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, each call synchronised."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def measure_interleaved(
    steps: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, Timing]:
    """:func:`measure` of several steps in round-robin order (A B C A B C ...), so that the load of
    other processes, which drifts over minutes, falls on all of them alike and their ratios hold."""
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            seconds[name] += measure(step, device, 0, 1).seconds
    return {name: Timing(values) for name, values in seconds.items()}


@dataclass
class Sections:
    """Wall time of the named parts of a run, in the order they ran: where the benchmark spends its time,
    and the system's 1-minute load average at the end of each (other processes' share of the cores)."""

    seconds: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str, verbose: bool = True) -> Iterator[None]:
        if verbose:
            print(f"[bench] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if hasattr(os, "getloadavg"):
                self.load[name] = os.getloadavg()[0]
            if verbose:
                print(f"[bench] {name}: {self.seconds[name]:.1f} s", flush=True)

    def table(self) -> str:
        """A plain-text table: section, seconds, share of the total, load average."""
        total = sum(self.seconds.values()) or 1.0
        width = max([len(name) for name in self.seconds] + [len("total")])
        lines = [f"{'section':<{width}}  {'seconds':>8}  {'share':>6}  {'load':>5}"]
        for name, seconds in self.seconds.items():
            load = f"{self.load[name]:5.2f}" if name in self.load else "    -"
            lines.append(f"{name:<{width}}  {seconds:8.1f}  {seconds / total:6.1%}  {load}")
        lines.append(f"{'total':<{width}}  {total:8.1f}  {1:6.1%}")
        return "\n".join(lines)

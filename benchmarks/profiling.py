"""Where a missed target's time goes: the top operators (torch.profiler) or Python functions (cProfile)."""
from __future__ import annotations

import cProfile
import pstats
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from .timing import synchronize


def top_ops(fn: Callable[[], object], device: torch.device, top: int = 8) -> list[dict[str, object]]:
    """Operators of one call of ``fn`` by self time (device time on CUDA): name, calls, ms, share."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attribute) > 0]
    total = sum(getattr(e, attribute) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attribute), reverse=True)
    return [
        {"op": e.key, "calls": e.count, "self_ms": getattr(e, attribute) / 1e3, "share": getattr(e, attribute) / total}
        for e in events[:top]
    ]


def top_functions(fn: Callable[[], object], top: int = 8) -> list[dict[str, object]]:
    """Python functions of one call of ``fn`` by own time (cProfile ``tottime``): name, calls, ms, share."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, prim calls, tottime, cumtime, callers)}
    total = sum(row[2] for row in stats.values()) or 1.0
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [
        {"op": f"{name} ({_short(path)}:{line})", "calls": row[0], "self_ms": row[2] * 1e3, "share": row[2] / total}
        for (path, line, name), row in rows
    ]


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])

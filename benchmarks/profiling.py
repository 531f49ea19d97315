"""Where a missed target's time goes: the operators of one step by self time (torch.profiler)."""
from __future__ import annotations

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

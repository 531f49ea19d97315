"""The attainable peak of one dtype: the faster of a large matmul and a large 3x3 convolution, each in the
layout the models use (``nn.Linear``'s ``x @ W^T``; channels-last convolution, as both models run).

A training step's share of the peak of its own dtype says how much of the hardware's reach it uses; a
single kernel can exceed a matmul-only peak (oneDNN's convolutions beat MKL's sgemm on some CPUs), so
both kernels are measured and the faster counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .timing import Timing, measure


@dataclass(frozen=True)
class PeakShapes:
    matmul: int  # [n, n] @ [n, n]^T
    conv_batch: int
    conv_channels: int  # channels in = channels out
    conv_size: int  # height = width of the feature map


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int) -> tuple[float, Timing]:
    """Median throughput of ``F.linear`` of ``[size, size]`` inputs and weights of ``dtype``, in GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(size, size, generator=generator).to(device, dtype)
    weight = torch.randn(size, size, generator=generator).to(device, dtype)
    timing = measure(lambda: F.linear(inputs, weight), device, warmup, repeats)
    return 2 * size**3 / timing.median / 1e9, timing


def conv_gflops(
    batch: int, channels: int, size: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int
) -> tuple[float, Timing]:
    """Median throughput of a 3x3, stride-1, padding-1 convolution ``[B, C, S, S] -> [B, C, S, S]`` of
    ``dtype``, input and weight channels-last, in GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, channels, size, size, generator=generator).to(device, dtype)
    weight = torch.randn(channels, channels, 3, 3, generator=generator).to(device, dtype)
    inputs, weight = (t.contiguous(memory_format=torch.channels_last) for t in (inputs, weight))
    timing = measure(lambda: F.conv2d(inputs, weight, padding=1), device, warmup, repeats)
    return 2 * batch * channels * channels * 9 * size * size / timing.median / 1e9, timing


def attainable_peak(
    shapes: PeakShapes, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int
) -> dict[str, Any]:
    """``{"matmul": {...}, "conv3x3": {...}, "gflops": the faster, "kernel": its name}`` for ``dtype``."""
    matmul, matmul_timing = matmul_gflops(shapes.matmul, dtype, device, warmup, repeats)
    conv, conv_timing = conv_gflops(shapes.conv_batch, shapes.conv_channels, shapes.conv_size, dtype, device,
                                    warmup, repeats)
    kernels = {
        "matmul": {"shape": f"[{shapes.matmul}, {shapes.matmul}] @ [{shapes.matmul}, {shapes.matmul}]^T",
                   "gflops": matmul, **matmul_timing.as_dict()},
        "conv3x3": {"shape": f"[{shapes.conv_batch}, {shapes.conv_channels}, {shapes.conv_size}, {shapes.conv_size}]"
                             f" * [{shapes.conv_channels}, {shapes.conv_channels}, 3, 3], channels-last",
                    "gflops": conv, **conv_timing.as_dict()},
    }
    fastest = max(kernels, key=lambda name: kernels[name]["gflops"])
    return {**kernels, "gflops": kernels[fastest]["gflops"], "kernel": fastest}

"""Where training runs: the torchrun process group, the device and the autocast precision."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.utils.errors import PipelineError
from pipeline.utils.hardware import native_cpu_bf16


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Dist:
    """The torchrun process group, initialised once (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PipelineError("train.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes in bf16 natively (CUDA with bf16, a CPU with
    AVX512-BF16 or AMX: :func:`pipeline.utils.hardware.native_cpu_bf16`), else ``fp16`` on CUDA and ``fp32`` on the CPU, where bf16 would be emulated
    (about 10x slower than fp32 on an AVX2-only CPU, measured); other values stay as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_cpu_bf16() else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("train.precision: fp16 needs CUDA; use bf16 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16

"""What the benchmark ran on: the device, the CPU (:mod:`pipeline.utils.hardware`: model, ISA flags, bf16 native
or emulated), threads and library versions."""
from __future__ import annotations

import os
import platform
from typing import Any

import torch
import torchvision

from pipeline.utils.hardware import cpu_bf16, cpu_description


def bf16_support(device: torch.device, isa_flags: list[str]) -> dict[str, Any]:
    """``{"bf16_native", "bf16_basis"}`` of ``device``: on CUDA ``torch.cuda.is_bf16_supported()``, on the CPU
    :func:`cpu_bf16` of oneDNN's verdict (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) and the ISA."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        return {"bf16_native": native, "bf16_basis": f"torch.cuda.is_bf16_supported() is {native}"}
    return cpu_bf16(torch.ops.mkldnn._is_mkldnn_bf16_supported(), isa_flags)


def machine_info(device: torch.device) -> dict[str, Any]:
    """The device, the CPU (model, ISA flags, bf16 native or emulated), threads and library versions."""
    cpu = cpu_description()
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["cpu"],
        **cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **bf16_support(device, cpu["isa_flags"]),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }

"""What the benchmark ran on: the CPU model, its ISA flags that matter for fp32 and bf16 kernels, and whether
bf16 is native (AMX or AVX512-BF16 instructions, and oneDNN using them) or emulated."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision

# The x86 flags (as /proc/cpuinfo spells them) that decide which kernels oneDNN and PyTorch can use.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
# Either one computes bf16 dot products in hardware (AMX tiles, or AVX512-BF16's vdpbf16ps).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_description(cpuinfo: str) -> dict[str, Any]:
    """``{"cpu", "cpu_id", "isa_flags"}`` from the text of /proc/cpuinfo (its first processor)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    cpu_id = " ".join(f"{label} {fields[key]}" for label, key in (("family", "cpu family"), ("model", "model"),
                                                                   ("stepping", "stepping")) if key in fields)
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": " ".join(filter(None, (fields.get("vendor_id", ""), cpu_id))),
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
    }


def bf16_support(device: torch.device, isa_flags: list[str]) -> dict[str, Any]:
    """``{"bf16_native", "bf16_basis"}`` of ``device``: on CUDA ``torch.cuda.is_bf16_supported()``, on the CPU
    :func:`cpu_bf16` of oneDNN's verdict (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) and the ISA."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        return {"bf16_native": native, "bf16_basis": f"torch.cuda.is_bf16_supported() is {native}"}
    return cpu_bf16(torch.ops.mkldnn._is_mkldnn_bf16_supported(), isa_flags)


def cpu_bf16(onednn: bool, isa_flags: list[str]) -> dict[str, Any]:
    """Native where oneDNN takes bf16 and the ISA has AMX-BF16 or AVX512-BF16; else emulated, and how."""
    hardware = [flag for flag in BF16_FLAGS if flag in isa_flags]
    if onednn and hardware:
        basis = f"{' and '.join(hardware)} in the ISA, oneDNN bf16 kernels"
    elif onednn:
        basis = "no AMX-BF16 or AVX512-BF16 in the ISA: oneDNN's bf16 kernels convert to fp32"
    else:
        basis = ("`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is False: bf16 convolutions take PyTorch's "
                 "generic im2col path (`aten::_slow_conv2d_*`), bf16 matmuls a generic kernel")
    return {"bf16_native": bool(onednn and hardware), "bf16_basis": basis}


def machine_info(device: torch.device) -> dict[str, Any]:
    """The device, the CPU (model, ISA flags, bf16 native or emulated), threads and library versions."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = cpu_description(cpuinfo.read_text() if cpuinfo.is_file() else "")
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

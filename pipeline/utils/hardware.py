"""What the CPU can do: its model, the ISA flags that decide which kernels oneDNN and PyTorch use, and
whether bf16 is native (AMX or AVX512-BF16 instructions, and oneDNN using them) or emulated."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Optional

import torch

# The x86 flags (as /proc/cpuinfo spells them) that decide which kernels oneDNN and PyTorch can use.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
# Either one computes bf16 dot products in hardware (AMX tiles, or AVX512-BF16's vdpbf16ps).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_description(cpuinfo: Optional[str] = None) -> dict[str, Any]:
    """``{"cpu", "cpu_id", "isa_flags"}`` from the text of /proc/cpuinfo (its first processor; by default
    this machine's, empty where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
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


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware, as :func:`cpu_bf16` decides."""
    return cpu_bf16(torch.ops.mkldnn._is_mkldnn_bf16_supported(), cpu_description()["isa_flags"])["bf16_native"]

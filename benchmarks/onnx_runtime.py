"""The YOLACT network's forward in PyTorch against its exported ONNX graph in ONNX Runtime."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.deploy.export import OPSET, export_onnx, onnx_outputs

from .timing import measure_interleaved


def compare_onnx_forward(model: nn.Module, size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Time one forward of ``model`` (eval, fp32, channels-last, batch 1, ``size`` px) in PyTorch and of its ONNX
    export in ONNX Runtime's CPU provider with as many intra-op threads as torch, in turn (median), on the CPU."""
    import onnxruntime

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        path = export_onnx(copy.deepcopy(model), Path(scratch) / "model.onnx", size, OPSET)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    eager = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    channels_last = images.contiguous(memory_format=torch.channels_last)

    def pytorch() -> None:
        with torch.no_grad():
            eager(channels_last)

    timings = measure_interleaved({"pytorch": pytorch, "onnxruntime": lambda: onnx_outputs(session, images)},
                                  torch.device("cpu"), warmup, repeats)
    with torch.no_grad():
        reference = eager(channels_last)
    largest_difference = max(float((value - reference[name]).abs().max())
                             for name, value in onnx_outputs(session, images).items())
    return {"image_size": size, "threads": threads, "opset": OPSET, "largest_difference": largest_difference,
            **{name: timing.as_dict() for name, timing in timings.items()},
            "onnxruntime_vs_pytorch": timings["pytorch"].median / timings["onnxruntime"].median}

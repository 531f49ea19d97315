"""ONNX export of a trained network, and running the exported graph with ONNX Runtime.

The graph is the network: ``images [1, 3, S, S]`` (normalised as in evaluation) to the raw outputs
``loc``, ``conf``, ``mask``, ``proto`` and ``priors`` of :class:`pipeline.models.yolact.model.Yolact`. Post-processing
(Fast NMS, mask assembly, resizing to the image) stays in :func:`pipeline.models.yolact.postprocess.detect`, which
takes ONNX Runtime's outputs as it takes PyTorch's (through
:func:`pipeline.models.networks.detect_outputs`): data-dependent shapes (the detections per class
after NMS) do not export cleanly, so :func:`onnx_detections` runs the graph and then ``detect``.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import EvalParams
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_file
from pipeline.models.networks import detect_outputs
from pipeline.models.detections import Detections

OUTPUT_NAMES = ("loc", "conf", "mask", "proto", "priors")
OPSET = 18


class NetworkOutputs(nn.Module):
    """The model with its output dict as a tuple in :data:`OUTPUT_NAMES` order (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def export_onnx(model: nn.Module, path: str | Path, size: int, opset: int = OPSET) -> Path:
    """Write ``model`` (in eval mode) as a single-file ONNX graph for ``[1, 3, size, size]`` inputs."""
    if opset < 17:
        raise PipelineError(f"--opset: {opset} is below 17, the first with the operators this model needs")
    model = NetworkOutputs(model.to("cpu", memory_format=torch.contiguous_format)).eval()
    example = torch.zeros(1, 3, size, size)
    path = Path(path)
    with atomic_file(path) as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the priors the model caches per input size become constants of the graph, as intended
        warnings.filterwarnings("ignore", message="The tensor attribute .*_priors", category=UserWarning)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                    output_names=list(OUTPUT_NAMES), external_data=False)
        program.save(str(tmp))
    return path


def onnx_session(path: str | Path):
    """An ONNX Runtime CPU session of an exported graph."""
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for missing or invalid files
        raise PipelineError(f"{path}: not a loadable ONNX graph ({type(err).__name__}: {err})") from None


def onnx_outputs(session, images: Tensor) -> dict[str, Tensor]:
    """The raw outputs of the graph for ``images [1, 3, S, S]``, as tensors keyed by :data:`OUTPUT_NAMES`."""
    values = session.run(list(OUTPUT_NAMES), {"images": images.detach().cpu().numpy().astype(np.float32)})
    return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, values)}


def onnx_detections(session, images: Tensor, eval_params: EvalParams, use_focal_loss: bool) -> list[Detections]:
    """:func:`pipeline.models.yolact.postprocess.detect` on the graph's outputs for ``images``."""
    return detect_outputs(onnx_outputs(session, images), eval_params, use_focal_loss)

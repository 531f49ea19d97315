"""Checkpoints released with the original YOLACT (github.com/dbolya/yolact) loaded into this model.

The original's ``yolact_resnet50``, ``yolact_base`` (R-101), ``yolact_im400`` and ``yolact_im700`` configs
are this model with the options of :data:`REQUIRED` (see the presets in ``configs/``); only the
parameter names differ:

=====================================  ==========================================================
ours                                   original
=====================================  ==========================================================
``backbone.conv1``, ``backbone.bn1``   the same
``backbone.layer{i}.*``                ``backbone.layers.{i-1}.*`` (same block names)
``fpn.lateral_convs.{i}``              ``fpn.lat_layers.{n-1-i}`` (the original stores C5's first)
``fpn.output_convs.{i}``               ``fpn.pred_layers.{n-1-i}`` (likewise)
``fpn.extra_convs.{i}``                ``fpn.downsample_layers.{i}``
``head.upfeature.0``                   ``prediction_layers.0.upfeature.0`` (level 0 owns the shared head)
``head.{bbox,conf,mask}_layer``        ``prediction_layers.0.{bbox,conf,mask}_layer``
``protonet.before_upsample.{0,2,4}``   ``proto_net.{0,2,4}`` (``proto_net.6`` is the upsample)
``protonet.after_upsample.{0,2}``      ``proto_net.{8,10}``
``semantic_head.conv``                 ``semantic_seg_conv``
=====================================  ==========================================================

The class layout is the same: 81 scores per anchor, background first, then COCO's 80 categories in
category-id order, which is how the prepare stage numbers the labels of the full COCO category list.
YOLACT++ (deformable convs, mask re-scoring) and the DarkNet-53 backbone have no counterpart here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pipeline.config import ConfigError, Params, flatten
from pipeline.utils.errors import PipelineError

# Params the weights cannot reveal (shapes do not change with them) but whose meaning they fix, with the
# values of every released config (the original's backbone, selected_layers 1..3, FPN and prior layout).
REQUIRED: dict[str, Any] = {
    "model.backbone.style": "pytorch",  # the stride sits on the 3x3 conv
    "model.backbone.deep_stem": False,
    "model.backbone.avg_down": False,
    "model.backbone.strides": [1, 2, 2, 2],
    "model.backbone.dilations": [1, 1, 1, 1],
    "model.backbone.out_indices": [1, 2, 3],
    "model.fpn.start_level": 0,
    "model.fpn.end_level": -1,
    "model.fpn.num_outs": 5,
    "model.fpn.add_extra_convs": "on_output",
    "model.fpn.relu_before_extra_convs": False,
    "model.fpn.relu_on_outputs": True,
    "model.fpn.upsample_mode": "bilinear",
    "anchors.aspect_ratios": [1.0, 0.5, 2.0],  # the order of the anchors within a location
    "anchors.square": True,  # use_square_anchors, set in every released config
    "loss.use_focal_loss": False,  # the conf layer was trained as one softmax over 81 scores
}
BOTTLENECK_DEPTHS = (50, 101, 152)
_FPN_NAMES = {"lateral_convs": "lat_layers", "output_convs": "pred_layers"}
_HINT = "does params match the checkpoint's config (see configs/)?"
# Keys of families this model does not have, with what they belong to.
_UNSUPPORTED = (
    ("conv_offset_mask", "YOLACT++ (deformable convolutions)"),
    ("maskiou_net.", "YOLACT++ (mask re-scoring)"),
    ("backbone._preconv", "the DarkNet-53 backbone"),
)


def check_params(params: Params) -> None:
    """Raise :class:`ConfigError` on the first param that keeps the original's weights from meaning the
    same in this model (the checkpoint's shapes then check widths, depth, classes and prototypes)."""
    flat = flatten(params)
    if params.model.backbone.depth not in BOTTLENECK_DEPTHS:
        raise ConfigError("model.backbone.depth", f"must be one of {', '.join(map(str, BOTTLENECK_DEPTHS))} with "
                                                  "model.init_from (the original YOLACT's ResNet has bottleneck blocks)")
    for key, value in REQUIRED.items():
        if flat[key] != value:
            raise ConfigError(key, f"must be {_yaml(value)} with model.init_from (the original YOLACT), "
                                   f"got {_yaml(flat[key])}")
    if any(len(level) != 1 for level in params.anchors.scales):
        raise ConfigError("anchors.scales", "must have one scale per level with model.init_from (the original YOLACT)")


def original_key(key: str, num_inputs: int) -> str:
    """The original YOLACT's name of our state-dict ``key``; ``num_inputs``: the FPN's backbone inputs."""
    module, _, rest = key.partition(".")
    if module == "backbone":
        match = re.fullmatch(r"layer(\d)\.(.+)", rest)
        return f"backbone.layers.{int(match[1]) - 1}.{match[2]}" if match else key
    if module == "fpn":
        kind, index, name = rest.split(".", 2)
        if kind == "extra_convs":
            return f"fpn.downsample_layers.{index}.{name}"
        return f"fpn.{_FPN_NAMES[kind]}.{num_inputs - 1 - int(index)}.{name}"
    if module == "head":
        return f"prediction_layers.0.{rest}"
    if module == "protonet":
        part, index, name = rest.split(".", 2)
        offset = {"before_upsample": 0, "after_upsample": 8}[part]
        return f"proto_net.{offset + int(index)}.{name}"
    if module == "semantic_head":
        return f"semantic_seg_conv.{rest.partition('.')[2]}"
    raise ValueError(f"no original name for {key}")


def map_state_dict(
    original: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """The original's state dict renamed to ours: ``(state, ignored)``.

    ``expected`` is our model's state dict (names and shapes). Every original key is consumed exactly
    once: renamed, or ``ignored`` by the original's own loader (old ``backbone.layerN`` names, and
    ``fpn.downsample_layers`` beyond the model's extra levels, from v1.0 files). BatchNorm's
    ``num_batches_tracked`` may be absent (older files); the model keeps its own. A key of YOLACT++ or
    DarkNet-53, a missing key, a key left over or a shape mismatch raises :class:`PipelineError` naming
    ``source`` and the key.
    """
    for pattern, family in _UNSUPPORTED:
        key = next((k for k in original if pattern in k), None)
        if key is not None:
            raise PipelineError(f"{source}: key {key} belongs to {family}, which this model does not implement")
    num_inputs = sum(1 for k in expected if re.fullmatch(r"fpn\.lateral_convs\.\d+\.weight", k))
    num_extra = sum(1 for k in expected if re.fullmatch(r"fpn\.extra_convs\.\d+\.weight", k))
    ignored = [k for k in original if _dropped_by_original_loader(k, num_extra)]
    remaining = set(original) - set(ignored)
    state: dict[str, Tensor] = {}
    for key, target in expected.items():
        name = original_key(key, num_inputs)
        if name not in remaining:
            if key.endswith(".num_batches_tracked"):
                continue
            raise PipelineError(f"{source}: key {name} is missing (the model's {key}): {_HINT}")
        remaining.remove(name)
        tensor = original[name]
        if tensor.shape != target.shape:
            raise PipelineError(f"{source}: key {name} has shape {list(tensor.shape)}, the model expects "
                                f"{list(target.shape)}: {_class_hint(name) or _HINT}")
        state[key] = tensor
    if remaining:
        key = next(k for k in original if k in remaining)
        raise PipelineError(f"{source}: key {key} has no place in the model ({len(remaining)} such keys): {_HINT}")
    return state, ignored


def load_released(model: nn.Module, path: str | Path) -> None:
    """Load the original YOLACT checkpoint at ``path`` (a state dict saved by its ``train.py``) into ``model``."""
    path = Path(path)
    try:
        original = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        first_line = next(iter(str(err).splitlines()), "")
        raise PipelineError(f"{path}: cannot read a torch state dict ({type(err).__name__}: {first_line})") from None
    if not isinstance(original, Mapping) or not all(isinstance(v, Tensor) for v in original.values()):
        raise PipelineError(f"{path}: expected a state dict (name -> tensor) of the original YOLACT")
    expected = model.state_dict()
    state, ignored = map_state_dict(original, expected, path.name)
    if ignored:
        print(f"{path.name}: ignored {len(ignored)} keys that the original YOLACT's loader also drops "
              f"({ignored[0]}{', ...' if len(ignored) > 1 else ''})")
    model.load_state_dict({**expected, **state})


def _dropped_by_original_loader(key: str, num_extra: int) -> bool:
    """The keys ``Yolact.load_weights`` of the original deletes before loading."""
    if key.startswith("backbone.layer") and not key.startswith("backbone.layers"):
        return True
    match = re.match(r"fpn\.downsample_layers\.(\d+)\.", key)
    return bool(match) and int(match[1]) >= num_extra


def _class_hint(name: str) -> str | None:
    if name.startswith(("prediction_layers.0.conf_layer.", "semantic_seg_conv.")):
        return ("the released checkpoints score COCO's 80 categories (+ background): "
                "use all of them (data.categories: null) on COCO")
    return None


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)

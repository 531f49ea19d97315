"""The ResNet-FPN trunk both architectures share (``model.arch`` yolact and mask_rcnn), built from params."""
from __future__ import annotations

from pipeline.models.backbone.resnet import ResNet, load_torchvision_weights
from pipeline.config import Params, resolve_path
from pipeline.models.backbone.fpn import FPN


def build_trunk(params: Params) -> tuple[ResNet, FPN]:
    """The ResNet of ``params.model.backbone`` (a ``pretrained`` torchvision state dict loaded into it;
    relative paths from the repository root) and the FPN of ``params.model.fpn`` over its outputs."""
    bb = params.model.backbone
    backbone = ResNet(
        depth=bb.depth,
        base_channels=bb.base_channels,
        style=bb.style,
        deep_stem=bb.deep_stem,
        avg_down=bb.avg_down,
        frozen_stages=bb.frozen_stages,
        norm_eval=bb.norm_eval,
        with_cp=bb.with_cp,
        zero_init_residual=bb.zero_init_residual,
        strides=bb.strides,
        dilations=bb.dilations,
        out_indices=bb.out_indices,
    )
    if bb.pretrained is not None:
        load_torchvision_weights(backbone, resolve_path(bb.pretrained))
    fp = params.model.fpn
    fpn = FPN(
        backbone.out_channels,
        fp.out_channels,
        fp.num_outs,
        start_level=fp.start_level,
        end_level=fp.end_level,
        add_extra_convs=fp.add_extra_convs,
        relu_before_extra_convs=fp.relu_before_extra_convs,
        relu_on_outputs=fp.relu_on_outputs,
        upsample_mode=fp.upsample_mode,
    )
    return backbone, fpn

"""The ResNet-FPN trunk both architectures share (``model.arch`` yolact and mask_rcnn), built from params."""
from __future__ import annotations

from pipeline.models.backbone.resnet import ResNet, load_torchvision_weights
from pipeline.config import PRETRAIN_WEIGHTS, PRETRAINED_BY_STAGE, Params, weights_path
from pipeline.utils.errors import PipelineError
from pipeline.models.backbone.fpn import FPN


def build_trunk(params: Params) -> tuple[ResNet, FPN]:
    """The ResNet of ``params.model.backbone`` (a ``pretrained`` state dict loaded into it: a torchvision file,
    relative paths from the repository root, or the pretrain stage's warm start) and the FPN of
    ``params.model.fpn`` over its outputs."""
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
        path = weights_path(bb.pretrained)
        if bb.pretrained == PRETRAINED_BY_STAGE and not path.is_file():
            raise PipelineError(f"{PRETRAIN_WEIGHTS}: the warm start is not written yet (model.backbone.pretrained: "
                                f"{PRETRAINED_BY_STAGE}); run `dvc repro pretrain` or python -m stages.pretrain first")
        load_torchvision_weights(backbone, path)
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

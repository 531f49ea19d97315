"""YOLACT: ResNet-FPN backbone, shared prediction head, ProtoNet and priors."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.priors.anchors import make_priors, num_anchors_per_location
from pipeline.models.backbone.resnet import ResNet
from pipeline.config import Params, params_path
from pipeline.models.backbone.fpn import FPN
from pipeline.models.yolact.heads import PredictionHead, ProtoNet, SemanticHead
from pipeline.models.yolact.released import check_params, load_released
from pipeline.models.backbone.trunk import build_trunk


class Yolact(nn.Module):
    """``images [B, 3, S, S]`` -> dict of ``loc [B, P, 4]``, ``conf [B, P, C+1]`` (logits), ``mask [B, P, k]``,
    ``priors [P, 4]`` (cx, cy, w, h normalised), ``proto [B, S/4, S/4, k]`` and, in train mode with a
    semantic head, ``segm [B, C, S/8, S/8]``.

    Priors follow the actual FPN feature sizes of the input and are cached per (size, device).
    """

    def __init__(
        self,
        backbone: ResNet,
        fpn: FPN,
        num_classes: int,
        num_prototypes: int,
        anchor_scales: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        square_anchors: bool = False,
        semantic_segmentation: bool = True,
    ):
        super().__init__()
        if len(anchor_scales) != fpn.num_outs:
            raise ValueError(f"{len(anchor_scales)} levels of anchor scales for {fpn.num_outs} FPN levels")
        self.backbone = backbone
        self.fpn = fpn
        channels = fpn.out_channels
        self.head = PredictionHead(
            channels, num_anchors_per_location(anchor_scales, aspect_ratios), num_classes, num_prototypes
        )
        self.protonet = ProtoNet(channels, num_prototypes)
        self.semantic_head = SemanticHead(channels, num_classes) if semantic_segmentation else None
        self.anchor_scales = [list(level) for level in anchor_scales]
        self.aspect_ratios = list(aspect_ratios)
        self.square_anchors = square_anchors
        self._priors: dict[tuple, Tensor] = {}

    def priors(self, image_size: int, feature_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        key = (image_size, tuple(feature_sizes), device)
        if key not in self._priors:
            self._priors[key] = make_priors(
                image_size, feature_sizes, self.anchor_scales, self.aspect_ratios, self.square_anchors, device
            )
        return self._priors[key]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"YOLACT takes square images, got {height}x{width}")
        features = self.fpn(self.backbone(images))
        per_level = [self.head(f) for f in features]
        out = {
            "loc": torch.cat([p[0] for p in per_level], dim=1),
            "conf": torch.cat([p[1] for p in per_level], dim=1),
            "mask": torch.cat([p[2] for p in per_level], dim=1),
            "priors": self.priors(height, [tuple(f.shape[-2:]) for f in features], images.device),
            "proto": self.protonet(features[0]),
        }
        if self.training and self.semantic_head is not None:
            out["segm"] = self.semantic_head(features[0])
        return out


def build_model(params: Params, num_classes: int) -> Yolact:
    """YOLACT from ``params.model``, ``params.anchors`` and ``params.loss`` (focal bias init); the
    ``model.arch`` of params is not read (:func:`pipeline.models.networks.build_network` builds either architecture).

    ``num_classes`` excludes background. A ``model.backbone.pretrained`` file (torchvision resnetNN state
    dict; relative paths from the repository root) is loaded into the backbone; a ``model.init_from``
    file (a checkpoint of the original YOLACT, :mod:`pipeline.models.yolact.released`) into the whole model.
    """
    if params.model.init_from is not None:
        check_params(params)
    backbone, fpn = build_trunk(params)
    model = Yolact(
        backbone,
        fpn,
        num_classes,
        params.model.head.num_prototypes,
        params.anchors.scales,
        params.anchors.aspect_ratios,
        square_anchors=params.anchors.square,
        semantic_segmentation=params.model.head.semantic_segmentation,
    )
    if params.loss.use_focal_loss:
        model.head.init_focal_bias(params.loss.focal_init_pi)
    if params.model.init_from is not None:
        load_released(model, params_path(params.model.init_from))
    return model


def count_flops(model: nn.Module, images: Tensor) -> int:
    """Forward FLOPs of ``model(images)`` as counted by ``torch.utils.flop_counter`` (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()

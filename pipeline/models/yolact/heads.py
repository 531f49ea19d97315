"""YOLACT heads: the shared prediction head, ProtoNet and the semantic segmentation head."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PredictionHead(nn.Module):
    """Shared over FPN levels: 3x3 conv + ReLU, then 3x3 convs for boxes, class logits, mask coefficients.

    Per level ``x [B, C_in, H, W]`` gives ``loc [B, H*W*A, 4]``, ``conf [B, H*W*A, num_classes + 1]``
    (raw logits, background first) and ``mask [B, H*W*A, k]`` (tanh), ordered y, x, anchor.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_prototypes: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.num_scores = num_classes + 1
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(in_channels, num_anchors * self.num_scores, 3, padding=1)
        self.mask_layer = nn.Conv2d(in_channels, num_anchors * num_prototypes, 3, padding=1)
        _xavier_init(self)

    def init_focal_bias(self, prior_prob: float) -> None:
        """RetinaNet-style start for focal loss: every class scores ``prior_prob``, background ``1 - prior_prob``.

        Biases are set per anchor (channel ``a * (C + 1) + c``) as the logits of those probabilities.
        """
        foreground = math.log(prior_prob / (1 - prior_prob))
        with torch.no_grad():
            bias = self.conf_layer.bias.view(self.num_anchors, self.num_scores)
            bias.fill_(foreground)
            bias[:, 0] = -foreground

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.upfeature(x)
        batch = x.shape[0]

        def flatten(y: Tensor, last: int) -> Tensor:
            return y.permute(0, 2, 3, 1).reshape(batch, -1, last)

        loc = flatten(self.bbox_layer(x), 4)
        conf = flatten(self.conf_layer(x), self.num_scores)
        mask = torch.tanh(flatten(self.mask_layer(x), self.num_prototypes))
        return loc, conf, mask


class ProtoNet(nn.Module):
    """Prototype masks from P3: ``x [B, C, H, W]`` -> ``[B, 2H, 2W, k]`` (channels last, ReLU'd).

    Three 3x3 convs + ReLU, bilinear x2 upsample + ReLU, 3x3 conv + ReLU, 1x1 conv to k, ReLU.
    """

    def __init__(self, in_channels: int, num_prototypes: int, hidden_channels: int | None = None):
        super().__init__()
        hidden = hidden_channels or in_channels
        self.before_upsample = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.after_upsample = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_prototypes, 1),
            nn.ReLU(inplace=True),
        )
        _xavier_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.before_upsample(x)
        x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.after_upsample(x).permute(0, 2, 3, 1)


class SemanticHead(nn.Module):
    """Auxiliary training-only head: 1x1 conv on P3, ``[B, C_in, H, W]`` -> ``[B, num_classes, H, W]`` logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        _xavier_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _xavier_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

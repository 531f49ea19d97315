"""BatchNorm folded into the convolution before it, for inference: one pass over each feature map fewer."""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` where every ``BatchNorm2d`` (or ``SyncBatchNorm``) that directly follows a ``Conv2d`` is folded
    into it (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replaced by ``nn.Identity``; ``model`` is unchanged.

    "Follows" is registration order among a module's children (``conv1, bn1, conv2, bn2`` in a ResNet block,
    ``Conv2d, BatchNorm2d`` in a ``Sequential``), which is how :mod:`pipeline.models.backbone.resnet` builds
    every normalised convolution; a pair is folded only when the shapes agree. The outputs equal the
    unfolded model's in eval mode up to float rounding (tests/models/test_folding.py).
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        children = list(module.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm))
                    and norm.track_running_stats
                    and conv.out_channels == norm.num_features):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Identity())
    return folded

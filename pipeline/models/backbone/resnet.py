"""ResNet backbone with MMDetection's options and torchvision's parameter names.

Parameter names (``conv1``, ``bn1``, ``layer1..4``, blocks ``conv1/bn1/.../downsample.0/.1``) match
``torchvision.models.resnetNN`` so an ImageNet state dict saved by torchvision loads with
:func:`load_torchvision_weights`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.utils.checkpoint as checkpoint
from torch import Tensor, nn

from pipeline.utils.errors import PipelineError


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``style`` has no effect: the stride is on the first 3x3."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            out = checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) block (ResNet-50/101/152).

    ``style="pytorch"`` strides the 3x3 conv (torchvision, ResNet v1.5); ``"caffe"`` strides the first 1x1.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
    ):
        super().__init__()
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, conv2_stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            out = checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


ARCHITECTURES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk returning the stages in ``out_indices`` (0..3 = C2..C5, strides 4..32).

    Options follow MMDetection's ResNet: ``base_channels`` (stage widths base * 1, 2, 4, 8, stem = base),
    ``style``, ``deep_stem`` (three 3x3 convs instead of the 7x7), ``avg_down`` (avg-pool before the
    1x1 shortcut conv), ``frozen_stages`` (stem + first N stages: no gradients, BN statistics frozen),
    ``norm_eval`` (every BN in eval mode while training), ``with_cp`` (activation checkpointing per
    block), ``zero_init_residual``, per-stage ``strides`` and ``dilations``.
    """

    def __init__(
        self,
        depth: int = 50,
        base_channels: int = 64,
        style: str = "pytorch",
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = False,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: Sequence[int] = (1, 2, 3),
    ):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be pytorch or caffe, got {style!r}")
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError("strides and dilations need one value per stage (4)")
        if not out_indices or not all(0 <= i <= 3 for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in 0..3, got {list(out_indices)}")
        block, blocks_per_stage = ARCHITECTURES[depth]
        self.depth = depth
        self.deep_stem = deep_stem
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_indices = tuple(out_indices)

        if deep_stem:
            half = base_channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, padding=1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, base_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(base_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(base_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = base_channels
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(blocks_per_stage):
            planes = base_channels * 2**i
            stage = _make_stage(
                block, in_channels, planes, num_blocks, strides[i], dilations[i], style, avg_down, with_cp
            )
            self.add_module(f"layer{i + 1}", stage)
            in_channels = planes * block.expansion
            if i in self.out_indices:
                self.out_channels.append(in_channels)

        self._init_weights(zero_init_residual)
        self._freeze_stages()

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_norm.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.stem] if self.deep_stem else [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        """Switch mode, keeping frozen stages (and every BN when ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, 3, H, W]`` -> one feature map per ``out_indices`` entry, C2 ``[B, C, H/4, W/4]`` .. C5."""
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(max(self.out_indices) + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _make_stage(
    block: type[nn.Module],
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int,
    dilation: int,
    style: str,
    avg_down: bool,
    with_cp: bool,
) -> nn.Sequential:
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        if avg_down:
            # MMDetection's ResNet-D shortcut: pool first, then a stride-1 1x1 conv.
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
    blocks = [block(in_channels, planes, stride, dilation, downsample, style, with_cp)]
    blocks += [
        block(out_channels, planes, 1, dilation, None, style, with_cp) for _ in range(1, num_blocks)
    ]
    return nn.Sequential(*blocks)


def load_torchvision_weights(backbone: ResNet, path: str | Path) -> None:
    """Load a torchvision ``resnetNN`` state dict from a local file into ``backbone`` (``fc.*`` ignored).

    Raises :class:`PipelineError` naming the file when it is no state dict or its tensors do not fit
    the backbone exactly.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        first_line = next(iter(str(err).splitlines()), "")
        raise PipelineError(f"{path}: cannot read a torch state dict ({type(err).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path}: expected a torchvision ResNet state dict (name -> tensor)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
            if items
        ]
        raise PipelineError(
            f"{path}: does not match ResNet-{backbone.depth} with these options "
            f"(torchvision layout needs base_channels 64, no deep_stem, no avg_down); " + "; ".join(problems)
        )
    backbone.load_state_dict(state)

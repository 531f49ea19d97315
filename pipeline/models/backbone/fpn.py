"""Feature Pyramid Network in MMDetection's general form, with YOLACT's output ReLU."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EXTRA_MODES = ("on_input", "on_lateral", "on_output", "none")


class FPN(nn.Module):
    """Top-down pyramid over backbone maps ``inputs[start_level:end_level]`` plus extra coarser levels.

    Lateral 1x1 convs project each selected input to ``out_channels``; coarser laterals are upsampled
    to the finer map's size (``upsample_mode``) and added; a 3x3 conv per level gives the outputs
    (followed by ReLU when ``relu_on_outputs``, as YOLACT). ``num_outs - selected`` extra levels come
    from stride-2 3x3 convs whose first input is the last backbone map (``on_input``), the last lateral
    (``on_lateral``) or the last output (``on_output``), or, with ``"none"``, from 1x1 stride-2 max
    pooling of the last output (Faster R-CNN's P6). ``relu_before_extra_convs`` puts a ReLU before
    every extra conv after the first. ``end_level`` is exclusive; -1 selects through the last input.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: str = "none",
        relu_before_extra_convs: bool = False,
        relu_on_outputs: bool = False,
        upsample_mode: str = "nearest",
    ):
        super().__init__()
        if add_extra_convs not in EXTRA_MODES:
            raise ValueError(f"add_extra_convs must be one of {EXTRA_MODES}, got {add_extra_convs!r}")
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be nearest or bilinear, got {upsample_mode!r}")
        end = len(in_channels) if end_level == -1 else end_level
        if not 0 <= start_level < end <= len(in_channels):
            raise ValueError(f"start_level {start_level} / end_level {end_level} do not fit {len(in_channels)} inputs")
        if num_outs < end - start_level:
            raise ValueError(f"num_outs {num_outs} is fewer than the {end - start_level} selected inputs")
        self.out_channels = out_channels
        self.start_level = start_level
        self.end_level = end
        self.num_outs = num_outs
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.relu_on_outputs = relu_on_outputs
        self.upsample_mode = upsample_mode

        selected = list(in_channels[start_level:end])
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in selected)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in selected
        )
        num_extra = num_outs - len(selected)
        self.extra_convs = nn.ModuleList()
        if add_extra_convs != "none":
            for i in range(num_extra):
                source = selected[-1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.extra_convs.append(nn.Conv2d(source, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """``inputs``: backbone maps, finest first -> ``num_outs`` maps ``[B, out_channels, H_l, W_l]``."""
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        upsample_args = {"align_corners": False} if self.upsample_mode == "bilinear" else {}
        for i in range(len(laterals) - 1, 0, -1):
            # Resize to the exact finer size: odd sizes (e.g. 69 -> 35) make a x2 factor wrong.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode=self.upsample_mode, **upsample_args
            )
        outs = [conv(lateral) for conv, lateral in zip(self.output_convs, laterals)]
        if self.relu_on_outputs:
            outs = [F.relu(out) for out in outs]

        num_extra = self.num_outs - len(outs)
        if num_extra and self.add_extra_convs == "none":
            for _ in range(num_extra):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif num_extra:
            source = {
                "on_input": inputs[self.end_level - 1],
                "on_lateral": laterals[-1],
                "on_output": outs[-1],
            }[self.add_extra_convs]
            outs.append(strided_conv(self.extra_convs[0], source))
            for conv in self.extra_convs[1:]:
                outs.append(strided_conv(conv, F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return outs


def strided_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``, in float32 when ``x`` is 1 x 1 under CPU bf16 autocast.

    Under CPU bf16 autocast, torch 2.14's (oneDNN) backward of a strided 3x3 conv over a 1 x 1 input
    returns non-finite weight gradients about one call in five (uninitialised memory): small inputs
    (64 px) reach 1 x 1 at the coarsest extra level. Such a level costs nothing in float32.
    """
    if x.shape[-2:] == (1, 1) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)

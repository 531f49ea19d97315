"""Train and eval transforms over ``(image, target)``: YOLACT's augmentation, resize and normalise."""
from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.config import InputParams


def build_transforms(input_params: InputParams, train: bool) -> v2.Compose:
    """Transforms over ``(image, target)`` as :meth:`InstanceDataset.load` gives them.

    Train: YOLACT's augmentation (photometric distortion, zoom-out up to ``augment.max_expand``
    filled with the mean, SSD IoU-constrained random crop, horizontal flip), each switchable in
    ``input.augment``; then, as in eval, resize to ``S x S`` (aspect not kept) and normalise. Masks and
    crowd boxes follow every geometric step; :func:`finish_target` then clamps boxes and drops the
    instances that vanished. Randomness comes from torch's global RNG.
    """
    size = input_params.size
    augment = input_params.augment
    steps: list[Any] = []
    if train:
        if augment.photometric:
            steps.append(PhotometricDistort(p=0.5))
        if augment.expand and augment.max_expand > 1:
            fill = {tv_tensors.Image: [round(m) for m in input_params.mean], "others": 0}
            steps.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, augment.max_expand), p=0.5))
        if augment.random_crop:
            steps.append(v2.RandomIoUCrop())
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        ResizeWithExactMasks((size, size), antialias=True),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
        v2.Normalize(mean=input_params.mean, std=input_params.std),
    ]
    return v2.Compose(steps)


class PhotometricDistort(v2.RandomPhotometricDistort):
    """SSD/YOLACT photometric distortion: ``v2.RandomPhotometricDistort`` with the same random draws
    and order, except that hue turns the chroma plane in YIQ (:func:`rotate_hue`, one 3x3 colour
    matrix) instead of a round trip through HSV, which took a third of the loader's time.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = inpt.as_subclass(torch.Tensor)
        contrast = params["contrast_factor"]
        if params["brightness_factor"] is not None:
            image = F.adjust_brightness(image, brightness_factor=params["brightness_factor"])
        if contrast is not None and params["contrast_before"]:
            image = F.adjust_contrast(image, contrast_factor=contrast)
        if params["saturation_factor"] is not None:
            image = F.adjust_saturation(image, saturation_factor=params["saturation_factor"])
        if params["hue_factor"] is not None:
            image = rotate_hue(image, params["hue_factor"])
        if contrast is not None and not params["contrast_before"]:
            image = F.adjust_contrast(image, contrast_factor=contrast)
        if params["channel_permutation"] is not None:
            image = image[params["channel_permutation"]]
        return tv_tensors.wrap(image, like=inpt)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rotate_hue(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Shift the hue of ``image [3, H, W]`` (uint8 or float in [0, 1]) by ``hue_factor`` turns
    (-0.5..0.5, as ``F.adjust_hue``): rotate (I, Q) about the luma axis, keep luma, clamp to range."""
    angle = -2 * math.pi * hue_factor  # YIQ turns the other way round the colour wheel from HSV
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    flat = image.reshape(3, -1).to(torch.float32)
    out = (matrix @ flat).reshape(image.shape)
    if image.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0, 1).to(image.dtype)


class ResizeWithExactMasks(v2.Resize):
    """``v2.Resize`` whose masks use centre-aligned nearest sampling (``NEAREST_EXACT``).

    Plain ``NEAREST`` samples source pixel ``floor(i * in / out)``, shifting masks by up to half an
    output pixel towards the origin relative to the boxes, which scale about pixel edges.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, self.size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)

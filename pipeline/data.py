"""Loading prepared data: the instance dataset, its transforms and the batch collate.

Randomness: the train transforms draw from torch's global RNG. The train loop seeds it for every
sample (:class:`pipeline.train.SeededSamples`), so augmentation does not depend on workers or resumes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .config import InputParams
from .errors import PipelineError
from .evaluation import load_coco

Transform = Callable[[Any, Any], tuple[Any, Any]]


ROLES = ("train", "val", "test")  # train; val: model selection; test: the reported numbers
SCORED_ROLES = ("val", "test")


def annotations_path(prepared_dir: str | Path, role: str) -> Path:
    """The cleaned COCO json of ``role`` ("train", "val" or "test"), what the loader reads."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return Path(prepared_dir) / f"{role}.json"


def ground_truth_path(prepared_dir: str | Path, role: str) -> Path:
    """The official ground truth of ``role`` ("val" or "test"), what scoring reads: the original
    annotation records of its images and kept categories, untouched by cleaning."""
    if role not in SCORED_ROLES:
        raise ValueError(f"role must be one of {', '.join(SCORED_ROLES)}, got {role!r}")
    return Path(prepared_dir) / f"gt_{role}.json"


def image_dir(prepared_dir: str | Path, role: str) -> Path:
    """Where ``role``'s images live (relative records are relative to ``prepared_dir``)."""
    recorded = json.loads((Path(prepared_dir) / "image_dirs.json").read_text())[role]
    return Path(prepared_dir) / recorded


def read_label_map(prepared_dir: str | Path) -> list[dict[str, Any]]:
    """``[{"label": 0, "category_id": ..., "name": ...}, ...]``, labels contiguous from 0."""
    return json.loads((Path(prepared_dir) / "labels.json").read_text())


class InstanceDataset(torch.utils.data.Dataset):
    """Images of one prepared role with their instances.

    Item: ``(image, target)``; ``image`` float32 ``[3, S, S]`` normalised; ``target``:
    ``boxes`` float32 ``[G, 4]`` normalised x1y1x2y2 (non-crowd), ``labels`` int64 ``[G]`` (0-based),
    ``masks`` uint8 ``[G, S, S]``, ``crowd_boxes`` float32 ``[K, 4]`` normalised, ``image_id`` int,
    ``orig_size`` ``(h, w)``. Instances whose mask or box vanishes under the transforms are dropped.
    """

    def __init__(self, prepared_dir: str | Path, role: str, transforms: Transform):
        self.coco = load_coco(annotations_path(prepared_dir, role))
        self.image_dir = image_dir(prepared_dir, role)
        self.transforms = transforms
        self.label_of = {entry["category_id"]: entry["label"] for entry in read_label_map(prepared_dir)}
        self.image_ids = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        image, target = self.load(image_id)
        image, target = self.transforms(image, target)
        return image, finish_target(target, image_id)

    def load(self, image_id: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The untransformed image (uint8 ``[3, H, W]``, RGB) and its instances, crowd included:
        ``boxes`` (absolute x1y1x2y2), ``masks`` ``[N, H, W]``, ``labels``, ``iscrowd`` (bool)."""
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        if tuple(image.shape[1:]) != (height, width):
            raise PipelineError(f"{path}: image is {image.shape[2]}x{image.shape[1]}, prepared data says "
                                f"{width}x{height} (changed since prepare? run the prepare stage again)")
        anns = self.coco.imgToAnns[image_id]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, height, width), np.uint8)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([bool(a["iscrowd"]) for a in anns], dtype=torch.bool),
            "orig_size": (height, width),
        }
        return tv_tensors.Image(image), target


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 ``[3, H, W]`` RGB, whatever its mode (grey, RGBA, CMYK, 16-bit grey).

    A missing or broken file raises :class:`PipelineError` naming it: prepare checked every image,
    so the file was removed or changed since.
    """
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):  # PIL's RGB conversion would clip 16-bit values at 255
                im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
            return F.pil_to_tensor(im.convert("RGB"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: image not found (removed since prepare? run the prepare stage again)") from None
    except Exception as err:  # PIL raises many types for broken files
        raise PipelineError(f"{path}: cannot read image ({type(err).__name__}: {err}); "
                            "changed since prepare? run the prepare stage again") from None


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


def finish_target(target: dict[str, Any], image_id: int) -> dict[str, Any]:
    """Clamp boxes to the image, fit them to their masks, drop vanished instances (empty mask, or box
    under 1 px wide or high, as ``v2.SanitizeBoundingBoxes``), split crowd from instances and normalise
    boxes to [0, 1]."""
    masks = target["masks"].as_subclass(torch.Tensor)
    height, width = masks.shape[-2:]
    canvas = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.minimum(target["boxes"].as_subclass(torch.Tensor).clamp(min=0), canvas)
    boxes, keep = fit_boxes_to_masks(boxes, masks)
    boxes = boxes / canvas
    crowd = target["iscrowd"]
    instance = keep & ~crowd
    return {
        "boxes": boxes[instance],
        "labels": target["labels"][instance],
        "masks": masks[instance].to(torch.uint8),
        "crowd_boxes": boxes[keep & crowd],
        "image_id": int(image_id),
        "orig_size": tuple(target["orig_size"]),
    }


def fit_boxes_to_masks(boxes: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull box edges ``[N, 4]`` (x1y1x2y2, pixels) that overshoot their mask ``[N, H, W]`` by more
    than 1 px in to the mask's extent.

    A crop keeps the part of a cut object inside it: the clipped box may then be far wider than what
    is left of the object (an L-shape cut at the knee). Edges within 1 px of the mask (rasterisation
    and resampling error) keep their exact geometric value. Returns the boxes and ``keep [N]`` bool:
    the mask is non-empty and the box is at least 1 px wide and high.
    """
    keep = (masks.flatten(1) != 0).any(dim=1)
    fitted = boxes.clone()
    if keep.any():
        extent = masks_to_boxes(masks[keep]).to(boxes.dtype)
        extent[:, 2:] += 1  # masks_to_boxes gives the last pixel's index; the box edge lies past it
        inner = torch.cat(
            [torch.maximum(boxes[keep, :2], extent[:, :2]), torch.minimum(boxes[keep, 2:], extent[:, 2:])], dim=1
        )
        fitted[keep] = torch.where((inner - boxes[keep]).abs() > 1, inner, boxes[keep])
    keep &= (fitted[:, 2] - fitted[:, 0] >= 1) & (fitted[:, 3] - fitted[:, 1] >= 1)
    return fitted, keep


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(images [B, 3, S, S], [target, ...])``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)

"""Loading prepared data: the instance dataset, its transforms and the batch collate.

Randomness: the train transforms draw from torch's global RNG. The train loop seeds it for every
sample (:class:`pipeline.training.loop.SeededSamples`), so augmentation does not depend on workers or resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms.v2 import functional as F

from pipeline.utils.errors import PipelineError
from pipeline.data.coco import load_coco
from pipeline.data.layout import annotations_path, image_dir, read_label_map


Transform = Callable[[Any, Any], tuple[Any, Any]]


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

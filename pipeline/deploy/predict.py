"""Inference on new images: a trained model as a :class:`Predictor`, and the files and folders it reads.

    predictor = Predictor.from_checkpoint("models/model.pt")
    prediction = predictor.predict("photo.jpg")  # or a PIL image, a numpy array, a uint8 tensor

Any size and aspect, grey, RGBA and 16-bit images: :func:`to_rgb` makes every input uint8 RGB, the
network sees it resized to ``input.size`` as in evaluation, and boxes and masks come back in the
original image's pixels.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from pipeline.config import EvalParams
from pipeline.data.transforms import build_transforms
from pipeline.utils.distributed import select_device
from pipeline.utils.errors import PipelineError
from pipeline.evaluation.coco import coco_results
from pipeline.models.loading import TrainedModel, load_model
from pipeline.models.networks import network_of
from pipeline.models.detections import to_image

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class Prediction:
    """One image's detections, sorted by decreasing score, in the original image's pixels."""

    boxes: Tensor  # [N, 4] x1y1x2y2, float
    labels: Tensor  # [N] 0-based class index: class_names[label], category_ids[label]
    scores: Tensor  # [N]
    masks: Tensor  # [N, H, W] bool
    class_names: Sequence[str]
    category_ids: Sequence[int]

    def __len__(self) -> int:
        return len(self.scores)

    def as_dict(self) -> dict[str, Tensor]:
        return {"boxes": self.boxes, "labels": self.labels, "scores": self.scores, "masks": self.masks}


class Predictor:
    """A trained model with its preprocessing and post-processing, for images one at a time."""

    def __init__(self, trained: TrainedModel, device: torch.device, eval_params: EvalParams):
        self.trained = trained
        self.model = network_of(trained.model).inference_model(trained.model)
        self.device = device
        self.eval_params = eval_params
        self.transform = build_transforms(trained.params.input, train=False)
        self.class_names = [entry["name"] for entry in trained.label_map]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", score_threshold: float | None = None,
                        eval_params: EvalParams = EvalParams()) -> "Predictor":
        """Load a ``model.pt`` of the train stage; ``device``: ``auto``, ``cpu`` or ``cuda``."""
        if score_threshold is not None:
            if not 0 <= score_threshold < 1:
                raise PipelineError(f"score threshold: {score_threshold} is not in [0, 1)")
            eval_params = replace(eval_params, score_threshold=score_threshold)
        torch_device = select_device(device)
        return cls(load_model(path, torch_device), torch_device, eval_params)

    @torch.no_grad()
    def predict(self, image: ImageInput) -> Prediction:
        """Detections of ``image``: a file path, a PIL image, a numpy ``[H, W]``/``[H, W, C]`` array or a
        uint8 ``[3, H, W]`` tensor."""
        rgb = to_rgb(image)
        height, width = rgb.shape[-2:]
        batch = self.transform(tv_tensors.Image(rgb))[None].to(self.device)
        (det,) = network_of(self.model).detect(self.model, batch, self.eval_params, self.trained.params.loss.use_focal_loss)
        pixels = {k: v.cpu() for k, v in to_image(det, height, width, self.eval_params.mask_threshold).items()}
        return Prediction(pixels["boxes"], pixels["labels"], pixels["scores"], pixels["masks"],
                          self.class_names, self.trained.category_ids)

    def coco_records(self, image_id: int, prediction: Prediction) -> list[dict]:
        """COCO result records of one image, box and RLE mask in each (``COCO.loadRes`` reads either)."""
        both = coco_results(image_id, prediction.as_dict(), prediction.category_ids)
        return [{**box, "segmentation": mask["segmentation"]} for box, mask in zip(both["bbox"], both["segm"])]


def to_rgb(image: ImageInput) -> Tensor:
    """Any supported image as uint8 ``[3, H, W]`` RGB: grey is repeated, alpha dropped, 16-bit scaled to 8."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                return to_rgb(opened)
        except FileNotFoundError:
            raise PipelineError(f"{image}: file not found") from None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise PipelineError(f"{image}: cannot read image ({type(err).__name__}: {err})") from None
    if isinstance(image, Image.Image):
        if image.mode.startswith("I;16") or image.mode == "I":
            return to_rgb(np.asarray(image))
        return F.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise PipelineError(f"image tensor: expected uint8 [3, H, W], got {image.dtype} {list(image.shape)}")
        return image
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint16 or array.dtype == np.int32:
            array = (array.astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        if array.dtype != np.uint8:
            raise PipelineError(f"image array: expected uint8 or uint16, got {array.dtype}")
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise PipelineError(f"image array: expected [H, W], [H, W, 3] or [H, W, 4], got {list(array.shape)}")
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    raise PipelineError(f"image: unsupported type {type(image).__name__}")


def find_images(sources: Iterable[str]) -> list[Path]:
    """The image files named by ``sources``: files, folders (their images, recursively) and globs, in order,
    each once. A source that names nothing raises :class:`PipelineError` naming it."""
    found: dict[Path, None] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise PipelineError(f"--source {source}: no such file, folder or matching image")
        found.update(dict.fromkeys(matches))
    return list(found)


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct overlay file name per input: its stem, with its parent folders where stems repeat."""
    stems = [p.stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            stem = "_".join(path.with_suffix("").parts[-3:]).lstrip("_")
        names.append(f"{stem}.png")
    if len(set(names)) < len(names):  # deeper collisions: fall back on the input's position
        names = [f"{index:06d}_{name}" for index, name in enumerate(names, start=1)]
    return names

"""An embedded COCO-format dataset of shapes, deterministic from a seed.

Each image has a textured background (gradient, stripes or colour blobs), unannotated distractors
(lines, arcs, irregular blobs) and ``min_objects..max_objects`` annotated shapes whose class is given
by their outline only (colours are random). Later objects occlude earlier ones; an annotation holds the
visible part only, and a placement that would leave an earlier object less than half visible is
rejected, so no instance ends up almost fully occluded. Some images get one ``iscrowd`` region: a
cluster of small shapes of one class stored as uncompressed RLE, as COCO stores crowds.

The output is the exact COCO layout (``annotations/instances_<split>.json`` and ``<split>/*.png``),
read back by :mod:`pipeline.prepare` like real COCO, as three splits: train, val and test. Every image
draws from its own generator seeded by ``(seed, split, index)``, so files are byte-identical across runs
and independent of the split sizes, and image ids are unique across the splits.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from pipeline.config import SYNTHETIC_MAX_IMAGES, SyntheticParams

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "ring", "supercategory": "shape"},
    {"id": 6, "name": "cross", "supercategory": "shape"},
]
SPLITS = {"train": 0, "val": 1, "test": 2}  # the split's code in every image's seed and id
ID_STRIDE = SYNTHETIC_MAX_IMAGES  # image ids of split k are k * ID_STRIDE + 1, + 2, ...

MIN_RADIUS = 14.0  # circumradius in pixels; smaller shapes are hard to tell apart at 160 px
MIN_VISIBLE = 0.5  # fraction of its full area every object keeps after later objects are drawn
MIN_COLOUR_DISTANCE = 80.0  # RGB distance between an object and the background under it
PLACEMENT_TRIES = 12
PARALLEL_MIN_IMAGES = 200  # fewer images per worker than this: a process start costs more than it saves


@dataclass
class Instance:
    category_id: int
    mask: np.ndarray  # bool [H, W], the full (unoccluded) shape
    iscrowd: bool = False
    visible: Optional[np.ndarray] = None  # bool [H, W], what later instances leave of ``mask``


def generate(root: str | Path, params: SyntheticParams, seed: int, workers: Optional[int] = None) -> None:
    """Write the train, val and test splits under ``root`` in the COCO layout."""
    for split in SPLITS:
        generate_split(root, split, getattr(params, f"{split}_images"), params, seed, workers)


def generate_split(root: str | Path, split: str, num_images: int, params: SyntheticParams, seed: int,
                   workers: Optional[int] = None) -> Path:
    """Write ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json``; return the json's path.

    Image ``index`` of ``split`` is drawn from the generator seeded by ``(seed, SPLITS[split], index)``
    and gets the id ``SPLITS[split] * ID_STRIDE + index + 1``: no id is in two splits, and another
    ``seed`` gives another sample of the same distribution (e.g. a second test set). ``workers``
    processes render the images (default: one per core, for splits large enough to repay the start-up);
    the files do not depend on it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0 <= num_images < ID_STRIDE:
        raise ValueError(f"num_images must be in [0, {ID_STRIDE}), got {num_images}")
    root = Path(root)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    render = partial(_write_image, image_dir=image_dir, split=split, params=params, seed=seed)
    if workers is None:
        workers = min(os.cpu_count() or 1, max(num_images // PARALLEL_MIN_IMAGES, 1))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rendered = list(pool.map(render, range(num_images), chunksize=64))
    else:
        rendered = [render(index) for index in range(num_images)]
    images, annotations = [], []
    for image, image_annotations in rendered:
        images.append(image)
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, **annotation})
    dataset = {
        "info": {"description": "synthetic shapes (pipeline.synthetic)", "seed": seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset))
    return path



def _write_image(index: int, image_dir: Path, split: str, params: SyntheticParams, seed: int) -> tuple[dict, list[dict]]:
    """Render and save image ``index`` of ``split``; its image record and annotations (ids not yet assigned)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    pixels, instances = render_image(
        rng, params.width, params.height, params.min_objects, params.max_objects, params.crowd_prob
    )
    image_id = SPLITS[split] * ID_STRIDE + index + 1
    file_name = f"{index + 1:06d}.png"
    Image.fromarray(pixels).save(image_dir / file_name, format="PNG")
    image = {"id": image_id, "file_name": file_name, "width": params.width, "height": params.height}
    return image, [_annotation(image_id, instance) for instance in instances]


def render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    min_objects: int,
    max_objects: int,
    crowd_prob: float,
) -> tuple[np.ndarray, list[Instance]]:
    """One image ``uint8 [H, W, 3]`` and its instances in drawing order, ``visible`` filled in."""
    canvas = _background(rng, width, height)
    for _ in range(rng.integers(0, 4)):
        _draw_distractor(rng, canvas)

    placed: list[Instance] = []
    if rng.random() < crowd_prob:
        crowd = _crowd_region(rng, width, height)
        if crowd is not None:
            placed.append(crowd)
            _paint(rng, canvas, crowd.mask)
    for _ in range(rng.integers(min_objects, max_objects + 1)):
        instance = _place_object(rng, width, height, placed)
        if instance is not None:
            placed.append(instance)
            _paint(rng, canvas, instance.mask)

    covered = np.zeros((height, width), dtype=bool)
    for instance in reversed(placed):
        instance.visible = instance.mask & ~covered
        covered |= instance.mask
    return np.asarray(canvas), placed


def shape_mask(
    category_id: int, cx: float, cy: float, radius: float, angle: float, size: tuple[int, int]
) -> np.ndarray:
    """Bool mask ``[H, W]`` of one shape with circumradius ``radius`` (pixels) rotated by ``angle``."""
    width, height = size
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    name = CATEGORIES[category_id - 1]["name"]
    if name in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if name == "ring":
            inner = 0.55 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_outline(name, cx, cy, radius, angle), fill=1)
    return np.asarray(image, dtype=bool)


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool mask ``[H, W]``: column-major run lengths, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _outline(name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if name == "square":
        polar = [(radius, angle + math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif name == "triangle":
        polar = [(radius, angle + k * 2 * math.pi / 3) for k in range(3)]
    elif name == "star":
        polar = [(radius if k % 2 == 0 else 0.42 * radius, angle + k * math.pi / 5) for k in range(10)]
    elif name == "cross":
        # A plus sign: arms of half-width 0.3 R reaching R from the centre.
        a, r = 0.3 * radius, radius
        corners = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r),
                   (-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)]
        polar = [(math.hypot(x, y), math.atan2(y, x) + angle) for x, y in corners]
    else:
        raise ValueError(f"no outline for {name}")
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for r, t in polar]


def _place_object(rng: np.random.Generator, width: int, height: int, placed: list[Instance]) -> Instance | None:
    """A random shape that leaves every earlier instance at least MIN_VISIBLE visible, or None."""
    max_radius = min(width, height) / 2
    min_radius = min(MIN_RADIUS, max_radius)
    for _ in range(PLACEMENT_TRIES):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        radius = float(np.exp(rng.uniform(math.log(min_radius), math.log(max_radius))))
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        mask = shape_mask(category_id, cx, cy, radius, rng.uniform(0, 2 * math.pi), (width, height))
        if _keeps_others_visible(mask, placed):
            return Instance(category_id, mask)
    return None


def _crowd_region(rng: np.random.Generator, width: int, height: int) -> Instance | None:
    """A cluster of 6-12 small shapes of one class, annotated as one crowd region."""
    category_id = int(rng.integers(1, len(CATEGORIES) + 1))
    region_w = rng.uniform(0.25, 0.45) * width
    region_h = rng.uniform(0.25, 0.45) * height
    x0, y0 = rng.uniform(0, width - region_w), rng.uniform(0, height - region_h)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(6, 13)):
        radius = min(rng.uniform(3.5, 6.5), region_w / 2, region_h / 2)
        cx = x0 + rng.uniform(radius, region_w - radius)
        cy = y0 + rng.uniform(radius, region_h - radius)
        mask |= shape_mask(category_id, cx, cy, radius, rng.uniform(0, 2 * math.pi), (width, height))
    return Instance(category_id, mask, iscrowd=True) if mask.any() else None


def _keeps_others_visible(mask: np.ndarray, placed: list[Instance]) -> bool:
    if not mask.any():
        return False
    covered = mask.copy()
    for instance in reversed(placed):
        full = instance.mask.sum()
        if (instance.mask & ~covered).sum() < MIN_VISIBLE * full:
            return False
        covered |= instance.mask
    return True


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # linear gradient between two colours
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = a * (1 - t) + b * t
    elif kind == 1:  # sinusoidal stripes on a base colour
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        wave = np.sin(2 * math.pi * (xs * math.cos(theta) + ys * math.sin(theta)) / period)[..., None]
        pixels = rng.uniform(40, 215, 3) + rng.uniform(15, 35) * wave * rng.choice([-1, 1], 3)
    else:  # smooth colour blobs: a coarse random grid upsampled
        grid = rng.uniform(0, 255, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_distractor(rng: np.random.Generator, canvas: Image.Image) -> None:
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    kind = rng.integers(0, 3)
    if kind == 0:
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(2)]
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    elif kind == 1:
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 30)
        start = float(rng.uniform(0, 360))
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + float(rng.uniform(60, 200)), fill=colour, width=2)
    else:
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(6, 18)
        n = int(rng.integers(6, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = r * rng.uniform(0.3, 1.0, n)
        draw.polygon([(cx + q * math.cos(t), cy + q * math.sin(t)) for q, t in zip(radii, angles)], fill=colour)


def _paint(rng: np.random.Generator, canvas: Image.Image, mask: np.ndarray) -> None:
    """Fill ``mask`` with a random colour far from the background under it, lightly shaded."""
    pixels = np.asarray(canvas, dtype=np.float32)
    under = pixels[mask].mean(axis=0)
    for _ in range(10):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - under) >= MIN_COLOUR_DISTANCE:
            break
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    shade = 1 + 0.15 * ((t - t.min()) / max(float(np.ptp(t)), 1.0) - 0.5)
    pixels[ys, xs] = np.clip(colour * shade[:, None], 0, 255)
    canvas.paste(Image.fromarray(pixels.astype(np.uint8)))


def _annotation(image_id: int, instance: Instance) -> dict:
    mask = instance.visible
    if instance.iscrowd:
        segmentation = rle_uncompressed(mask)
    else:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "image_id": image_id,
        "category_id": instance.category_id,
        "segmentation": segmentation,
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        "iscrowd": int(instance.iscrowd),
    }

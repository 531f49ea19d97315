"""Hand-made and random COCO ground truth with detections, for the evaluation-statistics tests."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

HEIGHT, WIDTH = 120, 160


def rectangle(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rectangle_rle(x: float, y: float, w: float, h: float, height: int = HEIGHT, width: int = WIDTH) -> dict:
    rle = mask_util.merge(mask_util.frPyObjects(rectangle(x, y, w, h), height, width))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def dataset(
    objects: dict[int, list[tuple]], categories=((1, "cat"), (2, "dog")), height: int = HEIGHT, width: int = WIDTH
) -> dict:
    """A COCO dataset dict: ``objects[image_id]`` lists ``(category_id, (x, y, w, h))`` or
    ``(category_id, (x, y, w, h), "crowd")``; a crowd region is stored as RLE."""
    annotations = []
    for image_id, items in objects.items():
        for category_id, box, *crowd in items:
            x, y, w, h = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [float(v) for v in box],
                    "area": float(w * h),
                    "iscrowd": int(bool(crowd)),
                    "segmentation": rectangle_rle(x, y, w, h, height, width) if crowd else rectangle(x, y, w, h),
                }
            )
    return {
        "images": [{"id": i, "height": height, "width": width, "file_name": f"{i}.jpg"} for i in objects],
        "categories": [{"id": c, "name": name} for c, name in categories],
        "annotations": annotations,
    }


def results(detections: list[tuple], iou_type: str, height: int = HEIGHT, width: int = WIDTH) -> list[dict]:
    """COCO result records of ``(image_id, category_id, score, (x, y, w, h))``: boxes, or rectangle masks as RLE."""
    records = []
    for image_id, category_id, score, box in detections:
        record = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if iou_type == "bbox":
            record["bbox"] = [float(v) for v in box]
        else:
            record["segmentation"] = rectangle_rle(*box, height, width)
        records.append(record)
    return records


def coco_index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def random_case(
    seed: int, num_images: int = 12, num_categories: int = 4, score_decimals: int = 1
) -> tuple[dict, list[tuple]]:
    """Random objects (some crowd, some images empty) and detections of mixed quality: jittered, wrong
    class, duplicated, on background; scores rounded to ``score_decimals`` so that some tie."""
    rng = np.random.default_rng(seed)
    objects, detections = {}, []
    for image_id in range(1, num_images + 1):
        objects[image_id] = []
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(4, 100), rng.uniform(4, 80)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            category_id = int(rng.integers(1, num_categories + 1))
            objects[image_id].append((category_id, (x, y, w, h), "crowd") if rng.random() < 0.1 else (category_id, (x, y, w, h)))
            for _ in range(rng.integers(0, 4)):
                jitter = rng.normal(0, rng.choice([0.02, 0.1, 0.3]), 4) * [w, h, w, h]
                box = (x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0))
                detected = category_id if rng.random() < 0.8 else int(rng.integers(1, num_categories + 1))
                detections.append((image_id, detected, round(rng.random(), score_decimals), box))
        for _ in range(rng.integers(0, 3)):
            w, h = rng.uniform(4, 60), rng.uniform(4, 60)
            box = (rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h)
            detections.append((image_id, int(rng.integers(1, num_categories + 1)), round(rng.random(), score_decimals), box))
    categories = [(c, f"class{c}") for c in range(1, num_categories + 1)]
    return dataset(objects, categories), detections

"""A tiny COCO root with one of each kind of broken input, for the prepare and data tests.

Splits: ``train`` (every kind of broken image and annotation, see EXPECTED_TRAIN), ``val`` and
``test`` (annotations that cleaning drops or changes but the official ground truth keeps).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

WIDTH, HEIGHT = 64, 48
CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 3, "name": "dog", "supercategory": "animal"}]


def square(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def ann(ann_id: int, image_id: int, bbox: list[float], segmentation=None, category_id: int = 1, iscrowd: int = 0):
    if segmentation is None:
        x, y, w, h = bbox
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "segmentation": segmentation, "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}


def picture(mode: str = "RGB", size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """A smooth colour image: coloured squares drawn by the annotations sit on it."""
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([xs * 255 // max(size[0] - 1, 1), ys * 255 // max(size[1] - 1, 1), 128 + 0 * xs], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def crowd_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[30:44, 2:20] = 1
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def build(root: Path) -> Path:
    """Write ``root/annotations/instances_{train,val,test}.json`` and the images; see EXPECTED_TRAIN."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    train = root / "train"
    picture().save(train / "rgb.jpg")
    picture("L").save(train / "gray.jpg")
    picture("RGBA").save(train / "rgba.png")
    picture("CMYK").save(train / "cmyk.jpg")
    (train / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 20)
    picture().save(train / "truncated_full.jpg", quality=95)
    (train / "truncated.jpg").write_bytes((train / "truncated_full.jpg").read_bytes()[:400])
    (train / "truncated_full.jpg").unlink()
    picture(size=(32, 32)).save(train / "wrongsize.jpg")
    picture().save(train / "empty.jpg")
    picture().save(train / "crowdonly.jpg")
    picture().save(train / "dog.jpg")
    Image.fromarray(np.asarray(picture("L"), dtype=np.uint16) * 257).save(train / "deep.png")  # 16-bit gray
    picture().save(train / "bitmap.bmp")
    names = ["rgb.jpg", "gray.jpg", "rgba.png", "cmyk.jpg", "corrupt.jpg", "truncated.jpg", "missing.jpg",
             "wrongsize.jpg", "empty.jpg", "crowdonly.jpg", "dog.jpg", "deep.png", "bitmap.bmp"]
    images = [{"id": i + 1, "file_name": name, "width": WIDTH, "height": HEIGHT} for i, name in enumerate(names)]
    annotations = [
        ann(1, 1, [4, 4, 16, 16]),
        ann(2, 1, [24, 4, 30, 12], segmentation=[square(24, 4, 10), square(44, 6, 10)]),  # multi-part polygon
        ann(3, 1, [10, 10, 0, 8]),  # zero width
        ann(4, 1, [10, 10, 8, 0.5]),  # sub-pixel height
        ann(5, 1, [100, 10, 8, 8]),  # outside the image
        ann(6, 1, [50, 30, 30, 30]),  # partly outside: clipped to [50, 30, 14, 18]
        ann(7, 1, [2, 30, 18, 14], segmentation=uncompressed_rle(crowd_mask()), iscrowd=1),
        ann(8, 1, [2, 30, 18, 14], segmentation=compressed_rle(crowd_mask()), iscrowd=1),
        ann(9, 1, [30, 20, 10, 10], segmentation=[[30, 20, 31, 21], square(30, 20, 10)]),  # one part too short
        ann(10, 1, [30, 20, 10, 10], segmentation=[[30, 20, 31, 21]]),  # no usable polygon
        ann(11, 999, [4, 4, 8, 8]),  # unknown image
        ann(12, 1, [4, 4, 8, 8], category_id=77),  # unknown category
        ann(13, 2, [8, 8, 20, 20]),
        ann(14, 3, [8, 8, 20, 20]),
        ann(15, 4, [8, 8, 20, 20]),
        ann(16, 5, [8, 8, 20, 20]),
        ann(17, 6, [8, 8, 20, 20]),
        ann(18, 7, [8, 8, 20, 20]),
        ann(19, 8, [8, 8, 20, 20]),
        ann(20, 10, [2, 30, 18, 14], segmentation=uncompressed_rle(crowd_mask()), iscrowd=1),
        ann(21, 11, [30, 10, 20, 20], category_id=3),
        ann(22, 12, [8, 8, 20, 20]),
        ann(23, 13, [8, 8, 20, 20]),
    ]
    _write(root / "annotations" / "instances_train.json", images, annotations)

    val = root / "val"
    picture().save(val / "a.jpg")
    picture("L").save(val / "b.jpg")
    val_images = [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
                  {"id": 2, "file_name": "b.jpg", "width": WIDTH, "height": HEIGHT},
                  {"id": 3, "file_name": "gone.jpg", "width": WIDTH, "height": HEIGHT}]
    val_annotations = [ann(1, 1, [4, 4, 16, 16]), ann(2, 1, [30, 10, 20, 20], category_id=3),
                       ann(3, 3, [4, 4, 16, 16]),
                       ann(4, 1, [40, 36, 8, 0.5])]  # sub-pixel height: dropped from val.json, kept in gt_val.json
    _write(root / "annotations" / "instances_val.json", val_images, val_annotations)

    test = root / "test"
    test.mkdir()
    picture().save(test / "c.jpg")
    picture().save(test / "d.jpg")
    test_images = [{"id": 7, "file_name": "c.jpg", "width": WIDTH, "height": HEIGHT},
                   {"id": 8, "file_name": "d.jpg", "width": WIDTH, "height": HEIGHT}]
    test_annotations = [
        ann(1, 7, [4, 4, 16, 16]),
        ann(2, 7, [20, 20, 0.5, 6]),  # sub-pixel width
        ann(3, 7, [8, 8, 10, 10], segmentation="garbage"),  # pycocotools cannot decode it
        ann(4, 8, [50, 30, 30, 30]),  # partly outside: clipped in test.json only
        ann(5, 8, [30, 10, 20, 20], category_id=3),
    ]
    _write(root / "annotations" / "instances_test.json", test_images, test_annotations)
    return root


EXPECTED_TRAIN = {
    "kept_images": {1, 2, 3, 4, 11, 12, 13},
    "dropped_images": {5: "unreadable_image", 6: "unreadable_image", 7: "missing_file", 8: "size_mismatch"},
    "skipped_empty_images": 2,  # 9 (no annotation) and 10 (crowd only)
    "dropped_annotations": {3: "degenerate_box", 4: "degenerate_box", 5: "box_outside_image",
                            10: "invalid_segmentation", 11: "unknown_image", 12: "malformed"},
    "image_modes": {"RGB": 3, "L": 1, "RGBA": 1, "CMYK": 1, "I;16": 1},
    "crowd_ids": {7, 8},
}


def _write(path: Path, images: list, annotations: list) -> None:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))

"""The embedded synthetic dataset: deterministic, COCO-valid, with the variety training needs."""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.config import SyntheticParams
from pipeline.prepare.summary import size_bucket
from pipeline.data.coco import load_coco
from pipeline.synthetic.shapes import (
    CATEGORIES,
    MIN_VISIBLE,
    generate,
    generate_split,
    render_image,
    rle_uncompressed,
    shape_mask,
)

# sha256 of the pixels of train/000001.png and val/000001.png at the default size and seed 0, as
# generated before the test split existed (commit 704311a).
TRAIN_DIGEST, VAL_DIGEST = "f17faf577c851ba4", "b9e6f86ede3edb3a"
SMALL = SyntheticParams(
    train_images=10, val_images=4, test_images=3, width=96, height=80, min_objects=2, max_objects=5, crowd_prob=0.5
)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_size(tmp_path_factory) -> Path:
    """The default image size, enough images to see every size bucket and crowd regions."""
    root = tmp_path_factory.mktemp("synthetic")
    params = SyntheticParams(train_images=60, val_images=2, test_images=2)
    generate(root, params, seed=0)
    return root


def test_generation_is_byte_identical_across_runs(tmp_path):
    generate(tmp_path / "a", SMALL, seed=3)
    generate(tmp_path / "b", SMALL, seed=3)
    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(first) == 3 + SMALL.train_images + SMALL.val_images + SMALL.test_images
    assert first == second


def test_worker_processes_write_the_same_files_as_one_process(tmp_path):
    generate(tmp_path / "serial", SMALL, seed=3, workers=1)
    generate(tmp_path / "parallel", SMALL, seed=3, workers=2)
    assert files(tmp_path / "serial") == files(tmp_path / "parallel")


def test_image_ids_are_unique_across_the_three_splits(tmp_path):
    generate(tmp_path, SMALL, seed=3)
    ids = {split: [image["id"] for image in json.loads((tmp_path / "annotations" / f"instances_{split}.json")
                                                        .read_text())["images"]]
           for split in ("train", "val", "test")}
    assert [len(ids[split]) for split in ids] == [SMALL.train_images, SMALL.val_images, SMALL.test_images]
    assert len(set(ids["train"]) | set(ids["val"]) | set(ids["test"])) == sum(len(v) for v in ids.values())


def test_train_and_val_images_keep_their_pixels(tmp_path):
    """The first images of the default-size train and val splits as they were before the test split
    existed: the README's numbers were measured on them."""
    generate(tmp_path, SyntheticParams(train_images=1, val_images=1, test_images=1), seed=0)
    digests = {split: hashlib.sha256(np.asarray(Image.open(tmp_path / split / "000001.png")).tobytes()).hexdigest()[:16]
               for split in ("train", "val")}
    assert digests == {"train": TRAIN_DIGEST, "val": VAL_DIGEST}


def test_one_split_with_another_seed_is_another_sample_with_the_same_ids(tmp_path):
    first = json.loads(generate_split(tmp_path / "a", "test", 3, SMALL, seed=3).read_text())
    second = json.loads(generate_split(tmp_path / "b", "test", 3, SMALL, seed=11).read_text())
    assert [i["id"] for i in first["images"]] == [i["id"] for i in second["images"]]
    assert (tmp_path / "a" / "test" / "000001.png").read_bytes() != (tmp_path / "b" / "test" / "000001.png").read_bytes()
    generate(tmp_path / "c", SMALL, seed=3)
    assert files(tmp_path / "a")["test/000002.png"] == files(tmp_path / "c")["test/000002.png"]


def test_another_seed_gives_other_images(tmp_path):
    generate(tmp_path / "a", SMALL, seed=3)
    generate(tmp_path / "b", SMALL, seed=4)
    assert files(tmp_path / "a")["train/000001.png"] != files(tmp_path / "b")["train/000001.png"]


def test_an_image_does_not_depend_on_the_split_size(tmp_path):
    generate(tmp_path / "a", SMALL, seed=3)
    generate(tmp_path / "b", SyntheticParams(**{**SMALL.__dict__, "train_images": 3}), seed=3)
    assert files(tmp_path / "a")["train/000002.png"] == files(tmp_path / "b")["train/000002.png"]


def test_annotations_are_consistent_coco(default_size):
    coco = load_coco(default_size / "annotations" / "instances_train.json")
    assert len(coco.imgs) == 60
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert ann["area"] == mask.sum() > 0
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # Non-crowd masks are compressed RLE, crowds uncompressed as COCO stores them.
        assert isinstance(ann["segmentation"]["counts"], list if ann["iscrowd"] else str)


def test_categories_sizes_crowd_and_object_counts_are_present(default_size):
    dataset = json.loads((default_size / "annotations" / "instances_train.json").read_text())
    names = [c["name"] for c in dataset["categories"]]
    assert len(set(names)) >= 5
    anns = dataset["annotations"]
    assert {a["category_id"] for a in anns if not a["iscrowd"]} == {c["id"] for c in CATEGORIES}
    assert {size_bucket(a["area"]) for a in anns if not a["iscrowd"]} == {"small", "medium", "large"}
    assert any(a["iscrowd"] for a in anns)
    per_image = np.bincount([a["image_id"] for a in anns if not a["iscrowd"]], minlength=61)[1:]
    assert per_image.min() >= 1 and per_image.max() <= SyntheticParams().max_objects
    assert per_image.mean() >= 2.5  # several instances per image


def test_later_objects_occlude_earlier_ones_but_none_is_almost_hidden():
    params = SyntheticParams()
    occluded = 0
    for index in range(30):
        rng = np.random.default_rng([0, 0, index])
        pixels, instances = render_image(rng, params.width, params.height, 4, 6, 0.5)
        assert pixels.shape == (params.height, params.width, 3) and pixels.dtype == np.uint8
        union = np.zeros(pixels.shape[:2], dtype=int)
        for i, instance in enumerate(instances):
            later = np.zeros_like(instance.mask)
            for other in instances[i + 1 :]:
                later |= other.mask
            assert np.array_equal(instance.visible, instance.mask & ~later)
            assert instance.visible.sum() >= MIN_VISIBLE * instance.mask.sum()
            occluded += instance.visible.sum() < instance.mask.sum()
            union += instance.visible
        assert union.max() == 1  # no pixel belongs to two instances
    assert occluded > 0  # overlaps do happen


def test_shapes_have_their_geometric_area():
    size = (200, 200)
    radius = 60
    circle = shape_mask(1, 100, 100, radius, 0.0, size).sum()
    square = shape_mask(2, 100, 100, radius, 0.3, size).sum()
    ring = shape_mask(5, 100, 100, radius, 0.0, size).sum()
    assert circle == pytest.approx(math.pi * radius**2, rel=0.03)
    assert square == pytest.approx(2 * radius**2, rel=0.03)
    assert ring == pytest.approx(math.pi * radius**2 * (1 - 0.55**2), rel=0.05)


@pytest.mark.parametrize("first_pixel", [0, 1])
def test_uncompressed_rle_round_trips_through_pycocotools(first_pixel):
    mask = np.random.default_rng(first_pixel).random((7, 9)) < 0.4
    mask[0, 0] = bool(first_pixel)
    rle = rle_uncompressed(mask)
    assert sum(rle["counts"]) == mask.size
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 9))
    assert np.array_equal(decoded, mask.astype(np.uint8))

"""Prepare and load the real COCO excerpt in ../shared/data/coco_tiny (skipped when it is absent)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from pipeline.config import InputParams
from pipeline.data.dataset import InstanceDataset
from pipeline.data.layout import annotations_path, ground_truth_path, read_label_map
from pipeline.data.transforms import build_transforms
from pipeline.data.coco import load_coco
from pipeline.prepare.roles import prepare
from tests.conftest import COCO_TINY

# COCO's convention, as the GPU preset: val carved from train2017, test = val2017.
SPLITS = {"train": "train2017", "val": "train2017", "test": "val2017"}
VAL_IMAGES = 16
FILTER = ["person", "dog"]


def prepared(root: Path, out: Path, **options) -> tuple[Path, dict]:
    out.mkdir(parents=True)
    kwargs = dict(categories=None, max_images=None, keep_empty_train=False, strict=True) | options
    return out, prepare(root, SPLITS, out, val_images=VAL_IMAGES, seed=0, **kwargs)


def read(out: Path, role: str) -> dict:
    return json.loads(annotations_path(out, role).read_text())


@pytest.fixture(scope="module")
def coco_tiny() -> Path:
    """conftest's fixture, once per module."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO excerpt not found at {COCO_TINY} (it ships only beside the repo in ../shared)")
    return COCO_TINY


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, coco_tiny):
    return prepared(coco_tiny, tmp_path_factory.mktemp("filtered") / "prepared", categories=FILTER)


@pytest.fixture(scope="module")
def everything(tmp_path_factory, coco_tiny):
    return prepared(coco_tiny, tmp_path_factory.mktemp("all") / "prepared")


def original(coco_tiny: Path, split: str):
    return load_coco(coco_tiny / "annotations" / f"instances_{split}.json")


@pytest.mark.parametrize("split, roles", [("train2017", ("train", "val")), ("val2017", ("test",))])
def test_filtered_counts_equal_pycocotools_counts(coco_tiny, filtered, split, roles):
    out, summary = filtered
    coco = original(coco_tiny, split)
    for role in roles:
        assert list(summary["roles"][role]["per_category"]) == FILTER  # person (id 1) before dog (id 18)
    for name in FILTER:
        cat_ids = coco.getCatIds(catNms=[name])
        counts = [summary["roles"][role]["per_category"][name] for role in roles]
        assert sum(c["instances"] for c in counts) == len(coco.getAnnIds(catIds=cat_ids, iscrowd=False))
        assert sum(c["crowd"] for c in counts) == len(coco.getAnnIds(catIds=cat_ids, iscrowd=True))
    assert read_label_map(out) == [{"label": 0, "category_id": 1, "name": "person"},
                                   {"label": 1, "category_id": 18, "name": "dog"}]


def test_val_and_test_keep_every_image_and_train_only_those_with_instances(coco_tiny, filtered):
    out, summary = filtered
    ids = {role: {image["id"] for image in read(out, role)["images"]} for role in ("train", "val", "test")}
    assert ids["test"] == set(original(coco_tiny, "val2017").imgs)
    assert len(ids["val"]) == VAL_IMAGES
    train_coco = original(coco_tiny, "train2017")
    with_instances = {a["image_id"] for a in train_coco.loadAnns(train_coco.getAnnIds(catIds=[1, 18], iscrowd=False))}
    assert ids["train"] == with_instances - ids["val"]
    assert summary["roles"]["train"]["skipped_empty_images"] == len(train_coco.imgs) - len(ids["val"] | with_instances)


@pytest.mark.parametrize("options", [{}, {"categories": FILTER}], ids=["all", "filtered"])
def test_roles_share_no_image_and_test_ground_truth_is_the_official_val2017(coco_tiny, tmp_path, options):
    out, summary = prepared(coco_tiny, tmp_path / "prepared", **options)
    ids = {role: {image["id"] for image in read(out, role)["images"]} for role in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert summary["val_carved"] == {"from": "train2017", "images": VAL_IMAGES, "seed": 0}

    raw = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    kept_categories = {entry["category_id"] for entry in read_label_map(out)}
    expected = [a for a in raw["annotations"] if a["image_id"] in ids["test"] and a["category_id"] in kept_categories]
    official = json.loads(ground_truth_path(out, "test").read_text())
    assert official["annotations"] == expected  # every record, untouched, in file order
    assert {image["id"] for image in official["images"]} == ids["test"]
    assert summary["roles"]["test"]["ground_truth"]["left_out"] == []
    val_official = json.loads(ground_truth_path(out, "val").read_text())
    assert {a["image_id"] for a in val_official["annotations"]} <= ids["val"]


@pytest.mark.parametrize("split, roles", [("train2017", ("train", "val")), ("val2017", ("test",))])
def test_crowd_annotations_stay_crowd_and_unchanged(coco_tiny, everything, split, roles):
    out, summary = everything
    coco = original(coco_tiny, split)
    crowd = {a["id"]: a for a in coco.dataset["annotations"] if a["iscrowd"]}
    assert crowd  # the excerpt has crowd RLE in both splits
    cleaned = {a["id"]: a for role in roles for a in read(out, role)["annotations"]}
    for ann_id, ann in crowd.items():
        assert cleaned[ann_id]["iscrowd"] == 1
        assert cleaned[ann_id]["segmentation"] == ann["segmentation"]
    assert sum(summary["roles"][role]["crowd"] for role in roles) == len(crowd)
    assert all(summary["roles"][role]["dropped_annotations"] == [] for role in roles)


def test_masks_read_back_equal_pycocotools_ann_to_mask(coco_tiny, everything):
    out, _ = everything
    coco = original(coco_tiny, "val2017")
    dataset = InstanceDataset(out, "test", build_transforms(InputParams(size=160), train=False))
    checked = 0
    for image_id in dataset.image_ids[:40]:
        image, target = dataset.load(image_id)
        anns = dataset.coco.imgToAnns[image_id]
        info = coco.imgs[image_id]
        assert image.shape[1:] == target["masks"].shape[1:] == (info["height"], info["width"])
        assert target["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        for ann, mask in zip(anns, target["masks"]):
            assert np.array_equal(mask.numpy(), coco.annToMask(coco.anns[ann["id"]]))
            checked += 1
    assert checked > 100


@pytest.fixture
def one_thread():
    """Small tensor ops on 2 shared cores run faster without intra-op threads (as in loader workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_after_random_train_transforms_boxes_match_masks_within_a_pixel(everything, one_thread):
    out, _ = everything
    size = 160  # not above the COCO images' size, so a pixel of rasterisation error stays under 1 px
    dataset = InstanceDataset(out, "train", build_transforms(InputParams(size=size), train=True))
    torch.manual_seed(0)
    instances = 0
    for index in range(len(dataset)):
        _, target = dataset[index]
        if len(target["masks"]):
            extents = masks_to_boxes(target["masks"]).float()
            extents[:, 2:] += 1
            assert torch.allclose(target["boxes"] * size, extents, atol=1.0)
            instances += len(target["masks"])
    assert instances > 2 * len(dataset)

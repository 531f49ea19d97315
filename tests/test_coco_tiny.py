"""Prepare and load the real COCO excerpt in ../shared/data/coco_tiny (skipped when it is absent)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from pipeline.coco import prepare
from pipeline.config import InputParams
from pipeline.data import InstanceDataset, build_transforms, read_label_map
from pipeline.evaluation import load_coco
from tests.conftest import COCO_TINY

SPLITS = {"train": "train2017", "val": "val2017"}
FILTER = ["person", "dog"]


def prepared(root: Path, out: Path, **options) -> tuple[Path, dict]:
    out.mkdir(parents=True)
    kwargs = dict(categories=None, max_images=None, keep_empty_train=False, strict=True) | options
    return out, prepare(root, SPLITS, out, **kwargs)


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


def original(coco_tiny: Path, role: str):
    return load_coco(coco_tiny / "annotations" / f"instances_{SPLITS[role]}.json")


@pytest.mark.parametrize("role", ["train", "val"])
def test_filtered_counts_equal_pycocotools_counts(coco_tiny, filtered, role):
    out, summary = filtered
    coco = original(coco_tiny, role)
    counts = summary["roles"][role]["per_category"]
    assert list(counts) == FILTER  # person (id 1) before dog (id 18)
    for name in FILTER:
        cat_ids = coco.getCatIds(catNms=[name])
        assert counts[name]["instances"] == len(coco.getAnnIds(catIds=cat_ids, iscrowd=False))
        assert counts[name]["crowd"] == len(coco.getAnnIds(catIds=cat_ids)) - counts[name]["instances"]
    assert read_label_map(out) == [{"label": 0, "category_id": 1, "name": "person"},
                                   {"label": 1, "category_id": 18, "name": "dog"}]


def test_val_keeps_every_image_and_train_only_those_with_instances(coco_tiny, filtered):
    out, summary = filtered
    val = json.loads((out / "val.json").read_text())
    assert len(val["images"]) == len(original(coco_tiny, "val").imgs)
    train_coco = original(coco_tiny, "train")
    with_instances = {a["image_id"] for a in train_coco.loadAnns(train_coco.getAnnIds(catIds=[1, 18], iscrowd=False))}
    train = json.loads((out / "train.json").read_text())
    assert {image["id"] for image in train["images"]} == with_instances
    assert summary["roles"]["train"]["skipped_empty_images"] == len(train_coco.imgs) - len(with_instances)


@pytest.mark.parametrize("role", ["train", "val"])
def test_crowd_annotations_stay_crowd_and_unchanged(coco_tiny, everything, role):
    out, summary = everything
    coco = original(coco_tiny, role)
    crowd = {a["id"]: a for a in coco.dataset["annotations"] if a["iscrowd"]}
    assert crowd  # the excerpt has crowd RLE in both splits
    cleaned = {a["id"]: a for a in json.loads((out / f"{role}.json").read_text())["annotations"]}
    for ann_id, ann in crowd.items():
        assert cleaned[ann_id]["iscrowd"] == 1
        assert cleaned[ann_id]["segmentation"] == ann["segmentation"]
    assert summary["roles"][role]["crowd"] == len(crowd)
    assert summary["roles"][role]["dropped_annotations"] == []


def test_masks_read_back_equal_pycocotools_ann_to_mask(coco_tiny, everything):
    out, _ = everything
    coco = original(coco_tiny, "val")
    dataset = InstanceDataset(out, "val", build_transforms(InputParams(size=160), train=False))
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

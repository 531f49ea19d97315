"""The prepare step on crafted broken COCO input, and the stage end to end."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from pipeline.prepare.annotations import clean_annotation, select_categories
from pipeline.data.layout import annotations_path, ground_truth_path, image_dir
from pipeline.data.dataset import load_coco
from pipeline.prepare.summary import size_bucket
from pipeline.utils.errors import PipelineError
from pipeline.evaluation.coco import coco_evaluate
from pipeline.prepare.roles import carved_ids, prepare
from tests import crafted_coco
from tests.conftest import PYTHON, new_store, stage_env

SPLITS = {"train": "train", "val": "val", "test": "test"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return crafted_coco.build(tmp_path / "coco")


def run_prepare(root: Path, out: Path, **options):
    """Prepare the crafted root, whose roles share images (the same picture saved many times, val ids 1 and 2
    also in train): the leakage check is tested on its own fixtures in test_overlap.py."""
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(categories=None, max_images=None, keep_empty_train=False, strict=False, allow_overlap=True) | options
    return prepare(root, SPLITS, out, **kwargs)


def test_every_broken_input_is_counted_with_its_reason(root, tmp_path):
    summary = run_prepare(root, tmp_path / "out")
    train = summary["roles"]["train"]
    expected = crafted_coco.EXPECTED_TRAIN

    assert {d["image_id"]: d["reason"] for d in train["dropped_images"]} == expected["dropped_images"]
    assert {d["id"]: d["reason"] for d in train["dropped_annotations"]} == expected["dropped_annotations"]
    assert train["skipped_empty_images"] == expected["skipped_empty_images"]
    assert train["image_modes"] == expected["image_modes"]
    assert train["clipped_boxes"] == 1 and train["repaired_segmentations"] == 1
    assert train["dropped_by_reason"]["images"] == {"unreadable_image": 2, "missing_file": 1, "size_mismatch": 1}
    missing = next(d for d in train["dropped_images"] if d["reason"] == "missing_file")
    assert missing["file_name"] == "missing.jpg" and "missing.jpg" in missing["detail"]

    cleaned = json.loads((tmp_path / "out" / "train.json").read_text())
    assert {image["id"] for image in cleaned["images"]} == expected["kept_images"]
    assert train["images"] == len(expected["kept_images"])
    assert train["crowd"] == 2 and train["instances"] == 10  # ids 1, 2, 6, 9, 13, 14, 15, 21 (dog), 22, 23
    anns = {a["id"]: a for a in cleaned["annotations"]}
    assert {i for i, a in anns.items() if a["iscrowd"]} == expected["crowd_ids"]
    assert anns[6]["bbox"] == [50, 30, 14, 18]
    assert anns[9]["segmentation"] == [crafted_coco.square(30, 20, 10)]
    assert anns[2]["segmentation"] == [crafted_coco.square(24, 4, 10), crafted_coco.square(44, 6, 10)]
    assert isinstance(anns[7]["segmentation"]["counts"], list) and isinstance(anns[8]["segmentation"]["counts"], str)


def test_instance_counts_add_up(root, tmp_path):
    summary = run_prepare(root, tmp_path / "out")
    for role in ("train", "val", "test"):
        counts = summary["roles"][role]
        cleaned = json.loads((tmp_path / "out" / f"{role}.json").read_text())
        per_category = counts["per_category"]
        assert sum(c["instances"] for c in per_category.values()) == counts["instances"]
        assert sum(c["crowd"] for c in per_category.values()) == counts["crowd"]
        assert counts["instances"] + counts["crowd"] == len(cleaned["annotations"])
        assert sum(counts["sizes"].values()) == counts["instances"]
    assert summary["roles"]["train"]["per_category"]["dog"] == {"instances": 1, "crowd": 0}


def test_val_keeps_empty_images_and_train_only_on_request(root, tmp_path):
    summary = run_prepare(root, tmp_path / "a")
    val = json.loads((tmp_path / "a" / "val.json").read_text())
    assert {image["id"] for image in val["images"]} == {1, 2}  # 2 has no annotation; 3 is missing
    assert summary["roles"]["val"]["empty_images"] == 1
    assert [d["reason"] for d in summary["roles"]["val"]["dropped_images"]] == ["missing_file"]

    summary = run_prepare(root, tmp_path / "b", keep_empty_train=True)
    train = json.loads((tmp_path / "b" / "train.json").read_text())
    assert {9, 10} <= {image["id"] for image in train["images"]}
    assert summary["roles"]["train"]["skipped_empty_images"] == 0


def test_strict_fails_on_the_first_broken_annotation(root, tmp_path):
    with pytest.raises(PipelineError, match=r"instances_train\.json: annotation 3 .*degenerate_box"):
        run_prepare(root, tmp_path / "out", strict=True)


def test_strict_fails_naming_the_broken_image_file(root, tmp_path):
    path = root / "annotations" / "instances_train.json"
    dataset = json.loads(path.read_text())
    broken = set(crafted_coco.EXPECTED_TRAIN["dropped_annotations"])
    dataset["annotations"] = [a for a in dataset["annotations"] if a["id"] not in broken]
    path.write_text(json.dumps(dataset))
    with pytest.raises(PipelineError, match=r"corrupt\.jpg: unreadable_image"):
        run_prepare(root, tmp_path / "out", strict=True)


def test_category_filter_remaps_labels_and_rejects_unknown_names(root, tmp_path):
    summary = run_prepare(root, tmp_path / "out", categories=["dog"])
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels == [{"label": 0, "category_id": 3, "name": "dog"}]
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [image["id"] for image in train["images"]] == [11]
    assert {a["category_id"] for a in train["annotations"]} == {3}
    assert summary["roles"]["train"]["other_category_annotations"] > 0

    with pytest.raises(PipelineError, match="'horse'"):
        select_categories(crafted_coco.CATEGORIES, ["dog", "horse"])


def test_max_images_takes_the_first_valid_images_by_id(root, tmp_path):
    run_prepare(root, tmp_path / "out", max_images=3)
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [image["id"] for image in train["images"]] == [1, 2, 3]
    assert {a["image_id"] for a in train["annotations"]} <= {1, 2, 3}


def test_prepared_files_load_in_pycocotools(root, tmp_path):
    run_prepare(root, tmp_path / "out")
    image_dirs = json.loads((tmp_path / "out" / "image_dirs.json").read_text())
    assert Path(image_dirs["train"]) == (root / "train").resolve()
    gt = load_coco(tmp_path / "out" / "val.json")
    assert sorted(gt.getCatIds()) == [1, 3]
    assert len(gt.getAnnIds()) == 2


def perfect_detections(dataset: dict) -> list[dict]:
    """A score-1 box result exactly on every non-crowd annotation of a COCO json."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in dataset["annotations"] if not a["iscrowd"]]


def test_scoring_ground_truth_keeps_what_cleaning_drops(root, tmp_path):
    run_prepare(root, tmp_path / "out")
    cleaned = json.loads(annotations_path(tmp_path / "out", "val").read_text())
    official = json.loads(ground_truth_path(tmp_path / "out", "val").read_text())
    assert 4 not in {a["id"] for a in cleaned["annotations"]}  # the sub-pixel box
    assert {a["id"] for a in official["annotations"]} == {1, 2, 4}  # 3 is on the missing image
    assert {image["id"] for image in official["images"]} == {image["id"] for image in cleaned["images"]} == {1, 2}

    detections = perfect_detections(cleaned)
    against_cleaned = coco_evaluate(annotations_path(tmp_path / "out", "val"), detections, "bbox")
    against_official = coco_evaluate(ground_truth_path(tmp_path / "out", "val"), detections, "bbox")
    assert against_cleaned.detail["AR100"] == pytest.approx(1.0)
    # Category 1 has two ground truths in the official file and only one is detected: recall 1/2.
    assert against_official.detail["AR100"] == pytest.approx((0.5 + 1.0) / 2)
    assert against_official.detail["AP"] < against_cleaned.detail["AP"]


def test_ground_truth_records_are_untouched_and_unloadable_ones_counted(root, tmp_path):
    summary = run_prepare(root, tmp_path / "out")
    raw = {a["id"]: a for a in json.loads((root / "annotations" / "instances_test.json").read_text())["annotations"]}
    official = {a["id"]: a for a in json.loads(ground_truth_path(tmp_path / "out", "test").read_text())["annotations"]}
    cleaned = {a["id"]: a for a in json.loads(annotations_path(tmp_path / "out", "test").read_text())["annotations"]}
    assert set(official) == {1, 2, 4, 5} and set(cleaned) == {1, 4, 5}
    assert all(official[i] == raw[i] for i in official)
    assert official[4]["bbox"] == [50, 30, 30, 30] and cleaned[4]["bbox"] == [50, 30, 14, 18]
    test = summary["roles"]["test"]
    assert [(d["id"], d["image_id"]) for d in test["ground_truth"]["left_out"]] == [(3, 7)]
    assert test["ground_truth"]["instances"] == 4 and test["instances"] == 3
    assert "ground_truth" not in summary["roles"]["train"]
    load_coco(ground_truth_path(tmp_path / "out", "test"))  # pycocotools loads it


def test_malformed_records_crash_neither_cleaning_nor_ground_truth(root, tmp_path):
    path = root / "annotations" / "instances_test.json"
    dataset = json.loads(path.read_text())
    dataset["images"] += ["junk", {"id": [9], "file_name": "c.jpg", "width": 64, "height": 48}]
    dataset["annotations"] += [5, {"id": 99, "image_id": [7], "category_id": 1, "bbox": [1, 1, 5, 5]},
                               {"id": 98, "image_id": 7, "category_id": {"x": 1}, "bbox": [1, 1, 5, 5]}]
    path.write_text(json.dumps(dataset))
    summary = run_prepare(root, tmp_path / "out")
    test = summary["roles"]["test"]
    assert test["dropped_by_reason"] == {"images": {"malformed": 2},
                                         "annotations": {"degenerate_box": 1, "invalid_segmentation": 1, "malformed": 3}}
    official = json.loads(ground_truth_path(tmp_path / "out", "test").read_text())
    assert {a["id"] for a in official["annotations"]} == {1, 2, 4, 5}


def test_ground_truth_follows_the_category_filter(root, tmp_path):
    run_prepare(root, tmp_path / "out", categories=["dog"])
    official = json.loads(ground_truth_path(tmp_path / "out", "test").read_text())
    assert [a["id"] for a in official["annotations"]] == [5]
    assert [c["id"] for c in official["categories"]] == [3]


def test_val_carved_from_train_shares_no_image_and_ignores_file_order(root, tmp_path):
    splits = {"train": "train", "val": "train", "test": "test"}
    options = dict(categories=None, max_images=None, keep_empty_train=True, strict=False, allow_overlap=True)
    (tmp_path / "a").mkdir()
    summary = prepare(root, splits, tmp_path / "a", val_images=4, seed=3, **options)
    roles = {role: {i["id"] for i in json.loads(annotations_path(tmp_path / "a", role).read_text())["images"]}
             for role in ("train", "val")}
    carved = carved_ids(set(range(1, 14)), 4, seed=3)
    assert roles["val"] <= carved and not roles["train"] & carved
    assert len(roles["val"]) + len(summary["roles"]["val"]["dropped_images"]) == 4
    assert summary["val_carved"] == {"from": "train", "images": 4, "seed": 3}
    official = json.loads(ground_truth_path(tmp_path / "a", "val").read_text())
    assert {i["id"] for i in official["images"]} == roles["val"]
    assert {a["image_id"] for a in official["annotations"]} <= roles["val"]
    assert image_dir(tmp_path / "a", "val") == image_dir(tmp_path / "a", "train")

    path = root / "annotations" / "instances_train.json"
    dataset = json.loads(path.read_text())
    dataset["images"].reverse()
    dataset["annotations"].reverse()
    path.write_text(json.dumps(dataset))
    (tmp_path / "b").mkdir()
    prepare(root, splits, tmp_path / "b", val_images=4, seed=3, **options)
    val_b = {i["id"] for i in json.loads(annotations_path(tmp_path / "b", "val").read_text())["images"]}
    assert val_b == roles["val"]
    assert carved_ids(set(range(1, 14)), 4, seed=4) != carved


def test_carving_every_train_image_is_an_error(root, tmp_path):
    with pytest.raises(PipelineError, match="val_images"):
        prepare(root, {"train": "train", "val": "train", "test": "test"}, tmp_path, categories=None,
                max_images=None, keep_empty_train=False, strict=False, val_images=13)


def test_image_dirs_inside_the_repository_are_relative_and_move_with_it(root, tmp_path):
    repository = tmp_path / "repo"
    (repository / "data").mkdir(parents=True)
    coco = root.rename(repository / "data" / "coco")
    run_prepare(coco, repository / "data" / "prepared", repository=repository)
    recorded = json.loads((repository / "data" / "prepared" / "image_dirs.json").read_text())
    assert recorded == {"train": "../coco/train", "val": "../coco/val", "test": "../coco/test"}

    moved = repository.rename(tmp_path / "elsewhere")
    assert image_dir(moved / "data" / "prepared", "test").resolve() == (moved / "data" / "coco" / "test").resolve()
    assert (image_dir(moved / "data" / "prepared", "test") / "c.jpg").is_file()


def test_clean_annotation_clips_and_computes_missing_area():
    image = {"id": 1, "width": 10, "height": 10}
    raw = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-2, 5, 6, 20],
           "segmentation": [[-2, 5, 4, 5, 4, 25, -2, 25]]}
    cleaned, drop, fixes = clean_annotation(raw, image, {1}, set())
    assert drop is None and fixes == ("clipped",)
    assert cleaned["bbox"] == [0, 5, 4, 5]
    rle = mask_utils.merge(mask_utils.frPyObjects(raw["segmentation"], 10, 10))
    assert cleaned["area"] == float(mask_utils.area(rle)) > 0
    assert cleaned["iscrowd"] == 0


def test_clean_annotation_rejects_rle_of_the_wrong_size():
    image = {"id": 1, "width": 10, "height": 10}
    rle = crafted_coco.compressed_rle(np.ones((5, 5), dtype=np.uint8))
    raw = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": rle, "iscrowd": 1}
    cleaned, drop, _ = clean_annotation(raw, image, {1}, set())
    assert cleaned is None and drop.reason == "invalid_segmentation"


def test_size_buckets_follow_coco():
    assert [size_bucket(a) for a in (32**2 - 1, 32**2, 96**2, 96**2 + 1)] == ["small", "medium", "medium", "large"]


def write_params(tmp_path: Path, data: dict) -> Path:
    params = {
        "data": data,
        "input": {"size": 64},
        "mlflow": {"tracking_uri": new_store(tmp_path / "mlflow.db")},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_stage(tmp_path: Path, params: Path, stage: str = "prepare") -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", f"stages.{stage}", "--params", str(params)],
        cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=300,
    )


def test_stage_writes_three_roles_and_a_summary_without_absolute_paths(tmp_path):
    synthetic = {"train_images": 6, "val_images": 3, "test_images": 4, "width": 96, "height": 80, "crowd_prob": 0.5}
    params = write_params(tmp_path, {"source": "synthetic", "synthetic": synthetic})
    generated = run_stage(tmp_path, params, "generate")
    assert generated.returncode == 0, generated.stderr
    result = run_stage(tmp_path, params)
    assert result.returncode == 0, result.stderr

    prepared = tmp_path / "data" / "prepared"
    image_dirs = json.loads((prepared / "image_dirs.json").read_text())
    assert image_dirs == {"train": "../synthetic/train", "val": "../synthetic/val", "test": "../synthetic/test"}
    assert len(json.loads((prepared / "labels.json").read_text())) >= 5
    summary_text = (tmp_path / "reports" / "data" / "summary.json").read_text()
    assert str(tmp_path) not in summary_text
    summary = json.loads(summary_text)
    assert summary["source"] == "synthetic" and summary["root"] == "data/synthetic"
    ids = {}
    for role, n in (("train", 6), ("val", 3), ("test", 4)):
        assert summary["roles"][role]["images"] == n
        ids[role] = {image["id"] for image in json.loads(annotations_path(prepared, role).read_text())["images"]}
        assert len(ids[role]) == n
        assert len(list((tmp_path / "data" / "synthetic" / role).glob("*.png"))) == n
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    for role in ("val", "test"):
        assert {i["id"] for i in json.loads(ground_truth_path(prepared, role).read_text())["images"]} == ids[role]
    assert not (tmp_path / "reports" / "data" / "box_sizes.png").exists()  # drawn by the anchors stage now
    assert "data.train.images 6" in result.stdout and "data.test.images 4" in result.stdout


def test_stage_fails_in_one_line_and_writes_nothing_under_strict(root, tmp_path):
    params = write_params(tmp_path, {"source": "coco", "root": str(root), "train_split": "train",
                                     "val_split": "val", "test_split": "test", "strict": True})
    result = run_stage(tmp_path, params)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "degenerate_box" in last and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "prepared").exists()
    assert not list((tmp_path / "data").glob(".prepared*"))

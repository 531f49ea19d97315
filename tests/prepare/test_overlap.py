"""The leakage check of prepare: an image in two roles, by id, by file or by content, stops the stage in one
line; with data.allow_overlap it is recorded in the summary, the prepared data, metrics.json and MLflow."""
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.data.layout import overlap_path, read_overlap
from pipeline.prepare.overlap import content_digests
from pipeline.prepare.roles import prepare
from pipeline.tracking.datasets import OVERLAP, PREPARED
from pipeline.utils.errors import PipelineError
from tests.conftest import new_store, stage_env
from tests.tiny import run_stage

WIDTH, HEIGHT = 40, 30
SPLITS = {"train": "train", "val": "val", "test": "test"}
CATEGORIES = [{"id": 1, "name": "thing"}]
KIND_COUNTS = {"id": 0, "path": 0, "content": 0}


def picture(value: int) -> Image.Image:
    """A gray picture of its own: distinct values give distinct bytes of the same size."""
    return Image.new("L", (WIDTH, HEIGHT), value)


def write_split(root: Path, split: str, images: list[tuple[int, str]]) -> None:
    """``annotations/instances_<split>.json`` with one box per ``(id, file_name)``."""
    records = [{"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT} for image_id, name in images]
    annotations = [{"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [4, 4, 10, 10], "iscrowd": 0,
                    "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]], "area": 100.0} for image_id, _ in images]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": records, "annotations": annotations, "categories": CATEGORIES}))


def clean_root(root: Path) -> Path:
    """Three roles without a shared image: train 1-3, val 11-12, test 21-22, each picture different."""
    for split, ids in (("train", (1, 2, 3)), ("val", (11, 12)), ("test", (21, 22))):
        (root / split).mkdir(parents=True)
        for image_id in ids:
            picture(image_id).save(root / split / f"{image_id}.png")
        write_split(root, split, [(image_id, f"{image_id}.png") for image_id in ids])
    return root


def overlapping_root(root: Path, kind: str) -> tuple[Path, str]:
    """A clean root whose test role shares one image with train by ``kind``, and that image's example name."""
    clean_root(root)
    if kind == "id":  # another picture under a train image's id
        write_split(root, "test", [(2, "21.png"), (22, "22.png")])
        return root, "21.png"
    if kind == "path":  # the test folder is the train folder, and the test json names a train file
        shutil.rmtree(root / "test")
        for image_id in (21, 22):
            picture(image_id).save(root / "train" / f"{image_id}.png")
        os.symlink("train", root / "test")
        write_split(root, "test", [(21, "21.png"), (23, "3.png")])
        return root, "3.png"
    shutil.copyfile(root / "train" / "1.png", root / "test" / "copy.png")  # content: a byte copy, its own id
    write_split(root, "test", [(21, "21.png"), (23, "copy.png")])
    return root, "copy.png"


def prepare_stage(tmp_path: Path, root: Path, *overrides: str):
    params = {"data": {"source": "coco", "root": str(root), "train_split": "train", "val_split": "val",
                       "test_split": "test"},
              "mlflow": {"tracking_uri": new_store(tmp_path / "mlflow.db")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = [a for override in overrides for a in ("--set", override)]
    return run_stage(tmp_path, "prepare", *args, check=False, timeout=300)


def prepare_library(root: Path, out: Path, allow_overlap: bool) -> dict:
    return prepare(root, SPLITS, out, categories=None, max_images=None, keep_empty_train=False, strict=True,
                   allow_overlap=allow_overlap)


@pytest.mark.parametrize("kind", ["id", "path", "content"])
def test_each_kind_of_overlap_is_caught_and_with_allow_overlap_recorded(tmp_path, kind):
    root, example = overlapping_root(tmp_path / "coco", kind)
    with pytest.raises(PipelineError, match=rf"images in two roles: train/test 1 \(1 by {kind}; {example}\)"):
        prepare_library(root, tmp_path / "refused", allow_overlap=False)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())  # nothing half-written

    summary = prepare_library(root, tmp_path / "allowed", allow_overlap=True)
    expected = {"train/test": {"images": 1, **KIND_COUNTS, kind: 1, "examples": [example]}}
    assert summary["overlap"] == expected and read_overlap(tmp_path / "allowed") == expected


def test_the_prepare_stage_refuses_in_one_line_and_records_with_allow_overlap(tmp_path):
    """Through the CLI on a COCO layout (the id kind: the library test covers all three)."""
    root, example = overlapping_root(tmp_path / "coco", "id")
    proc = prepare_stage(tmp_path, root)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0]
    assert f"images in two roles: train/test 1 (1 by id; {example})" in errors[0]
    assert "data.allow_overlap: true" in errors[0]
    assert not (tmp_path / "data/prepared").exists() and not list((tmp_path / "data").glob(".prepared*"))
    assert not (tmp_path / "reports").exists()  # nothing half-written

    proc = prepare_stage(tmp_path, root, "data.allow_overlap=true")
    assert proc.returncode == 0, proc.stderr
    expected = {"train/test": {"images": 1, **KIND_COUNTS, "id": 1, "examples": [example]}}
    assert json.loads((tmp_path / "reports/data/summary.json").read_text())["overlap"] == expected
    assert read_overlap(tmp_path / "data/prepared") == expected
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("yolact").experiment_id])
    assert {run.data.tags.get("data_overlap") for run in runs if run.info.status == "FINISHED"} == {
        "train/test 1 (id 1, path 0, content 0)"}


def test_no_overlap_records_nothing_and_a_carved_val_is_no_overlap(tmp_path):
    root = clean_root(tmp_path / "coco")
    options = dict(categories=None, max_images=None, keep_empty_train=False, strict=True)
    for name, splits in (("separate", SPLITS), ("carved", {"train": "train", "val": "train", "test": "test"})):
        out = tmp_path / name
        out.mkdir()
        summary = prepare(root, splits, out, val_images=1, **options)  # carved: val from the train folder
        assert "overlap" not in summary and not overlap_path(out).exists()
    assert overlap_path(PREPARED) == Path(PREPARED) / OVERLAP  # where the tracking package reads it


def test_only_files_of_a_size_another_role_has_are_hashed(tmp_path):
    files = {}
    for name, size in (("a", 10), ("b", 20), ("c", 10), ("d", 30), ("e", 30)):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x" * size)
    digests = content_digests([{files["a"], files["b"]}, {files["c"], files["d"]}, {files["e"]}])
    assert set(digests) == {files["a"], files["c"], files["d"], files["e"]}  # b: no other role has 20 bytes
    assert digests[files["a"]] == digests[files["c"]] != digests[files["d"]]


def test_metrics_and_every_run_reading_the_data_carry_the_overlap(tiny_project, untrained_model, tmp_path):
    from mlflow.tracking import MlflowClient

    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    train, test = (sorted((project / "data/synthetic" / split).glob("*.png")) for split in ("train", "test"))
    shutil.copyfile(train[0], test[0])
    env = stage_env(MLFLOW_TRACKING_URI=new_store(project / "mlflow.db"))
    refused = run_stage(project, "prepare", env=env, check=False)
    assert refused.returncode == 1 and "train/test 1 (1 by content" in refused.stderr
    run_stage(project, "prepare", "--set", "data.allow_overlap=true", env=env)
    run_stage(project, "evaluate", "--model", str(untrained_model), env=env)
    metrics = json.loads((project / f"evaluations/{untrained_model.stem}-test/metrics.json").read_text())
    assert metrics["data_overlap"]["train/test"]["content"] == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("yolact").experiment_id])
    tags = {r.data.tags["dvc_stage"]: r.data.tags.get("data_overlap") for r in runs if r.info.status == "FINISHED"}
    assert tags["prepare"] == tags["evaluate"] == "train/test 1 (id 0, path 0, content 1)"

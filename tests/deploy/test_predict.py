"""Predicting on new images: the Predictor on every kind of input, and the predict command."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from pipeline.config import EvalParams
from pipeline.data.layout import read_label_map
from pipeline.evaluation.inference import predict, split_loader
from pipeline.deploy.predict import Predictor, find_images, output_names, to_rgb
from tests.tiny import run_stage

LOW_SCORE = EvalParams(score_threshold=0.05)


def test_the_predictor_gives_what_evaluation_gives_on_the_same_image(tiny_project, untrained_model):
    predictor = Predictor.from_checkpoint(untrained_model, "cpu", eval_params=LOW_SCORE)
    prepared = tiny_project / "data/prepared"
    loader = split_loader(prepared, "test", predictor.trained.params.input, batch_size=1, num_workers=0)
    evaluated = predict(predictor.trained.model, loader, LOW_SCORE, False, predictor.trained.category_ids,
                        torch.device("cpu"), progress=False)
    first_id = evaluated.image_ids[0]
    expected = [r for r in evaluated.results["segm"] if r["image_id"] == first_id]
    image_file = loader.dataset.image_dir / loader.dataset.images[0]["file_name"]
    records = predictor.coco_records(first_id, predictor.predict(image_file))
    assert len(records) == len(expected) > 0
    for got, want in zip(records, expected):
        assert got["segmentation"] == want["segmentation"]
        assert got["category_id"] == want["category_id"] and got["score"] == pytest.approx(want["score"])


@pytest.mark.parametrize("kind", ["grey", "rgba", "uint16", "tall", "tensor", "pil"])
def test_any_image_kind_gives_boxes_and_masks_at_its_own_size(untrained_model, tmp_path, kind):
    rng = np.random.default_rng(0)
    height, width = (150, 40) if kind == "tall" else (48, 72)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = {
        "grey": rgb[:, :, 0], "rgba": np.dstack([rgb, np.full((height, width), 7, np.uint8)]),
        "uint16": rgb[:, :, 0].astype(np.uint16) * 257, "tall": rgb,
        "tensor": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), "pil": Image.fromarray(rgb),
    }[kind]
    prediction = Predictor.from_checkpoint(untrained_model, "cpu", eval_params=LOW_SCORE).predict(image)
    n = len(prediction)
    assert n > 0
    assert prediction.masks.shape == (n, height, width) and prediction.masks.dtype == torch.bool
    assert prediction.boxes.shape == (n, 4)
    assert (prediction.boxes[:, 2] <= width + 1e-3).all() and (prediction.boxes[:, 3] <= height + 1e-3).all()
    assert all(0 <= label < len(prediction.class_names) for label in prediction.labels.tolist())


def test_sixteen_bit_and_grey_files_read_as_their_eight_bit_rgb(tmp_path):
    grey16 = (np.arange(64 * 32, dtype=np.uint16).reshape(64, 32) * 31)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb = to_rgb(tmp_path / "g16.png")
    assert rgb.shape == (3, 64, 32) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[0], torch.from_numpy((grey16 >> 8).astype(np.uint8)))
    assert torch.equal(rgb[0], rgb[2])


def test_sources_are_files_folders_and_globs_each_once(tmp_path):
    for name in ("a/x.png", "a/y.jpg", "b/x.png", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "*/x.png")])
    assert found == [tmp_path / "a/x.png", tmp_path / "a/y.jpg", tmp_path / "b/x.png"]
    assert len(set(output_names(found))) == 3


def test_the_command_writes_overlays_and_results_and_counts_unreadable_files(tiny_project, untrained_model, tmp_path):
    source = tmp_path / "in"
    shutil.copytree(tiny_project / "data/synthetic/test", source)
    (source / "broken.png").write_bytes(b"not a png")
    readable = len(list(source.glob("*.png"))) - 1
    out = tmp_path / "out"
    proc = run_stage(tiny_project, "predict", "--model", str(untrained_model), "--source", str(source), "--out", str(out),
                     "--score", "0.05")
    assert f"{readable} images" in proc.stdout and "1 unreadable" in proc.stdout
    assert "broken.png" in proc.stderr
    images = json.loads((out / "images.json").read_text())
    assert len(images) == readable and all((out / image["overlay"]).is_file() for image in images)
    gt = COCO()
    gt.dataset = {"images": images, "categories": [{"id": e["category_id"], "name": e["name"]}
                                                    for e in read_label_map(tiny_project / "data/prepared")],
                  "annotations": []}
    gt.createIndex()
    results = gt.loadRes(str(out / "results.json"))  # the results file as COCO tools read it
    assert len(results.anns) > 0 and all(r["score"] >= 0.05 for r in results.anns.values())

    again = run_stage(tiny_project, "predict", "--model", str(untrained_model), "--source", str(source), "--out", str(out),
                      check=False)
    assert again.returncode == 1 and "not empty" in again.stderr


def test_no_readable_image_fails_without_writing_results(tiny_project, untrained_model, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nothing")
    proc = run_stage(tiny_project, "predict", "--model", str(untrained_model), "--source", str(tmp_path / "bad.jpg"),
                     "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 1 and "could be read" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()

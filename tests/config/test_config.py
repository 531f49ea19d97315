"""params.yaml parsing and validation: each invalid case fails a real stage with one clear line."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import config
from tests.conftest import PYTHON, REPO, stage_env


def default_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_default_params_load_and_are_typed():
    params = config.load(REPO / "params.yaml")
    assert isinstance(params.loss.pos_iou, float)
    assert params.model.backbone.depth in (18, 34, 50, 101, 152)
    assert len(params.anchors.scales) == params.model.fpn.num_outs
    with pytest.raises(Exception):
        params.loss.pos_iou = 0.9  # frozen


def test_overrides_are_parsed_as_yaml():
    params = config.load(REPO / "params.yaml", ["loss.pos_iou=0.6", "data.categories=[person]"])
    assert params.loss.pos_iou == 0.6
    assert params.data.categories == ["person"]


def test_override_without_equals_is_rejected():
    with pytest.raises(config.ConfigError, match="key=value"):
        config.load(REPO / "params.yaml", ["loss.pos_iou"])


def test_flatten_gives_dotted_keys():
    flat = config.flatten(config.load(REPO / "params.yaml"))
    assert flat["loss.pos_iou"] == 0.5
    assert "model.backbone.depth" in flat and "ablation.train.iterations" in flat


def test_yolact_coco_preset_is_valid(tmp_path):
    params = config.load(REPO / "configs" / "yolact550_r50_coco.yaml",
                         [f"data.root={tmp_path}", "model.backbone.pretrained=null"])
    assert params.input.size == 550 and params.model.backbone.depth == 50
    assert params.train.iterations == 800_000 and params.train.lr_steps == [280_000, 600_000, 700_000, 750_000]
    # COCO's convention: val carved from train2017, the official val2017 as the test split.
    assert params.data.val_split == params.data.train_split == "train2017" and params.data.test_split == "val2017"


def _set(raw: dict, dotted: str, value):
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


INVALID = [
    # (dotted key to set, value, dotted key named in the error, fragment of the message)
    ("loss.pos_iuo", 0.5, "loss.pos_iuo", "did you mean 'loss.pos_iou'"),
    ("train.batch_size", "eight", "train.batch_size", "expected an integer"),
    ("loss.pos_iou", 1.2, "loss.pos_iou", "must be in (0, 1)"),
    ("loss.neg_iou", 0.0, "loss.neg_iou", "must be in (0, 1)"),
    ("loss.neg_iou", 0.7, "loss.neg_iou", "must not exceed loss.pos_iou"),
    ("loss.crowd_iou", 1.5, "loss.crowd_iou", "must be in (0, 1]"),
    ("anchors.scales", [[24], [48], [96]], "anchors.scales", "one non-empty list per FPN level"),
    ("anchors.scales", [[24], [], [96], [192], [384]], "anchors.scales", "one non-empty list per FPN level"),
    ("anchors.scales", [[24], [48], [-96], [192], [384]], "anchors.scales", "must be positive"),
    ("anchors.aspect_ratios", [1, 0, 2], "anchors.aspect_ratios", "positive"),
    ("train.lr", 0, "train.lr", "must be positive"),
    ("train.batch_size", -2, "train.batch_size", "must be positive"),
    ("train.iterations", -1, "train.iterations", "must be non-negative"),
    ("data.source", "coco", "data.root", "is the generated dataset; point it at a COCO root"),
    ("data.root", "/nonexistent/coco", "data.root", "directory not found"),
    ("data.allow_overlap", "yes", "data.allow_overlap", "expected true or false"),
    ("model.backbone.depth", 42, "model.backbone.depth", "must be one of 18, 34, 50, 101, 152"),
    ("ablation.anchor_scales", ["base$(touch pwned)"], "ablation.anchor_scales[0]", "must be a plain identifier"),
]


@pytest.mark.parametrize("key,value,named,fragment", INVALID, ids=[f"{c[0]}={c[1]}" for c in INVALID])
def test_invalid_params_fail_the_stage_cleanly(tmp_path: Path, key, value, named, fragment):
    raw = default_raw()
    _set(raw, key, value)
    if key == "data.root":
        _set(raw, "data.source", "coco")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in tmp_path.iterdir())

    proc = subprocess.run(
        [PYTHON, "-m", "stages.prepare"], cwd=tmp_path, env=stage_env(),
        capture_output=True, text=True, timeout=120,
    )

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"params: {named}:" in lines[0] and fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no outputs, no mlflow.db


def test_in_process_errors_name_the_dotted_key():
    raw = default_raw()
    raw["ablation"]["thresholds"] = [[0.5, 0.6]]
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(raw) and config.validate(config.from_dict(raw))
    assert err.value.key == "ablation.thresholds[0][1]"


@pytest.mark.parametrize("train, fragment", [
    ({"optimizer": "adam"}, "train.optimizer"),
    ({"momentum": 1.0}, "must be below 1"),
    ({"lr_schedule": "cosine", "lr_steps": [100]}, "unused with train.lr_schedule: cosine"),
])
def test_optimizer_and_schedule_params_are_checked(train, fragment):
    with pytest.raises(config.ConfigError, match=re.escape(fragment)):
        config.validate(config.from_dict({"train": train}))


@pytest.mark.parametrize("data, key, fragment", [
    ({"test_split": "train"}, "data.test_split", "must differ from data.train_split"),
    ({"val_split": "val2017", "test_split": "val2017"}, "data.test_split", "must differ from data.val_split"),
    ({"val_images": 0}, "data.val_images", "must be positive"),
    ({"synthetic": {"test_images": 0}}, "data.synthetic.test_images", "must be positive"),
    ({"synthetic": {"train_images": 10_000_000}}, "data.synthetic.train_images", "must be below"),
])
def test_roles_are_checked(data, key, fragment):
    with pytest.raises(config.ConfigError, match=re.escape(fragment)) as err:
        config.validate(config.from_dict({"data": data}))
    assert err.value.key == key


def test_role_defaults_are_the_generated_splits_and_the_coco_preset_follows_cocos_convention():
    data = config.DataParams()
    assert (data.root, data.train_split, data.val_split, data.test_split) == ("data/synthetic", "train", "val", "test")
    assert data.val_images == 500 and data.synthetic.test_images == 500
    coco = yaml.safe_load((REPO / "configs" / "yolact550_r50_coco.yaml").read_text())["data"]
    assert (coco["train_split"], coco["val_split"], coco["test_split"]) == ("train2017", "train2017", "val2017")


@pytest.mark.parametrize("data, key", [
    ({"root": "elsewhere"}, "data.root"),
    ({"train_split": "train2017"}, "data.train_split"),
    ({"test_split": "val2017"}, "data.test_split"),
])
def test_synthetic_data_lives_where_the_generate_stage_writes_it(data, key):
    with pytest.raises(config.ConfigError) as err:
        config.validate(config.from_dict({"data": data}))
    assert err.value.key == key


@pytest.mark.parametrize("ablation, key", [
    ({"anchor_scales": ["a;b"], "scale_sets": {"a;b": [[1], [2], [3], [4], [5]]}}, "ablation.scale_sets"),
    ({"anchor_scales": ["ok"], "scale_sets": {"ok": [[1], [2], [3], [4], [5]], "1st": [[1], [2], [3], [4], [5]]}},
     "ablation.scale_sets"),
    ({"anchor_scales": ["two words"], "scale_sets": {"ok": [[1], [2], [3], [4], [5]]}}, "ablation.anchor_scales[0]"),
])
def test_ablation_names_that_reach_the_shell_are_plain_identifiers(ablation, key):
    with pytest.raises(config.ConfigError, match="plain identifier") as err:
        config.validate(config.from_dict({"ablation": ablation}))
    assert err.value.key == key
    config.validate(config.from_dict({"ablation": {"anchor_scales": ["set_2"],
                                                   "scale_sets": {"set_2": [[1], [2], [3], [4], [5]]}}}))


def test_weight_paths_are_taken_from_the_repository_root_whichever_params_file(tmp_path, monkeypatch):
    """A full params file in configs/, an overlay of ../params.yaml and a file outside the tree name the same
    weights/ file: each resolves from the working directory (the repository root), not from its own folder."""
    from tests.tiny import make_project, run_stage

    project = make_project(tmp_path / "project")
    (project / "configs").mkdir()
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["model"]["backbone"]["pretrained"] = "weights/resnet.pth"
    (project / "configs" / "full.yaml").write_text(yaml.safe_dump(raw))
    overlay = {config.BASE_KEY: "../params.yaml", "model": {"backbone": {"pretrained": "weights/resnet.pth"}}}
    (project / "configs" / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(raw))
    files = ("configs/full.yaml", "configs/overlay.yaml", str(tmp_path / "outside.yaml"))
    for params_file in files:
        proc = run_stage(project, "train", "--params", params_file, check=False)
        assert proc.returncode == 2 and "model.backbone.pretrained: file not found: weights/resnet.pth" in proc.stderr
    (project / "weights" / "resnet.pth").write_bytes(b"")
    monkeypatch.chdir(project)
    for params_file in files:
        params = config.load(params_file)
        found = config.weights_path(params.model.backbone.pretrained)
        assert found.resolve() == (project / "weights/resnet.pth").resolve()
        proc = run_stage(project, "train", "--params", params_file, check=False)
        assert proc.returncode == 1, proc.stderr  # the params are valid: what is missing now is the data
        assert proc.stderr.startswith("error: data/prepared: not found; run `python -m stages.prepare`")

"""Released YOLACT checkpoints (model.init_from, pipeline.models.yolact.released) and weight files as declared inputs.

The original's state-dict layout is written out here from its source (github.com/dbolya/yolact:
backbone.py, yolact.py, utils/functions.py make_net, data/config.py), independently of the mapping under
test, and :func:`original_forward` computes the original's forward straight from those names. No
released file is needed: the tensors are random, at full size or at a reduced width with the same structure.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from itertools import product
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from pipeline import config
from pipeline.prepare.annotations import label_map, select_categories
from pipeline.training.checkpoints import weights_hash
from pipeline.utils.errors import PipelineError
from pipeline.models.loading import TrainedModel, load_model
from pipeline.models.yolact.model import build_model
from pipeline.deploy.predict import Predictor, to_rgb
from pipeline.models.yolact.released import check_params, load_released
from tests.conftest import REPO
from tests.tiny import copy_project, run_stage

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # the original's ResNetBackbone layers per config
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
RELEASED = {  # preset -> (original file name, depth, max_size, pred_scales of the original's config)
    "yolact_resnet50_550_released.yaml": ("yolact_resnet50_54_800000.pth", 50, 550, [24, 48, 96, 192, 384]),
    "yolact_base_550_released.yaml": ("yolact_base_54_800000.pth", 101, 550, [24, 48, 96, 192, 384]),
    "yolact_im400_released.yaml": ("yolact_im400_54_800000.pth", 101, 400, [int(s / 550 * 400) for s in (24, 48, 96, 192, 384)]),
    "yolact_im700_released.yaml": ("yolact_im700_54_800000.pth", 101, 700, [int(s / 550 * 700) for s in (24, 48, 96, 192, 384)]),
}


def original_layout(depth: int, width: int = 64, fpn: int = 256, prototypes: int = 32, scores: int = 81,
                    anchors: int = 3, with_counters: bool = True) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the original's state dict for ``yolact_base`` (R-101) / ``yolact_resnet50``.

    ``width`` is the stem width (64 in the original; the stages are 1, 2, 4, 8 times it, x4 out).
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        if with_counters:
            shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv(prefix: str, out: int, inp: int, k: int, bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = (out, inp, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (out,)

    conv("backbone.conv1", width, 3, 7, bias=False)
    bn("backbone.bn1", width)
    inplanes, stage_channels = width, []
    for i, blocks in enumerate(BLOCKS[depth]):
        planes = width * 2**i
        for j in range(blocks):
            block = f"backbone.layers.{i}.{j}"
            conv(f"{block}.conv1", planes, inplanes, 1, bias=False)
            bn(f"{block}.bn1", planes)
            conv(f"{block}.conv2", planes, planes, 3, bias=False)
            bn(f"{block}.bn2", planes)
            conv(f"{block}.conv3", planes * 4, planes, 1, bias=False)
            bn(f"{block}.bn3", planes * 4)
            if j == 0:
                conv(f"{block}.downsample.0", planes * 4, inplanes, 1, bias=False)
                bn(f"{block}.downsample.1", planes * 4)
            inplanes = planes * 4
        stage_channels.append(inplanes)
    for i, channels in enumerate(reversed(stage_channels[1:])):  # lat_layers: C5 first
        conv(f"fpn.lat_layers.{i}", fpn, channels, 1)
    for i in range(3):
        conv(f"fpn.pred_layers.{i}", fpn, fpn, 3)
    for i in range(2):
        conv(f"fpn.downsample_layers.{i}", fpn, fpn, 3)
    for i in (0, 2, 4, 8):  # make_net: conv, relu, conv, relu, conv, relu, upsample, relu, conv, relu, conv
        conv(f"proto_net.{i}", fpn, fpn, 3)
    conv("proto_net.10", prototypes, fpn, 1)
    conv("prediction_layers.0.upfeature.0", fpn, fpn, 3)
    conv("prediction_layers.0.bbox_layer", anchors * 4, fpn, 3)
    conv("prediction_layers.0.conf_layer", anchors * scores, fpn, 3)
    conv("prediction_layers.0.mask_layer", anchors * prototypes, fpn, 3)
    conv("semantic_seg_conv", scores - 1, fpn, 1)
    return shapes


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of ``layout`` that keep activations finite through 101 layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (name, shape) in enumerate(layout.items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(800_000 + index)  # distinct, so that each lands in one place
        elif name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(shape[1] * shape[2] * shape[3])
        else:
            state[name] = 0.1 * torch.randn(shape, generator=g)
    return state


def original_forward(s: dict[str, torch.Tensor], x: torch.Tensor, depth: int, max_size: int,
                     scales: list[int]) -> dict[str, torch.Tensor]:
    """The original Yolact.forward in eval mode before Detect (raw conf logits), from its state dict."""
    def conv(t, name, stride=1, padding=0):
        return F.conv2d(t, s[f"{name}.weight"], s.get(f"{name}.bias"), stride, padding)

    def bn(t, name):
        return F.batch_norm(t, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                            s[f"{name}.bias"], False, 0.0, 1e-5)

    t = F.max_pool2d(F.relu(bn(conv(x, "backbone.conv1", 2, 3), "backbone.bn1")), 3, 2, 1)
    convouts = []
    for i, blocks in enumerate(BLOCKS[depth]):
        for j in range(blocks):
            b = f"backbone.layers.{i}.{j}"
            stride = 2 if i > 0 and j == 0 else 1
            out = F.relu(bn(conv(t, f"{b}.conv1"), f"{b}.bn1"))
            out = F.relu(bn(conv(out, f"{b}.conv2", stride, 1), f"{b}.bn2"))
            out = bn(conv(out, f"{b}.conv3"), f"{b}.bn3")
            residual = bn(conv(t, f"{b}.downsample.0", stride), f"{b}.downsample.1") if j == 0 else t
            t = F.relu(out + residual)
        convouts.append(t)
    convouts = convouts[1:4]  # selected_layers = range(1, 4)

    # FPN.forward: lat/pred layers are stored coarsest first, inputs and outputs finest first.
    n = len(convouts)
    outs = [None] * n
    acc = torch.zeros(1)
    for i in range(n):
        j = n - 1 - i
        if j < n - 1:
            acc = F.interpolate(acc, size=convouts[j].shape[-2:], mode="bilinear", align_corners=False)
        acc = acc + conv(convouts[j], f"fpn.lat_layers.{i}")
        outs[j] = acc
    for i in range(n):
        j = n - 1 - i
        outs[j] = F.relu(conv(outs[j], f"fpn.pred_layers.{i}", padding=1))
    for i in range(2):
        outs.append(conv(outs[-1], f"fpn.downsample_layers.{i}", 2, 1))

    p = outs[0]
    for i in (0, 2, 4):
        p = F.relu(conv(p, f"proto_net.{i}", padding=1))
    p = F.relu(F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False))
    p = F.relu(conv(p, "proto_net.8", padding=1))
    proto = F.relu(conv(p, "proto_net.10")).permute(0, 2, 3, 1)

    loc, conf, mask, priors = [], [], [], []
    for level, f in enumerate(outs):
        h = F.relu(conv(f, "prediction_layers.0.upfeature.0", padding=1))
        flat = lambda y, last: y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, last)  # noqa: E731
        loc.append(flat(conv(h, "prediction_layers.0.bbox_layer", padding=1), 4))
        conf.append(flat(conv(h, "prediction_layers.0.conf_layer", padding=1), s["semantic_seg_conv.bias"].numel() + 1))
        mask.append(torch.tanh(flat(conv(h, "prediction_layers.0.mask_layer", padding=1), proto.shape[-1])))
        conv_h, conv_w = f.shape[-2:]
        boxes = []
        for j, i in product(range(conv_h), range(conv_w)):  # PredictionModule.make_priors
            for ar in (1, 1 / 2, 2):  # pred_aspect_ratios [[1, 1/2, 2]], preapply_sqrt False
                w = scales[level] * math.sqrt(ar) / max_size
                boxes.append([(i + 0.5) / conv_w, (j + 0.5) / conv_h, w, w])  # use_square_anchors: h = w
        priors.append(torch.tensor(boxes))
    return {"loc": torch.cat(loc, 1), "conf": torch.cat(conf, 1), "mask": torch.cat(mask, 1),
            "priors": torch.cat(priors), "proto": proto, "segm": conv(outs[0], "semantic_seg_conv")}


def preset_params(preset: str, **dotted) -> config.Params:
    """A released preset (an overlay, merged onto params.yaml) with overrides, unvalidated (no COCO root or
    weight file here)."""
    raw = config.read_raw(REPO / "configs" / preset)
    for key, value in dotted.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config.from_dict(raw)


def small_params(depth: int, path: Path | None, size: int = 128) -> config.Params:
    """The released layout at a reduced width (stem 8, FPN 16, 4 prototypes), starting from ``path``."""
    return preset_params("yolact_resnet50_550_released.yaml", **{
        "input.size": size, "model.backbone.depth": depth, "model.backbone.base_channels": 8,
        "model.fpn.out_channels": 16, "model.head.num_prototypes": 4,
        "model.init_from": None if path is None else str(path)})


def save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def assert_each_lands_once(original: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every original tensor equals exactly one tensor of the loaded model."""
    loaded = list(model.state_dict().values())
    for name, tensor in original.items():
        assert sum(tensor.shape == t.shape and torch.equal(tensor, t) for t in loaded) == 1, name


@pytest.mark.parametrize("depth", [50, 101])
def test_a_mapped_checkpoint_computes_what_the_original_computes(tmp_path, depth):
    original = random_state(original_layout(depth, width=8, fpn=16, prototypes=4), seed=depth)
    torch.manual_seed(1)  # the model's own init differs from every tensor loaded over it
    model = build_model(small_params(depth, save(original, tmp_path / "yolact.pth")), num_classes=80).eval()

    assert_each_lands_once(original, model)

    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ours = model(x)
        features = model.fpn(model.backbone(x))
        segm = model.semantic_head(features[0])
    reference = original_forward(original, x, depth, max_size=128, scales=[24, 48, 96, 192, 384])
    for key in ("loc", "conf", "mask", "proto", "priors"):
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(segm, reference["segm"], rtol=1e-4, atol=1e-5)
    assert ours["conf"].shape[-1] == 81  # background first, as the original's softmax over 81 scores


def test_full_size_resnet50_layout_maps_every_key_once_and_checkpoints_without_counters_load(tmp_path):
    original = random_state(original_layout(50, with_counters=False))
    assert sum(t.numel() for t in original.values()) > 30e6  # the real R-50 YOLACT size
    torch.manual_seed(0)
    path = save(original, tmp_path / "yolact_resnet50_54_800000.pth")
    model = build_model(preset_params("yolact_resnet50_550_released.yaml", **{"model.init_from": str(path)}), 80)
    assert_each_lands_once(original, model)
    mapped = model.state_dict()
    assert all(mapped[k] == 0 for k in mapped if k.endswith("num_batches_tracked"))  # the model's own
    assert torch.equal(mapped["head.conf_layer.weight"], original["prediction_layers.0.conf_layer.weight"])
    # lateral convs: ours finest first, the original's coarsest first
    assert torch.equal(mapped["fpn.lateral_convs.0.weight"], original["fpn.lat_layers.2.weight"])
    assert torch.equal(mapped["fpn.output_convs.2.bias"], original["fpn.pred_layers.0.bias"])
    assert torch.equal(mapped["protonet.after_upsample.2.weight"], original["proto_net.10.weight"])


def test_keys_the_original_loader_drops_are_ignored_as_it_does(tmp_path, capsys):
    original = random_state(original_layout(50, width=8, fpn=16, prototypes=4))
    original["fpn.downsample_layers.2.weight"] = torch.zeros(16, 16, 3, 3)  # v1.0 files
    original["backbone.layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)  # pre-"layers" names
    model = build_model(small_params(50, None), num_classes=80)
    load_released(model, save(original, tmp_path / "old.pth"))
    assert "ignored 2 keys" in capsys.readouterr().out


def _error(tmp_path: Path, original: dict, depth: int = 50, num_classes: int = 80) -> str:
    model = build_model(small_params(depth, None), num_classes=num_classes)
    with pytest.raises(PipelineError) as err:
        load_released(model, save(original, tmp_path / "yolact_x.pth"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("yolact_x.pth: key ")
    return message


def small_original(depth: int = 50, **layout) -> dict[str, torch.Tensor]:
    return random_state(original_layout(depth, width=8, fpn=16, prototypes=4, **layout))


def test_a_key_left_over_is_named(tmp_path):
    original = small_original()
    original["prediction_layers.0.score_layer.weight"] = torch.zeros(3, 16, 3, 3)
    assert "key prediction_layers.0.score_layer.weight has no place in the model" in _error(tmp_path, original)
    original = small_original()
    original["backbone.layers.1.3.conv2.conv_offset_mask.weight"] = torch.zeros(27, 16, 3, 3)
    assert "belongs to YOLACT++ (deformable convolutions)" in _error(tmp_path, original)


def test_a_missing_key_is_named(tmp_path):
    original = small_original()
    del original["proto_net.10.bias"]
    assert "key proto_net.10.bias is missing (the model's protonet.after_upsample.2.bias)" in _error(tmp_path, original)


def test_a_shape_mismatch_is_named_with_both_shapes(tmp_path):
    original = small_original()
    original["fpn.lat_layers.0.weight"] = torch.zeros(16, 128, 1, 1)
    assert _error(tmp_path, original) == (
        "yolact_x.pth: key fpn.lat_layers.0.weight has shape [16, 128, 1, 1], the model expects "
        "[16, 256, 1, 1]: does params match the checkpoint's config (see configs/)?")
    assert "data.categories: null" in _error(tmp_path, small_original(), num_classes=5)


def test_an_r101_checkpoint_does_not_load_into_r50_nor_the_reverse(tmp_path):
    assert "key backbone.layers.2.6.conv1.weight has no place" in _error(tmp_path, small_original(101), depth=50)
    assert "key backbone.layers.2.6.conv1.weight is missing" in _error(tmp_path, small_original(50), depth=101)


@pytest.mark.parametrize("key, value", [
    ("anchors.square", False), ("anchors.aspect_ratios", [0.5, 1, 2]), ("anchors.scales", [[24, 32]] * 5),
    ("model.fpn.upsample_mode", "nearest"), ("model.backbone.style", "caffe"), ("loss.use_focal_loss", True),
    ("model.backbone.depth", 18),
])
def test_options_the_weights_cannot_reveal_are_checked(key, value):
    with pytest.raises(config.ConfigError) as err:
        check_params(preset_params("yolact_resnet50_550_released.yaml", **{key: value}))
    assert err.value.key == key


def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="broken.pth: cannot read"):
        load_released(build_model(small_params(50, None), num_classes=80), path)


@pytest.mark.parametrize("preset", [p.name for p in PRESETS])
def test_every_preset_loads_and_validates(tmp_path, monkeypatch, preset):
    project = tmp_path / "project"
    (project / "weights").mkdir(parents=True)
    (project / "configs").mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    shutil.copy(REPO / "configs" / preset, project / "configs" / preset)  # an overlay of ../params.yaml
    model = config.read_raw(project / "configs" / preset)["model"]
    for path in (model["backbone"]["pretrained"], model.get("init_from")):
        if path:
            (project / path).touch()
    monkeypatch.chdir(project)  # weight paths are taken from the working directory, the repository root
    params = config.load(project / "configs" / preset, [f"data.root={tmp_path}"])
    if preset in RELEASED:
        file, depth, size, scales = RELEASED[preset]
        check_params(params)
        assert params.model.init_from == f"weights/{file}" and params.model.backbone.pretrained is None
        assert (params.model.backbone.depth, params.input.size) == (depth, size)
        assert params.anchors.scales == [[s] for s in scales]
        assert params.train.iterations == 0 and params.data.categories is None
        assert params.input.mean == [123.68, 116.78, 103.94] and params.input.std == [58.40, 57.12, 57.38]
        ev = params.eval
        assert (ev.nms, ev.nms_iou, ev.top_k, ev.score_threshold, ev.max_detections) == ("fast", 0.5, 200, 0.05, 100)
    assert set(RELEASED) <= {p.name for p in PRESETS}


@pytest.mark.parametrize("key", ["model.init_from", "model.backbone.pretrained"])
def test_weight_files_must_lie_under_weights(tmp_path, key):
    outside = tmp_path / "elsewhere.pth"
    outside.touch()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ok.pth").touch()

    def check(value):
        raw = config.to_dict(config.Params())
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        config.validate(config.from_dict(raw), base_dir=tmp_path)

    check("weights/ok.pth")
    check(str(tmp_path / "weights" / "ok.pth"))
    for value, fragment in ((str(outside), "must be a file under weights/"),
                            ("weights/../elsewhere.pth", "must be a file under weights/"),
                            ("weights/missing.pth", "file not found")):
        with pytest.raises(config.ConfigError, match=fragment) as err:
            check(value)
        assert err.value.key == key


def test_init_from_replaces_the_pretrained_backbone_so_both_are_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    for name in ("a.pth", "b.pth"):
        (tmp_path / "weights" / name).touch()
    params = config.from_dict({"model": {"init_from": "weights/a.pth", "backbone": {"pretrained": "weights/b.pth"}}})
    with pytest.raises(config.ConfigError, match="set model.backbone.pretrained to null") as err:
        config.validate(params, base_dir=tmp_path)
    assert err.value.key == "model.init_from"


def test_the_weights_hash_follows_file_content_not_just_the_path(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"first")
    params = small_params(50, path)
    first = weights_hash(params)
    path.write_bytes(b"second")
    assert weights_hash(params) != first
    assert weights_hash(small_params(50, None)) != weights_hash(params)
    pretrained = dataclasses.replace(params, model=dataclasses.replace(
        params.model, init_from=None, backbone=dataclasses.replace(params.model.backbone, pretrained=str(path))))
    assert weights_hash(pretrained) != weights_hash(params)  # the same file in another role


def test_mapped_r50_runs_end_to_end_at_550_on_a_real_coco_image(coco_tiny, tmp_path):
    """Random weights in the released R-50 layout: the whole predict path runs; no accuracy claim."""
    annotations = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    labels = label_map(select_categories(annotations["categories"], None))
    assert len(labels) == 80
    path = save(random_state(original_layout(50)), tmp_path / "yolact_resnet50_54_800000.pth")
    params = preset_params("yolact_resnet50_550_released.yaml", **{"model.init_from": str(path)})
    model = build_model(params, num_classes=len(labels)).eval()
    predictor = Predictor(TrainedModel(model, params, labels, {}), torch.device("cpu"), params.eval)
    image = coco_tiny / "val2017" / annotations["images"][0]["file_name"]
    with torch.no_grad():
        out = model(predictor.transform(tv_tensors.Image(to_rgb(image)))[None])
    assert out["conf"].shape == (1, 19248, 81) and out["proto"].shape == (1, 138, 138, 32)
    assert all(torch.isfinite(v).all() for v in out.values())
    prediction = predictor.predict(image)
    height, width = annotations["images"][0]["height"], annotations["images"][0]["width"]
    assert prediction.masks.shape[1:] == (height, width) and len(prediction) <= params.eval.max_detections


def test_train_with_zero_iterations_saves_the_released_weights_and_evaluate_scores_them(tiny_project, tmp_path):
    project = copy_project(tiny_project, tmp_path / "project", ("models", "mlruns", "mlartifacts", "mlflow.db"))
    num_classes = len(json.loads((project / "data/prepared/labels.json").read_text()))
    original = random_state(original_layout(50, width=8, fpn=16, prototypes=4, scores=num_classes + 1))
    save(original, project / "weights" / "released.pth")
    overrides = ["model.backbone.depth=50", "anchors.square=true", "model.init_from=weights/released.pth",
                 "train.iterations=0", "train.eval_every=0"]
    run_stage(project, "train", *(arg for o in overrides for arg in ("--set", o)))

    (project / "weights" / "released.pth").unlink()  # a rebuilt model needs the saved weights only
    trained = load_model(project / "models" / "model.pt", torch.device("cpu"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = trained.model(x)
    reference = original_forward(original, x, 50, max_size=64, scales=[8, 16, 24, 40, 64])
    for key in ("loc", "conf", "mask", "proto"):
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)

    run_stage(project, "evaluate")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert 0 <= metrics["segm"]["AP"] <= 1

"""The Mask R-CNN baseline (model.arch mask_rcnn): anchors, shapes, targets, params checks, and the train
(with resume), evaluate, predict and ablate paths on the tiny project."""
import json
import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from pipeline import config
from pipeline.ablation.cell import cell_params
from pipeline.models.priors.boxes import point_form
from pipeline.config import EvalParams
from pipeline.data.layout import read_label_map
from pipeline.utils.errors import PipelineError
from pipeline.evaluation.inference import predict, split_loader
from pipeline.models.mask_rcnn import PreparedInput, to_detections, torchvision_targets
from pipeline.models.yolact.model import build_model
from pipeline.models.networks import MaskRCNNNetwork, build_network, network
from pipeline.deploy.predict import Predictor
from pipeline.training.loop import log_columns, train
from tests.conftest import REPO, new_store, stage_env
from tests.training.test_train import _assert_same_weights, _weights, outputs_in
from tests.tiny import copy_project, kill_train_after_checkpoint, merge, run_stage, tiny_params

# A small Mask R-CNN on the tiny project's trunk (64 px, FPN width 16).
TINY_MASK_RCNN = {"model": {"arch": "mask_rcnn", "mask_rcnn": {
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "representation_size": 32,
    "mask_head_channels": 8}}}
TERMS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
LOW_SCORE = EvalParams(score_threshold=0.001)


def tiny_mask_rcnn_params(**dotted) -> config.Params:
    return config.replace(config.from_dict(tiny_params(TINY_MASK_RCNN)), **dotted)


def as_yolact(params: config.Params) -> config.Params:
    """The same params with model.arch yolact (and model.mask_rcnn at its defaults, as yolact requires)."""
    raw = config.to_dict(params)
    raw["model"].update(arch="yolact", mask_rcnn={})
    return config.from_dict(raw)


def tiny_images(params: config.Params, batch: int = 2) -> torch.Tensor:
    size = params.input.size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scales, square", [([[8, 12], [16, 20], [24, 30], [40, 50], [64, 80]], False),
                                            ([[8], [16], [24], [40], [64]], True)])
def test_rpn_anchors_are_the_params_anchors_and_yolact_priors(scales, square):
    params = tiny_mask_rcnn_params(**{"anchors.scales": scales, "anchors.square": square})
    ratios, size = params.anchors.aspect_ratios, params.input.size
    per_location = len(scales[0]) * len(ratios)
    model = build_network(params, num_classes=3).eval()
    assert model.rpn.anchor_generator.num_anchors_per_location() == [per_location] * len(scales)
    assert model.rpn.head.cls_logits.out_channels == per_location
    images = tiny_images(params)
    image_list, _ = model.transform(list(images))
    features = list(model.backbone(image_list.tensors).values())
    anchors = model.rpn.anchor_generator(image_list, features)
    assert len(anchors) == len(images) and torch.equal(anchors[0], anchors[1])

    start = 0
    for level, feature in enumerate(features):
        height, width = feature.shape[-2:]
        count = height * width * per_location
        boxes = anchors[0][start : start + count].reshape(height, width, per_location, 4)
        start += count
        wh = (boxes[..., 2:] - boxes[..., :2])[0, 0]
        expected = torch.tensor([[s * math.sqrt(r), s * math.sqrt(r) if square else s / math.sqrt(r)]
                                 for s in scales[level] for r in ratios])  # ratios are w / h, in pixels at input.size
        torch.testing.assert_close(wh, expected)
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        torch.testing.assert_close(centres[0, :, 0, 0], (torch.arange(width) + 0.5) * size / width)
        torch.testing.assert_close(centres[:, 0, 0, 1], (torch.arange(height) + 0.5) * size / height)
    assert start == len(anchors[0])
    yolact = build_model(as_yolact(params), num_classes=3).eval()
    with torch.no_grad():
        priors = yolact(images)["priors"]
    torch.testing.assert_close(anchors[0], point_form(priors) * size)


def test_proposals_and_heads_have_the_documented_shapes():
    params = tiny_mask_rcnn_params()
    mr, size, classes = params.model.mask_rcnn, params.input.size, 3
    model = build_network(params, num_classes=classes).eval()
    assert list(model.backbone(tiny_images(params)).keys()) == ["0", "1", "2", "3", "pool"]
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    images = tiny_images(params)
    with torch.no_grad():
        image_list, _ = model.transform(list(images))
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        assert len(proposals) == 2
        for boxes in proposals:
            assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < len(boxes) <= mr.rpn_post_nms_top_n_test
            assert (boxes >= 0).all() and (boxes <= size).all()
        heads = model.roi_heads
        rois = heads.box_roi_pool(features, proposals, image_list.image_sizes)
        count = sum(len(p) for p in proposals)
        assert rois.shape == (count, 16, 7, 7)
        logits, deltas = heads.box_predictor(heads.box_head(rois))
        assert logits.shape == (count, classes + 1) and deltas.shape == (count, 4 * (classes + 1))
        mask_rois = heads.mask_roi_pool(features, proposals, image_list.image_sizes)
        assert mask_rois.shape == (count, 16, 14, 14)
        mask_features = heads.mask_head(mask_rois)
        assert mask_features.shape == (count, mr.mask_head_channels, 14, 14)
        assert heads.mask_predictor(mask_features).shape == (count, classes + 1, 28, 28)
        out = model(list(images))[0]
    n = len(out["scores"])
    assert n > 0 and out["masks"].shape == (n, 1, size, size) and out["boxes"].shape == (n, 4)
    assert 0 <= out["masks"].min() and out["masks"].max() <= 1 and 1 <= out["labels"].min() <= out["labels"].max() <= classes
    model.train()
    proposals, _ = model.rpn(image_list, model.backbone(image_list.tensors),
                             torchvision_targets(_targets(size), size))
    assert all(len(p) <= mr.rpn_post_nms_top_n_train for p in proposals)


def _targets(size: int) -> list[dict]:
    """One image with two instances and a crowd region, one image with nothing."""
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 8:24, 4:30] = 1
    masks[1, 30:60, 32:50] = 1
    boxes = torch.tensor([[4, 8, 30, 24], [32, 30, 50, 60]], dtype=torch.float32) / size
    return [{"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks,
             "crowd_boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, size, size, dtype=torch.uint8), "crowd_boxes": torch.zeros(0, 4)}]


def test_targets_and_detections_convert_labels_and_frames_both_ways():
    size = 64
    first, empty = torchvision_targets(_targets(size), size)
    assert set(first) == {"boxes", "labels", "masks"}  # crowd regions dropped
    torch.testing.assert_close(first["boxes"], torch.tensor([[4.0, 8, 30, 24], [32, 30, 50, 60]]))
    assert first["labels"].tolist() == [1, 3]  # torchvision's 0 is the background
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    out = {"boxes": torch.tensor([[6.4, 0.0, 32.0, 64.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
           "masks": torch.full((1, 1, size, size), 0.7)}
    (det,) = to_detections([out], size)
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.1, 0.0, 0.5, 1.0]]))
    assert det["labels"].tolist() == [0] and det["masks"].shape == (1, size, size)


def test_a_training_step_takes_images_without_instances_and_is_finite():
    params = tiny_mask_rcnn_params()
    net = network("mask_rcnn")
    model = net.build(params, num_classes=3).train()
    losses = net.loss(net.forward(model, tiny_images(params), _targets(params.input.size), seed=0), [], params.loss)
    assert set(losses) == {*TERMS, "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()


def test_the_rpn_and_roi_heads_take_their_thresholds_from_params():
    params = tiny_mask_rcnn_params(**{"model.mask_rcnn.rpn_fg_iou": 0.65, "model.mask_rcnn.rpn_bg_iou": 0.25})
    model = build_network(cell_params(params, 0.6, 0.45, "base", 0), num_classes=3)
    assert (model.rpn.proposal_matcher.high_threshold, model.rpn.proposal_matcher.low_threshold) == (0.65, 0.25)
    # an ablation cell's pos_iou / neg_iou become the RoI heads' foreground / background thresholds
    assert (model.roi_heads.proposal_matcher.high_threshold, model.roi_heads.proposal_matcher.low_threshold) == (0.6, 0.45)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == params.model.mask_rcnn.box_batch_size_per_image


def test_the_prepared_input_skips_steps_that_would_be_identities():
    size = 64
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(1))
    target = torchvision_targets(_targets(size), size)[0]
    stock = GeneralizedRCNNTransform(size, size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=1).train()
    ours = PreparedInput(size).train()
    (a, a_targets), (b, b_targets) = stock([image], [dict(target)]), ours([image], [dict(target)])
    assert torch.equal(a.tensors, b.tensors) and torch.equal(b.tensors[0], image)
    for key in ("boxes", "masks"):
        assert torch.equal(a_targets[0][key], b_targets[0][key])
    with pytest.raises(ValueError, match="built for 64x64"):
        ours([torch.zeros(3, 64, 80)])


@pytest.mark.parametrize("dotted, key", [
    ({"model.arch": "mask_rcnn", "loss.use_focal_loss": True}, "loss.use_focal_loss"),
    ({"model.arch": "mask_rcnn", "loss.mask_weight": 2.0}, "loss.mask_weight"),
    ({"model.arch": "mask_rcnn", "eval.top_k": 50}, "eval.top_k"),
    ({"model.mask_rcnn.box_batch_size_per_image": 64}, "model.mask_rcnn.box_batch_size_per_image"),
])
def test_a_key_of_the_other_architecture_is_an_error_naming_it(dotted, key):
    raw = tiny_params()
    for name, value in dotted.items():
        node = raw
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    with pytest.raises(config.ConfigError) as err:
        config.validate(config.from_dict(raw))
    assert err.value.key == key and "applies to model.arch" in str(err.value)


def test_the_default_params_and_the_gpu_preset_are_valid(tmp_path):
    for arch in ("yolact", "mask_rcnn"):
        assert config.load(REPO / "params.yaml", [f"model.arch={arch}"]).model.arch == arch
    preset = config.load(REPO / "configs/mask_rcnn_r50_fpn_coco.yaml",
                         [f"data.root={tmp_path}", "model.backbone.pretrained=null"])
    assert preset.model.arch == "mask_rcnn" and preset.input.size == 800
    tp = preset.train
    assert (tp.batch_size, tp.iterations, tp.lr, tp.lr_steps, tp.weight_decay) == (16, 90_000, 0.02, [60_000, 80_000], 1e-4)
    assert (tp.warmup_iterations, tp.warmup_lr) == (1000, 0.02 * 0.001)
    assert preset.model.mask_rcnn.rpn_post_nms_top_n_train == 2000 and preset.model.mask_rcnn.representation_size == 1024


# --------------------------------------------------------------------------------------------------
# Through the stages


@pytest.fixture(scope="module")
def resumed(tiny_project, tmp_path_factory):
    """A tiny Mask R-CNN project whose train stage was killed after a checkpoint and run again, and the
    weights of one uninterrupted run (train.eval_every 6 of 12 iterations, a checkpoint every 2)."""
    root = tmp_path_factory.mktemp("mask_rcnn")
    project = root / "project"
    copy_project(tiny_project, project, ("mlflow.db*", "mlartifacts", "models"))
    raw = merge(yaml.safe_load((project / "params.yaml").read_text()), TINY_MASK_RCNN)
    raw["train"].update({"iterations": 12, "checkpoint_every": 2})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    reference = root / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stage below (OMP_NUM_THREADS=1): float sums in the same order
    try:
        train(config.load(project / "params.yaml"), project / "data/prepared", outputs_in(reference), progress=False)
    finally:
        torch.set_num_threads(threads)

    env = stage_env(MLFLOW_TRACKING_URI=new_store(root / "mlflow.db"), OMP_NUM_THREADS="1")
    killed_at = kill_train_after_checkpoint(project, env)
    rerun = run_stage(project, "train", env=env)
    return project, env, _weights(reference / "model.pt"), killed_at, rerun


def test_a_killed_mask_rcnn_run_resumes_to_the_uninterrupted_weights(resumed):
    project, _, reference, killed_at, rerun = resumed
    assert 4 <= killed_at < 12
    assert "resuming from" in rerun.stdout + rerun.stderr
    _assert_same_weights(_weights(project / "models/model.pt"), reference)


def test_the_training_log_has_torchvision_loss_terms_and_validation(resumed):
    import pandas as pd

    project = resumed[0]
    log = pd.read_csv(project / "reports/train/log.csv")
    assert tuple(log.columns) == log_columns(TERMS) and list(log["iteration"]) == list(range(1, 13))
    torch.testing.assert_close(torch.tensor(log[list(TERMS)].sum(axis=1).values), torch.tensor(log["loss"].values),
                               rtol=1e-5, atol=1e-6)
    assert list(log.loc[log["val_segm_AP"].notna(), "iteration"]) == [6, 12]
    assert (project / "reports/train/curves.png").is_file()


def _keys(node) -> object:
    return {k: _keys(v) for k, v in node.items()} if isinstance(node, dict) else None


def test_the_evaluate_stage_scores_mask_rcnn_with_yolact_s_metrics(resumed):
    project, env = resumed[:2]
    run_stage(project, "evaluate", env=env)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert _keys(metrics) == _keys(json.loads((REPO / "reports/metrics.json").read_text()))
    assert metrics["num_images"] == 8 and all(0 <= metrics[t]["AP"] <= 1 for t in ("bbox", "segm"))
    assert (project / "reports/eval_results/segm.json.gz").is_file()


def test_the_predictor_gives_what_evaluation_gives_for_mask_rcnn(resumed):
    project = resumed[0]
    predictor = Predictor.from_checkpoint(project / "models/model.pt", "cpu", eval_params=LOW_SCORE)
    assert predictor.trained.params.model.arch == "mask_rcnn"
    prepared = project / "data/prepared"
    loader = split_loader(prepared, "test", predictor.trained.params.input, batch_size=1, num_workers=0)
    evaluated = predict(predictor.trained.model, loader, LOW_SCORE, False, predictor.trained.category_ids,
                        torch.device("cpu"), progress=False)
    first_id = evaluated.image_ids[0]
    expected = [r for r in evaluated.results["segm"] if r["image_id"] == first_id]
    info = loader.dataset.images[0]
    prediction = predictor.predict(loader.dataset.image_dir / info["file_name"])
    assert prediction.masks.shape[1:] == (info["height"], info["width"])
    records = predictor.coco_records(first_id, prediction)
    assert len(records) == len(expected) > 0
    for got, want in zip(records, expected):
        assert got["segmentation"] == want["segmentation"]
        assert got["category_id"] == want["category_id"] and got["score"] == pytest.approx(want["score"])


def test_onnx_export_refuses_mask_rcnn_in_one_line(resumed, tmp_path):
    from stages.export import main

    project = resumed[0]
    args = Namespace(model=project / "models/model.pt", size=None, out=tmp_path / "m.onnx", overwrite=False,
                     opset=None, format="onnx")
    with pytest.raises(PipelineError, match="ONNX export supports model.arch yolact only, this model is mask_rcnn"):
        main(None, None, args)
    assert not (tmp_path / "m.onnx").exists()


def test_one_ablation_cell_trains_and_scores_mask_rcnn(resumed):
    project, env = resumed[:2]
    run_stage(project, "ablate", "--pos-iou", "0.6", "--neg-iou", "0.5", "--scales", "base", "--seed", "0", env=env)
    cell = project / "reports/ablation/cells/p0.6-n0.5-base-s0"
    row = json.loads(Path(f"{cell}.json").read_text())
    assert (row["pos_iou"], row["neg_iou"], row["iterations"], row["test_images"]) == (0.6, 0.5, 4, 8)
    assert [point["iteration"] for point in row["val_curve"]] == [2, 4]
    assert 0 <= row["segm_AP"] <= 1 and 0 <= row["bbox_AP"] <= 1
    assert all(Path(f"{cell}.{t}.npz").is_file() for t in ("bbox", "segm"))


def test_a_yolact_only_key_stops_a_mask_rcnn_stage_with_exit_2(resumed):
    project, env = resumed[:2]
    proc = run_stage(project, "train", "--set", "loss.use_focal_loss=true", env=env, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: params: loss.use_focal_loss: applies to model.arch yolact only; keep its default "
                     "(false) with model.arch mask_rcnn"]


def test_the_mask_rcnn_network_is_the_one_built_from_a_model_file(resumed):
    from pipeline.models.loading import load_model
    from pipeline.models.networks import network_of

    trained = load_model(resumed[0] / "models/model.pt", torch.device("cpu"))
    assert isinstance(network_of(trained.model), MaskRCNNNetwork)
    assert len(read_label_map(resumed[0] / "data/prepared")) + 1 == trained.model.roi_heads.box_predictor.cls_score.out_features

"""Cross-field validation of typed params: :func:`validate` raises :class:`ConfigError` naming the dotted key."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pipeline.config.schema import (
    ARCH_ONLY_KEYS,
    ConfigError,
    Params,
    SYNTHETIC_MAX_IMAGES,
    SYNTHETIC_ROOT,
    SYNTHETIC_SPLITS,
    flatten,
)
from pipeline.config.paths import PRETRAINED_BY_STAGE, WEIGHTS_DIR, params_path


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # names that reach a shell command through dvc.yaml


# --------------------------------------------------------------------------------------------------
# Cross-field validation


def validate(params: Params, base_dir: Path | None = None) -> None:
    """Raise :class:`ConfigError` on the first semantic error; relative paths are taken from ``base_dir``
    (default: the working directory, :func:`pipeline.config.params_path`)."""
    data = params.data
    if data.source == "coco":
        if Path(data.root) == Path(SYNTHETIC_ROOT):
            raise ConfigError("data.root", f"{SYNTHETIC_ROOT} is the generated dataset; point it at a COCO root")
        if not params_path(data.root, base_dir).is_dir():
            raise ConfigError("data.root", f"directory not found: {data.root}")
    else:
        if Path(data.root) != Path(SYNTHETIC_ROOT):
            raise ConfigError("data.root", f"must be {SYNTHETIC_ROOT} (where the generate stage writes) "
                                           f"with data.source synthetic, got {data.root}")
    for key in ("train_split", "val_split", "test_split"):
        if not getattr(data, key):
            raise ConfigError(f"data.{key}", "must not be empty")
    for key in ("train_split", "val_split"):
        if data.test_split == getattr(data, key):
            raise ConfigError("data.test_split", f"must differ from data.{key} ({data.test_split}): "
                                                 "the test split is held out from training and model selection")
    if data.source == "synthetic":
        for key, name in SYNTHETIC_SPLITS.items():
            if getattr(data, key) != name:
                raise ConfigError(f"data.{key}", f"must be {name} with data.source synthetic, got {getattr(data, key)}")
    _positive("data.val_images", data.val_images)
    if data.max_images is not None:
        _positive("data.max_images", data.max_images)
    if data.categories is not None and not data.categories:
        raise ConfigError("data.categories", "must be null (all) or a non-empty list of names")
    _non_negative("data.num_workers", data.num_workers)
    syn = data.synthetic
    for name in ("train_images", "val_images", "test_images", "width", "height", "min_objects", "max_objects"):
        _positive(f"data.synthetic.{name}", getattr(syn, name))
    for name in ("train_images", "val_images", "test_images"):
        if getattr(syn, name) >= SYNTHETIC_MAX_IMAGES:
            raise ConfigError(f"data.synthetic.{name}", f"must be below {SYNTHETIC_MAX_IMAGES}")
    if syn.min_objects > syn.max_objects:
        raise ConfigError("data.synthetic.min_objects", "must not exceed data.synthetic.max_objects")
    _in_unit("data.synthetic.crowd_prob", syn.crowd_prob, lo_open=False)

    _positive("input.size", params.input.size)
    for key in ("mean", "std"):
        if len(getattr(params.input, key)) != 3:
            raise ConfigError(f"input.{key}", "must have 3 values (R, G, B)")
    if any(s <= 0 for s in params.input.std):
        raise ConfigError("input.std", "values must be positive")
    if params.input.augment.max_expand < 1:
        raise ConfigError("input.augment.max_expand", "must be >= 1")

    bb = params.model.backbone
    if bb.depth not in (18, 34, 50, 101, 152):
        raise ConfigError("model.backbone.depth", f"must be one of 18, 34, 50, 101, 152, got {bb.depth}")
    _positive("model.backbone.base_channels", bb.base_channels)
    if not -1 <= bb.frozen_stages <= 4:
        raise ConfigError("model.backbone.frozen_stages", "must be in -1..4")
    for key in ("strides", "dilations"):
        values = getattr(bb, key)
        if len(values) != 4 or any(v < 1 for v in values):
            raise ConfigError(f"model.backbone.{key}", "must be 4 positive integers, one per stage")
    if not bb.out_indices or sorted(set(bb.out_indices)) != bb.out_indices or not all(
        0 <= i <= 3 for i in bb.out_indices
    ):
        raise ConfigError("model.backbone.out_indices", "must be increasing stage indices in 0..3")
    if bb.pretrained is not None and bb.pretrained != PRETRAINED_BY_STAGE:
        # "pretrain" names a file the pretrain stage writes: a fresh clone has none yet, so it is not checked here
        _weights_file("model.backbone.pretrained", bb.pretrained, base_dir)
    if params.model.init_from is not None:
        _weights_file("model.init_from", params.model.init_from, base_dir)
        if bb.pretrained is not None:
            raise ConfigError("model.init_from", "sets every weight, the backbone's too: "
                                                 "set model.backbone.pretrained to null")

    fpn = params.model.fpn
    _positive("model.fpn.out_channels", fpn.out_channels)
    n_in = len(bb.out_indices)
    end = n_in if fpn.end_level == -1 else fpn.end_level
    if not 0 <= fpn.start_level < end <= n_in:
        raise ConfigError("model.fpn.start_level", f"start_level/end_level must select from {n_in} inputs")
    if fpn.num_outs < end - fpn.start_level:
        raise ConfigError("model.fpn.num_outs", "must be at least the number of selected inputs")
    _positive("model.head.num_prototypes", params.model.head.num_prototypes)

    anchors = params.anchors
    if len(anchors.scales) != fpn.num_outs or any(len(level) == 0 for level in anchors.scales):
        raise ConfigError(
            "anchors.scales", f"must be one non-empty list per FPN level ({fpn.num_outs} levels)"
        )
    if any(s <= 0 for level in anchors.scales for s in level):
        raise ConfigError("anchors.scales", "scales must be positive")
    if len({len(level) for level in anchors.scales}) != 1:
        raise ConfigError("anchors.scales", "every level needs the same number of scales (shared head)")
    if not anchors.aspect_ratios or any(r <= 0 for r in anchors.aspect_ratios):
        raise ConfigError("anchors.aspect_ratios", "must be a non-empty list of positive numbers")

    loss = params.loss
    _validate_thresholds("loss.pos_iou", loss.pos_iou, "loss.neg_iou", loss.neg_iou)
    _in_unit("loss.crowd_iou", loss.crowd_iou, hi_closed=True)
    _positive("loss.ohem_negpos_ratio", loss.ohem_negpos_ratio)
    _in_unit("loss.focal_alpha", loss.focal_alpha)
    _in_unit("loss.focal_init_pi", loss.focal_init_pi)
    _non_negative("loss.focal_gamma", loss.focal_gamma)
    for key in ("box_weight", "conf_weight", "mask_weight", "semantic_weight"):
        _non_negative(f"loss.{key}", getattr(loss, key))
    _positive("loss.masks_to_train", loss.masks_to_train)

    train = params.train
    for key in ("batch_size", "lr", "checkpoint_every", "log_every", "lr_gamma"):
        _positive(f"train.{key}", getattr(train, key))
    _non_negative("train.iterations", train.iterations)  # 0: save the initial weights (model.init_from) as they are
    _non_negative("train.warmup_iterations", train.warmup_iterations)
    _non_negative("train.eval_every", train.eval_every)
    if train.keep_best and not (train.eval_every and train.iterations):
        raise ConfigError("train.keep_best", "needs validation during training: set train.eval_every > 0 "
                                             "and train.iterations > 0")
    _positive("train.warmup_lr", train.warmup_lr)
    _non_negative("train.momentum", train.momentum)
    if train.momentum >= 1:
        raise ConfigError("train.momentum", f"must be below 1, got {train.momentum}")
    _non_negative("train.weight_decay", train.weight_decay)
    if train.grad_clip is not None:
        _positive("train.grad_clip", train.grad_clip)
    if train.lr_steps != sorted(train.lr_steps) or any(s <= 0 for s in train.lr_steps):
        raise ConfigError("train.lr_steps", "must be increasing positive iterations")
    if train.lr_schedule == "cosine" and train.lr_steps:
        raise ConfigError("train.lr_steps", "unused with train.lr_schedule: cosine; set it to []")
    if train.sync_bn and train.device == "cpu":
        raise ConfigError("train.sync_bn", "SyncBatchNorm needs CUDA; set it to false with train.device: cpu")

    ev = params.eval
    _positive("eval.batch_size", ev.batch_size)
    _in_unit("eval.score_threshold", ev.score_threshold, lo_open=False)
    _in_unit("eval.nms_iou", ev.nms_iou)
    _in_unit("eval.mask_threshold", ev.mask_threshold)
    _positive("eval.top_k", ev.top_k)
    _positive("eval.max_detections", ev.max_detections)
    _non_negative("eval.num_visualize", ev.num_visualize)
    if ev.bootstrap_resamples < 1000:
        raise ConfigError("eval.bootstrap_resamples", f"must be at least 1000, got {ev.bootstrap_resamples}")

    _validate_mask_rcnn(params)
    for arch, keys in ARCH_ONLY_KEYS.items():
        _keep_defaults(params, keys, arch)

    if not params.mlflow.experiment:
        raise ConfigError("mlflow.experiment", "must not be empty")

    abl = params.ablation
    if not abl.thresholds:
        raise ConfigError("ablation.thresholds", "must list at least one [pos_iou, neg_iou] pair")
    for i, pair in enumerate(abl.thresholds):
        key = f"ablation.thresholds[{i}]"
        if len(pair) != 2:
            raise ConfigError(key, "must be [pos_iou, neg_iou]")
        _validate_thresholds(f"{key}[0]", pair[0], f"{key}[1]", pair[1])
    for name in abl.scale_sets:
        if not IDENTIFIER.fullmatch(name):
            raise ConfigError("ablation.scale_sets", f"key {name!r} must be a plain identifier "
                                                     "(letters, digits, _; not starting with a digit)")
    for i, name in enumerate(abl.anchor_scales):
        if not IDENTIFIER.fullmatch(name):
            raise ConfigError(f"ablation.anchor_scales[{i}]", f"{name!r} must be a plain identifier "
                                                              "(letters, digits, _; not starting with a digit)")
    for name, scales in abl.scale_sets.items():
        key = f"ablation.scale_sets.{name}"
        if len(scales) != fpn.num_outs or any(len(level) == 0 for level in scales):
            raise ConfigError(key, f"must be one non-empty list per FPN level ({fpn.num_outs} levels)")
        if any(s <= 0 for level in scales for s in level):
            raise ConfigError(key, "scales must be positive")
        if len({len(level) for level in scales}) != 1:
            raise ConfigError(key, "every level needs the same number of scales (shared head)")
    if not abl.anchor_scales:
        raise ConfigError("ablation.anchor_scales", "must name at least one set of ablation.scale_sets")
    for i, name in enumerate(abl.anchor_scales):
        if name not in abl.scale_sets:
            raise ConfigError(f"ablation.anchor_scales[{i}]", f"'{name}' is not in ablation.scale_sets")
    pre = params.pretrain
    for key in ("iterations", "batch_size", "eval_every"):
        _positive(f"pretrain.{key}", getattr(pre, key))
    _positive("pretrain.lr", pre.lr)
    _non_negative("pretrain.weight_decay", pre.weight_decay)
    _non_negative("pretrain.warmup_iterations", pre.warmup_iterations)

    if abl.train.iterations is not None:
        _positive("ablation.train.iterations", abl.train.iterations)
    if abl.train.eval_every is not None:
        _non_negative("ablation.train.eval_every", abl.train.eval_every)
    if not abl.seeds or len(set(abl.seeds)) != len(abl.seeds):
        raise ConfigError("ablation.seeds", f"must be a non-empty list of distinct seeds, got {abl.seeds}")
    if abl.baseline is not None:
        cells = [grid_cell_name(p, n, s) for p, n in abl.thresholds for s in abl.anchor_scales]
        if abl.baseline not in cells:
            raise ConfigError("ablation.baseline", f"{abl.baseline!r} is not a cell of the grid ({', '.join(cells)})")


def grid_cell_name(pos_iou: float, neg_iou: float, scales: str) -> str:
    """The name of an ablation cell of the grid, e.g. ``p0.5-n0.4-base``."""
    return f"p{pos_iou:g}-n{neg_iou:g}-{scales}"


def _validate_mask_rcnn(params: Params) -> None:
    mr = params.model.mask_rcnn
    prefix = "model.mask_rcnn."
    _validate_thresholds(f"{prefix}rpn_fg_iou", mr.rpn_fg_iou, f"{prefix}rpn_bg_iou", mr.rpn_bg_iou)
    for key in ("rpn_positive_fraction", "box_positive_fraction", "rpn_nms_iou"):
        _in_unit(prefix + key, getattr(mr, key), hi_closed=True)
    for key in ("rpn_batch_size_per_image", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "box_batch_size_per_image",
                "representation_size", "mask_head_channels"):
        _positive(prefix + key, getattr(mr, key))
    if params.model.arch == "mask_rcnn" and params.model.fpn.num_outs < 2:
        raise ConfigError("model.fpn.num_outs", "must be at least 2 with model.arch mask_rcnn (RoIAlign pools from "
                                                "every level but the coarsest, which only the RPN sees)")


def _keep_defaults(params: Params, keys: tuple[str, ...], arch: str) -> None:
    """Keys of ``arch`` must keep their defaults under another ``model.arch``."""
    if params.model.arch == arch:
        return
    flat, defaults = flatten(params), flatten(Params())
    for key in keys:
        if flat[key] != defaults[key]:
            raise ConfigError(key, f"applies to model.arch {arch} only; keep its default ({json.dumps(defaults[key])}) "
                                   f"with model.arch {params.model.arch}")


def _validate_thresholds(pos_key: str, pos: float, neg_key: str, neg: float) -> None:
    _in_unit(pos_key, pos)
    _in_unit(neg_key, neg)
    if neg > pos:
        raise ConfigError(neg_key, f"must not exceed {pos_key} ({neg} > {pos})")


def _in_unit(key: str, value: float, lo_open: bool = True, hi_closed: bool = False) -> None:
    lo_ok = value > 0 if lo_open else value >= 0
    hi_ok = value <= 1 if hi_closed else value < 1
    if not (lo_ok and hi_ok):
        interval = ("(" if lo_open else "[") + "0, 1" + ("]" if hi_closed else ")")
        raise ConfigError(key, f"must be in {interval}, got {value}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(key, f"must be non-negative, got {value}")


def _weights_file(key: str, path: str, base_dir: Path | None) -> None:
    """A weights file must exist under ``weights/``, the directory the training stages declare as a dep."""
    weights_dir = os.path.abspath(params_path(WEIGHTS_DIR, base_dir))
    if not os.path.abspath(params_path(path, base_dir)).startswith(weights_dir + os.sep):
        raise ConfigError(key, f"must be a file under {WEIGHTS_DIR}/ (a declared input of the training stages), "
                               f"got {path}")
    if not params_path(path, base_dir).is_file():
        raise ConfigError(key, f"file not found: {path}")

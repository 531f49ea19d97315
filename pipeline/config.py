"""Typed, validated parameters.

`params.yaml` is parsed once into frozen dataclasses; every stage calls :func:`load` before doing any
work and passes on only the sections each function needs. Invalid input raises :class:`ConfigError`
naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
FPN_LEVELS = 5
SYNTHETIC_ROOT = "data/synthetic"  # the generate stage's output
SYNTHETIC_SPLITS = {"train_split": "train", "val_split": "val", "test_split": "test"}
SYNTHETIC_MAX_IMAGES = 10_000_000  # per split, so that synthetic image ids stay unique across splits
WEIGHTS_DIR = "weights"  # local weight files (model.backbone.pretrained, model.init_from); a dep of training
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # names that reach a shell command through dvc.yaml


class ConfigError(ValueError):
    """An invalid parameter; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"params: {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class SyntheticParams:
    train_images: int = 480
    val_images: int = 80
    test_images: int = 500
    width: int = 192
    height: int = 160
    min_objects: int = 2
    max_objects: int = 6
    crowd_prob: float = 0.06


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "coco"] = "synthetic"
    root: str = SYNTHETIC_ROOT           # synthetic: where the generate stage writes; coco: the COCO root
    train_split: str = "train"
    val_split: str = "val"               # COCO: train2017 carves val from the train split (val_images)
    test_split: str = "test"             # COCO: val2017, the reported numbers
    val_images: int = 500                # images carved from train_split for val when val_split is train_split
    categories: Optional[list[str]] = None
    max_images: Optional[int] = None
    keep_empty_train: bool = False
    strict: bool = False
    num_workers: int = 0
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class AugmentParams:
    photometric: bool = True
    expand: bool = True
    max_expand: float = 2.0
    random_crop: bool = True
    hflip: bool = True


@dataclass(frozen=True)
class InputParams:
    size: int = 550
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class BackboneParams:
    depth: int = 50
    base_channels: int = 64
    style: Literal["pytorch", "caffe"] = "pytorch"
    deep_stem: bool = False
    avg_down: bool = False
    frozen_stages: int = -1
    norm_eval: bool = False
    with_cp: bool = False
    zero_init_residual: bool = False
    strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    dilations: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])
    pretrained: Optional[str] = None


@dataclass(frozen=True)
class FPNParams:
    out_channels: int = 256
    start_level: int = 0
    end_level: int = -1
    num_outs: int = FPN_LEVELS
    add_extra_convs: Literal["on_input", "on_lateral", "on_output", "none"] = "on_output"
    relu_before_extra_convs: bool = False
    relu_on_outputs: bool = True
    upsample_mode: Literal["nearest", "bilinear"] = "bilinear"


@dataclass(frozen=True)
class HeadParams:
    num_prototypes: int = 32
    semantic_segmentation: bool = True


@dataclass(frozen=True)
class MaskRCNNParams:
    """torchvision's RPN and RoI heads (``model.arch: mask_rcnn``). The defaults are the CPU setting of
    ``params.yaml`` (160 px, a few objects per image: fewer proposals, RoIs and channels); torchvision's
    standard values are in ``configs/mask_rcnn_r50_fpn_coco.yaml``. The RoI heads' matching thresholds are
    ``loss.pos_iou`` / ``loss.neg_iou``."""

    rpn_fg_iou: float = 0.7              # an anchor is foreground from this IoU with a ground truth
    rpn_bg_iou: float = 0.3              # background below it (in between: ignored)
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN losses
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 1000  # best-scored anchors per FPN level before NMS (standard 2000)
    rpn_pre_nms_top_n_test: int = 500    # (standard 1000)
    rpn_post_nms_top_n_train: int = 500  # proposals per image after NMS (standard 2000)
    rpn_post_nms_top_n_test: int = 300   # (standard 1000)
    rpn_nms_iou: float = 0.7
    box_batch_size_per_image: int = 128  # RoIs sampled per image for the box and class losses (standard 512)
    box_positive_fraction: float = 0.25
    representation_size: int = 256       # width of the box head's two fully connected layers (standard 1024)
    mask_head_channels: int = 64         # width of the mask head's four 3x3 convs and its deconv (standard 256)


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["yolact", "mask_rcnn"] = "yolact"  # mask_rcnn: torchvision's Mask R-CNN on the same ResNet-FPN
    backbone: BackboneParams = field(default_factory=BackboneParams)
    fpn: FPNParams = field(default_factory=FPNParams)
    head: HeadParams = field(default_factory=HeadParams)
    init_from: Optional[str] = None      # a checkpoint of the original YOLACT under weights/ (pipeline.released)
    mask_rcnn: MaskRCNNParams = field(default_factory=MaskRCNNParams)


@dataclass(frozen=True)
class AnchorParams:
    scales: list[list[float]] = field(default_factory=lambda: [[24], [48], [96], [192], [384]])
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0, 0.5, 2.0])
    square: bool = False


@dataclass(frozen=True)
class LossParams:
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    crowd_iou: float = 0.7
    ohem_negpos_ratio: float = 3.0
    use_focal_loss: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_init_pi: float = 0.01
    box_weight: float = 1.5
    conf_weight: float = 1.0
    mask_weight: float = 6.125
    semantic_weight: float = 1.0
    masks_to_train: int = 100


@dataclass(frozen=True)
class TrainParams:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # auto: bf16 where the hardware has it
    channels_last: bool = False
    batch_size: int = 8
    iterations: int = 800_000
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9                # SGD momentum; AdamW's beta1
    weight_decay: float = 5e-4
    warmup_iterations: int = 500
    warmup_lr: float = 1e-4
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_steps: list[int] = field(default_factory=lambda: [280_000, 600_000, 700_000, 750_000])
    lr_gamma: float = 0.1
    grad_clip: Optional[float] = None
    checkpoint_every: int = 10_000
    log_every: int = 1
    eval_every: int = 0                  # validate on the val split every N iterations (0: off)
    keep_best: bool = False              # save the weights with the best val mask AP, not the last
    sync_bn: bool = False                # SyncBatchNorm across DDP processes (CUDA only)


@dataclass(frozen=True)
class EvalParams:
    batch_size: int = 8
    score_threshold: float = 0.05
    nms: Literal["fast", "standard"] = "fast"
    nms_iou: float = 0.5
    top_k: int = 200
    max_detections: int = 100
    mask_threshold: float = 0.5
    num_visualize: int = 4
    bootstrap_resamples: int = 1000  # image resamples of the 95% intervals of AP and of AP differences


@dataclass(frozen=True)
class MlflowParams:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "yolact"
    required: bool = False


@dataclass(frozen=True)
class AblationTrainParams:
    """Overrides of ``train.*`` for every ablation cell (None: as in ``train``)."""

    iterations: Optional[int] = None
    lr_steps: Optional[list[int]] = None
    warmup_iterations: Optional[int] = None
    eval_every: Optional[int] = None


@dataclass(frozen=True)
class AblationParams:
    """The grid swept by the ablate stage: threshold pairs x named anchor-scale sets."""

    thresholds: list[list[float]] = field(default_factory=lambda: [[0.5, 0.4], [0.6, 0.5]])
    anchor_scales: list[str] = field(default_factory=lambda: ["yolact"])
    scale_sets: dict[str, list[list[float]]] = field(
        default_factory=lambda: {"yolact": [[24], [48], [96], [192], [384]]}
    )
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: Optional[str] = None  # the cell differences are taken against, e.g. p0.5-n0.4-base; None: the first
    train: AblationTrainParams = field(default_factory=AblationTrainParams)


@dataclass(frozen=True)
class Params:
    seed: int = 0
    data: DataParams = field(default_factory=DataParams)
    input: InputParams = field(default_factory=InputParams)
    model: ModelParams = field(default_factory=ModelParams)
    anchors: AnchorParams = field(default_factory=AnchorParams)
    loss: LossParams = field(default_factory=LossParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    ablation: AblationParams = field(default_factory=AblationParams)


# Keys that only one model.arch reads and whose value changes what it computes. Under the other architecture
# each must keep its default, since another value would be silently ignored. (model.head.num_prototypes only
# sizes YOLACT's prototype head and is not checked.)
ARCH_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "yolact": (
        "model.init_from", "model.head.semantic_segmentation",
        "loss.crowd_iou", "loss.ohem_negpos_ratio", "loss.use_focal_loss", "loss.focal_alpha", "loss.focal_gamma",
        "loss.focal_init_pi", "loss.box_weight", "loss.conf_weight", "loss.mask_weight", "loss.semantic_weight",
        "loss.masks_to_train", "eval.nms", "eval.top_k",
    ),
    "mask_rcnn": tuple(f"model.mask_rcnn.{f.name}" for f in dataclasses.fields(MaskRCNNParams)),
}


# --------------------------------------------------------------------------------------------------
# Parsing


def load(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = ()) -> Params:
    """Read, override and validate ``params.yaml``.

    ``overrides`` are DVC-style ``"loss.pos_iou=0.6"`` strings; values are parsed as YAML.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    for override in overrides:
        _apply_override(raw, override)
    params = from_dict(raw)
    validate(params, base_dir=path.resolve().parent)
    return params


def from_dict(raw: dict[str, Any]) -> Params:
    """Build :class:`Params` from a nested dict, checking keys and types (no cross-field checks)."""
    return _build(Params, raw, "")


def to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def flatten(params: Any) -> dict[str, Any]:
    """``{"loss.pos_iou": 0.5, ...}``; lists and mappings stay whole leaves."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            else:
                out[key] = value

    walk(params, "")
    return out


def replace(params: Params, **dotted: Any) -> Params:
    """A copy of ``params`` with dotted keys replaced and re-validated, e.g. ``{"loss.pos_iou": 0.6}``."""
    raw = to_dict(params)
    for key, value in dotted.items():
        _set(raw, key.split("."), value, key)
    new = from_dict(raw)
    validate(new)
    return new


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(override, "override must look like key=value")
    _set(raw, key.strip().split("."), yaml.safe_load(text), key.strip())


def _set(raw: dict, parts: list[str], value: Any, key: str) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(key, f"'{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params"
    if not isinstance(raw, dict):
        raise ConfigError(where, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(dotted, f"unknown key{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise ConfigError(key, f"expected a non-empty mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported parameter type {tp} for {key}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------------
# Cross-field validation


def validate(params: Params, base_dir: Path = REPO_ROOT) -> None:
    """Raise :class:`ConfigError` on the first semantic error."""
    data = params.data
    if data.source == "coco":
        if Path(data.root) == Path(SYNTHETIC_ROOT):
            raise ConfigError("data.root", f"{SYNTHETIC_ROOT} is the generated dataset; point it at a COCO root")
        root = Path(data.root) if Path(data.root).is_absolute() else base_dir / data.root
        if not root.is_dir():
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
    if bb.pretrained is not None:
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


def _weights_file(key: str, path: str, base_dir: Path) -> None:
    """A weights file must exist under ``weights/``, the directory the training stages declare as a dep."""
    weights_dir = os.path.abspath(base_dir / WEIGHTS_DIR)
    if not os.path.abspath(_resolve(path, base_dir)).startswith(weights_dir + os.sep):
        raise ConfigError(key, f"must be a file under {WEIGHTS_DIR}/ (a declared input of the training stages), "
                               f"got {path}")
    if not _resolve(path, base_dir).is_file():
        raise ConfigError(key, f"file not found: {path}")


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def resolve_path(path: str, base_dir: Path = REPO_ROOT) -> Path:
    """A params path, relative paths taken from the repository root."""
    return _resolve(path, base_dir)

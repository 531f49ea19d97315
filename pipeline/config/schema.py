"""Typed, validated parameters.

`params.yaml` is parsed once into frozen dataclasses; every stage calls :func:`load` before doing any
work and passes on only the sections each function needs. Invalid input raises :class:`ConfigError`
naming the dotted key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


FPN_LEVELS = 5
SYNTHETIC_ROOT = "data/synthetic"  # the generate stage's output
SYNTHETIC_SPLITS = {"train_split": "train", "val_split": "val", "test_split": "test"}
SYNTHETIC_MAX_IMAGES = 10_000_000  # per split, so that synthetic image ids stay unique across splits


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
    allow_overlap: bool = False          # an image in two roles (by id, file or content) stops prepare unless true
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
    pretrained: Optional[str] = None     # null, "pretrain" (the pretrain stage's weights) or a file under weights/


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
    init_from: Optional[str] = None      # a checkpoint of the original YOLACT under weights/ (pipeline.models.yolact.released)
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
class PretrainParams:
    """The warm-start stage: the trunk trained on semantic segmentation of the train masks (AdamW, cosine)."""

    iterations: int = 600
    batch_size: int = 16
    lr: float = 0.002
    weight_decay: float = 0.05
    warmup_iterations: int = 50
    eval_every: int = 200                # val mean IoU every N iterations (and at the end)


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
    pretrain: PretrainParams = field(default_factory=PretrainParams)
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

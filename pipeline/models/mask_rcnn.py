"""Mask R-CNN (``model.arch: mask_rcnn``): torchvision's ``MaskRCNN`` around this project's ResNet-FPN.

torchvision provides the RPN, RoIAlign, the box and mask heads, their losses and their post-processing.
This module connects them to the pipeline:

- :class:`FeaturePyramid`: the ResNet and FPN of :func:`pipeline.models.backbone.trunk.build_trunk` as torchvision's
  backbone, with torchvision's level names: ``"0"``, ``"1"``, ... finest first, the coarsest ``"pool"``
  (P2..P5 and P6 of the standard R-50-FPN). RoIAlign pools from the numbered levels; the RPN sees all.
- :class:`PriorAnchors`: the RPN's anchors are YOLACT's priors, so both architectures start from the
  same boxes.
- :class:`PreparedInput`: the data path has already resized and normalised the images.
- :func:`torchvision_targets` and :func:`to_detections`: labels and box frames in both directions
  (torchvision's label 0 is the background, the pipeline's labels are 0-based classes).

Shapes at input size S, with C classes, F = ``model.fpn.out_channels`` and R RoIs:

- proposals: per image ``[n, 4]`` x1y1x2y2 in pixels, ``n <= rpn_post_nms_top_n_train`` (``_test`` in eval);
- box branch: RoIAlign ``[R, F, 7, 7]`` -> two fully connected layers ``[R, representation_size]`` ->
  class logits ``[R, C + 1]`` and class-specific boxes ``[R, 4 (C + 1)]``;
- mask branch: RoIAlign ``[R, F, 14, 14]`` -> four 3x3 convs ``[R, mask_head_channels, 14, 14]`` ->
  a 2x deconvolution and per-class logits ``[R, C + 1, 28, 28]``;
- eval output per image: ``boxes [N, 4]`` pixels, ``labels [N]`` in 1..C, ``scores [N]`` and
  ``masks [N, 1, S, S]``: probabilities pasted into the input frame.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from pipeline.models.priors.anchors import make_priors
from pipeline.models.backbone.resnet import ResNet
from pipeline.models.priors.boxes import point_form
from pipeline.config import Params
from pipeline.models.backbone.fpn import FPN
from pipeline.models.detections import Detections
from pipeline.models.backbone.trunk import build_trunk

BOX_ROI_SIZE, MASK_ROI_SIZE, SAMPLING_RATIO = 7, 14, 2  # torchvision's standard RoIAlign


class FeaturePyramid(nn.Module):
    """``images [B, 3, S, S]`` -> the FPN levels ``[B, F, H_l, W_l]`` as an ordered dict, finest first,
    keyed by :attr:`level_names`; ``out_channels`` = F, as torchvision's detectors require."""

    def __init__(self, body: ResNet, fpn: FPN):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.level_names = [str(i) for i in range(fpn.num_outs - 1)] + ["pool"]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.level_names, self.fpn(self.body(images))))


class PriorAnchors(AnchorGenerator):
    """The RPN's anchors: the priors of :func:`pipeline.models.priors.anchors.make_priors` (``anchors.scales`` in pixels
    at the input size per FPN level, ``anchors.aspect_ratios`` as w / h, ``anchors.square``), in pixels.

    torchvision's own generator would give other boxes from the same numbers: it centres anchors on
    ``x * stride`` rather than ``(x + 0.5) * stride``, rounds their sizes to whole pixels, reads an
    aspect ratio as h / w and has no square anchors. The parent's ``sizes`` and ``aspect_ratios`` only
    count the anchors per location (what sizes the RPN head).
    """

    def __init__(self, scales: Sequence[Sequence[float]], aspect_ratios: Sequence[float], square: bool = False):
        super().__init__(tuple(tuple(level) for level in scales), tuple(tuple(aspect_ratios) for _ in scales))
        self.scales = [list(level) for level in scales]
        self.ratios = list(aspect_ratios)
        self.square = square
        self._anchors: dict[tuple, Tensor] = {}

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Per image ``[P, 4]`` x1y1x2y2 pixels, ordered level, y, x, then the anchors of a location (the
        order of the RPN head's outputs); cached per input and feature sizes."""
        size = image_list.tensors.shape[-1]
        feature_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        key = (size, tuple(feature_sizes), device)
        if key not in self._anchors:
            priors = make_priors(size, feature_sizes, self.scales, self.ratios, self.square, device)
            self._anchors[key] = point_form(priors) * size
        return [self._anchors[key]] * len(image_list.image_sizes)


class PreparedInput(GeneralizedRCNNTransform):
    """Batches images that :func:`pipeline.data.transforms.build_transforms` has already resized to ``size x size``
    and normalised with ``input.mean`` / ``input.std``, exactly as YOLACT receives them.

    torchvision's transform would normalise again and resize to its 800-1333 px range keeping the aspect
    ratio. With mean 0, std 1 and min = max = ``size``, as configured here, both of its steps are
    identities on these images, so they are skipped instead of run as copies; and batching does not pad
    to a multiple of 32 (``size_divisible`` 1), so the FPN levels and the anchors are YOLACT's at that
    size. Detections come back in the ``size x size`` frame.
    """

    def __init__(self, size: int):
        super().__init__(min_size=size, max_size=size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                         size_divisible=1)
        self.size = size

    def normalize(self, image: Tensor) -> Tensor:
        return image

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Any]:
        height, width = image.shape[-2:]
        if (height, width) != (self.size, self.size):
            raise ValueError(f"Mask R-CNN was built for {self.size}x{self.size} images (input.size), got {height}x{width}")
        return image, target


def build_mask_rcnn(params: Params, num_classes: int) -> MaskRCNN:
    """Mask R-CNN from ``params.model`` (the trunk and ``model.mask_rcnn``) and ``params.anchors``; the RoI
    heads match proposals as foreground from IoU ``loss.pos_iou`` and as background below ``loss.neg_iou``
    (in between: not sampled). ``num_classes`` excludes background.

    Detection thresholds are not fixed here: :meth:`pipeline.models.networks.MaskRCNNNetwork.detect` sets them
    from ``eval.*`` on every call.
    """
    backbone, fpn = build_trunk(params)
    features = FeaturePyramid(backbone, fpn)
    roi_levels = features.level_names[:-1]
    mr = params.model.mask_rcnn
    channels, width = fpn.out_channels, mr.mask_head_channels
    model = MaskRCNN(
        features,
        rpn_anchor_generator=PriorAnchors(params.anchors.scales, params.anchors.aspect_ratios, params.anchors.square),
        rpn_pre_nms_top_n_train=mr.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=mr.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=mr.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=mr.rpn_post_nms_top_n_test,
        rpn_nms_thresh=mr.rpn_nms_iou,
        rpn_fg_iou_thresh=mr.rpn_fg_iou,
        rpn_bg_iou_thresh=mr.rpn_bg_iou,
        rpn_batch_size_per_image=mr.rpn_batch_size_per_image,
        rpn_positive_fraction=mr.rpn_positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(roi_levels, BOX_ROI_SIZE, SAMPLING_RATIO),
        box_head=TwoMLPHead(channels * BOX_ROI_SIZE**2, mr.representation_size),
        box_predictor=FastRCNNPredictor(mr.representation_size, num_classes + 1),
        box_fg_iou_thresh=params.loss.pos_iou,
        box_bg_iou_thresh=params.loss.neg_iou,
        box_batch_size_per_image=mr.box_batch_size_per_image,
        box_positive_fraction=mr.box_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(roi_levels, MASK_ROI_SIZE, SAMPLING_RATIO),
        mask_head=MaskRCNNHeads(channels, [width] * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1),
    )
    model.transform = PreparedInput(params.input.size)
    return model


def torchvision_targets(targets: Sequence[dict[str, Any]], size: int) -> list[dict[str, Tensor]]:
    """The pipeline's training targets (:class:`pipeline.data.dataset.InstanceDataset`: normalised boxes, 0-based
    labels, masks ``[G, S, S]``) in torchvision's format: pixel boxes, labels + 1, the same masks.

    Crowd regions (``crowd_boxes``) are dropped, as torchvision's COCO references drop crowd annotations:
    its matchers know no ignore regions. An image without instances is a valid all-background target.
    """
    return [{"boxes": t["boxes"] * size, "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]


def to_detections(outputs: Sequence[dict[str, Tensor]], size: int) -> list[Detections]:
    """torchvision's eval outputs at input size ``size`` in the frame of :func:`pipeline.models.yolact.postprocess.detect`:
    normalised boxes, 0-based labels, ``scores`` and mask probabilities ``[N, S, S]``, for
    :func:`pipeline.models.detections.to_image` to take to the original image as it does YOLACT's."""
    return [{"boxes": out["boxes"] / size, "scores": out["scores"], "labels": out["labels"] - 1,
             "masks": out["masks"][:, 0]} for out in outputs]

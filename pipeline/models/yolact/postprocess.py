"""From raw YOLACT head outputs to per-image detections: decode, score, NMS, assemble masks.

:func:`detect` works in the network's normalised frame (boxes in [0, 1], masks at prototype
resolution); :func:`to_image` maps one image's detections to its original pixel size.
The network input is a plain (aspect-ratio-changing) resize of the image, so normalised
coordinates scale to pixels by the original width and height.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from pipeline.models.priors.boxes import decode
from pipeline.models.detections import Detections, crop_masks


def class_scores(conf: Tensor, use_focal_loss: bool) -> Tensor:
    """Per-class probabilities ``[..., C]`` from logits ``conf [..., C+1]`` (background dropped).

    Softmax over all C+1 logits for the softmax/OHEM loss; per-class sigmoid when the model was
    trained with focal loss, whose background logit carries no meaning.
    """
    if use_focal_loss:
        return torch.sigmoid(conf[..., 1:])
    return torch.softmax(conf, dim=-1)[..., 1:]


def _top_k_per_class(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The ``top_k`` best candidates of every class: scores ``[C, K]`` (descending) and indices ``[C, K]``."""
    return scores.t().topk(min(top_k, scores.shape[0]), dim=1)


def _pairwise_iou(boxes: Tensor) -> Tensor:
    """IoU between all pairs of boxes within each batch: ``[C, K, 4] -> [C, K, K]``."""
    top_left = torch.max(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.min(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)
    union = area[:, :, None] + area[:, None, :] - inter
    return inter / union.clamp(min=torch.finfo(boxes.dtype).tiny)


def fast_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """YOLACT's Fast NMS, all classes at once.

    ``boxes [N, 4]`` x1y1x2y2 are shared by all classes, ``scores [N, C]``. Per class, the ``top_k``
    highest scores are kept as candidates and a candidate is dropped when its IoU with any
    higher-scored candidate of its class exceeds ``iou_threshold``, whether or not that one was itself
    dropped (the upper-triangular IoU matrix, which is what makes it parallel).
    Returns ``(box_index [M], labels [M], scores [M])``, grouped by class, by score within a class.
    """
    top_scores, top_index = _top_k_per_class(scores, top_k)
    iou = _pairwise_iou(boxes[top_index]).triu_(diagonal=1)
    keep = iou.amax(dim=1) <= iou_threshold
    labels = torch.arange(scores.shape[1], device=scores.device)[:, None].expand_as(top_index)
    return top_index[keep], labels[keep], top_scores[keep]


def standard_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy per-class NMS (:func:`torchvision.ops.batched_nms`) on the same ``top_k`` candidates per class.

    Same arguments and outputs as :func:`fast_nms`; the outputs are ordered by decreasing score.
    """
    top_scores, top_index = _top_k_per_class(scores, top_k)
    labels = torch.arange(scores.shape[1], device=scores.device)[:, None].expand_as(top_index)
    top_index, labels, top_scores = top_index.flatten(), labels.flatten(), top_scores.flatten()
    keep = batched_nms(boxes[top_index], top_scores, labels, iou_threshold)
    return top_index[keep], labels[keep], top_scores[keep]


def _empty_detections(proto: Tensor) -> Detections:
    height, width = proto.shape[:2]
    return {
        "boxes": proto.new_zeros((0, 4)),
        "scores": proto.new_zeros((0,)),
        "labels": torch.zeros((0,), dtype=torch.long, device=proto.device),
        "masks": proto.new_zeros((0, height, width)),
    }


@torch.no_grad()
def detect(
    loc: Tensor,
    conf: Tensor,
    mask_coeffs: Tensor,
    proto: Tensor,
    priors: Tensor,
    *,
    score_threshold: float,
    nms: Literal["fast", "standard"],
    nms_iou: float,
    top_k: int,
    max_detections: int,
    use_focal_loss: bool,
) -> list[Detections]:
    """Detections for a batch of network outputs.

    Inputs: ``loc [B, P, 4]``, ``conf [B, P, C+1]`` logits, ``mask_coeffs [B, P, k]``,
    ``proto [B, h, w, k]``, ``priors [P, 4]`` (cx, cy, w, h, normalised).
    Each image gets a dict, sorted by decreasing score, of at most ``max_detections``:
    ``boxes [N, 4]`` normalised x1y1x2y2 clipped to the image, ``scores [N]``, ``labels [N]``
    (0-based, background excluded) and ``masks [N, h, w]``: mask probabilities at prototype
    resolution, zero outside the box. Class scores at or below ``score_threshold`` are discarded
    before NMS (``nms``: ``"fast"`` or ``"standard"``, IoU threshold ``nms_iou``, ``top_k``
    candidates per class).
    """
    if nms not in ("fast", "standard"):
        raise ValueError(f"nms must be 'fast' or 'standard', got {nms!r}")
    suppress = fast_nms if nms == "fast" else standard_nms
    boxes = decode(loc, priors).clamp(0, 1)
    scores = class_scores(conf, use_focal_loss)
    results = []
    for image_boxes, image_scores, coeffs, image_proto in zip(boxes, scores, mask_coeffs, proto):
        # Priors with no class above the threshold can never produce a detection.
        candidates = (image_scores > score_threshold).any(dim=1).nonzero().squeeze(1)
        if candidates.numel() == 0:
            results.append(_empty_detections(image_proto))
            continue
        index, labels, kept_scores = suppress(
            image_boxes[candidates], image_scores[candidates], nms_iou, top_k
        )
        above = kept_scores > score_threshold
        index, labels, kept_scores = index[above], labels[above], kept_scores[above]
        order = kept_scores.argsort(descending=True)[:max_detections]
        index = candidates[index[order]]
        det_boxes = image_boxes[index]
        masks = torch.sigmoid(image_proto @ coeffs[index].t()).permute(2, 0, 1)
        results.append(
            {"boxes": det_boxes, "scores": kept_scores[order], "labels": labels[order], "masks": crop_masks(masks, det_boxes)}
        )
    return results

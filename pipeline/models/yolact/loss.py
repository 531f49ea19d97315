"""YOLACT's multibox loss: Smooth-L1 boxes, OHEM (or focal) classification, prototype masks, semantic maps.

Every term is computed in float32 (autocast off), whatever precision the model ran in. With ``N`` the
number of positive priors in the batch (averaged over DDP processes, at least 1), following YOLACT:

- box:      ``box_weight * sum SmoothL1(loc[pos], loc_t[pos]) / N``
- conf:     ``conf_weight * sum CE(conf[pos | hard negatives]) / N`` (OHEM at ``ohem_negpos_ratio``:1),
            or ``conf_weight * sum sigmoid_focal(conf[..., 1:], one_hot) over non-neutral priors / N``
- mask:     ``mask_weight * sum_instances (BCE summed over the GT box / GT box area in prototype pixels) / N``
            (YOLACT writes this as ``sum(BCE / area * h * w) * mask_weight / h / w``; the ``h * w`` cancel)
- semantic: ``semantic_weight * sum_images BCE-with-logits summed over the map / (h * w) / B``
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from pipeline.config import LossParams
from pipeline.models.priors.matching import match_batch
from pipeline.models.detections import crop_masks


def yolact_loss(
    predictions: dict[str, Tensor],
    targets: Sequence[dict[str, Any]],
    loss_params: LossParams,
    world_size: int = 1,
) -> dict[str, Tensor]:
    """Weighted loss terms ``box``, ``conf``, ``mask``, ``semantic`` and their sum ``total`` (scalars).

    ``predictions``: the model's train-mode dict (``loc [B, P, 4]``, ``conf [B, P, C+1]`` logits,
    ``mask [B, P, k]`` coefficients, ``priors [P, 4]``, ``proto [B, h, w, k]``, optional
    ``segm [B, C, h', w']``).
    ``targets``: per image ``boxes [G, 4]`` normalised xyxy, ``labels [G]`` 0-based, ``masks [G, S, S]``
    uint8, optional ``crowd_boxes [K, 4]``; ``G = 0`` is allowed. ``world_size > 1`` averages the
    positive count over the initialised process group so every process normalises alike.
    """
    device = predictions["loc"].device
    with torch.autocast(device.type, enabled=False):
        loc, conf, coeffs, proto = (predictions[k].float() for k in ("loc", "conf", "mask", "proto"))
        gt_boxes = [t["boxes"].float() for t in targets]
        gt_labels = [t["labels"].long() for t in targets]
        gt_masks = [t["masks"] for t in targets]
        with torch.no_grad():
            conf_t, matched_idx, loc_t = match_batch(
                gt_boxes, gt_labels, predictions["priors"], loss_params.pos_iou, loss_params.neg_iou,
                [t.get("crowd_boxes") for t in targets], loss_params.crowd_iou,
            )
        pos = conf_t > 0
        num_pos = _num_positives(pos, world_size)

        if loss_params.use_focal_loss:
            conf_sum = focal_conf_loss(conf, conf_t, loss_params.focal_alpha, loss_params.focal_gamma)
        else:
            conf_sum = ohem_conf_loss(conf, conf_t, loss_params.ohem_negpos_ratio)
        mask_sum = mask_loss(proto, coeffs, pos, matched_idx, gt_masks, gt_boxes, loss_params.masks_to_train)
        if "segm" in predictions:
            semantic = semantic_loss(predictions["segm"].float(), gt_masks, gt_labels)
        else:
            semantic = loc.new_zeros(())
        losses = {
            "box": loss_params.box_weight * box_loss(loc, loc_t, pos) / num_pos,
            "conf": loss_params.conf_weight * conf_sum / num_pos,
            "mask": loss_params.mask_weight * mask_sum / num_pos,
            "semantic": loss_params.semantic_weight * semantic,
        }
        losses["total"] = sum(losses.values())
    return losses


def _num_positives(pos: Tensor, world_size: int) -> Tensor:
    num_pos = pos.sum().float()
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_pos)
        num_pos = num_pos / world_size
    return num_pos.clamp(min=1.0)


def box_loss(loc: Tensor, loc_t: Tensor, pos: Tensor) -> Tensor:
    """Smooth-L1 summed over the positive priors: ``loc``, ``loc_t [B, P, 4]``, ``pos [B, P]``."""
    return F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")


def ohem_negatives(conf: Tensor, conf_t: Tensor, negpos_ratio: float) -> Tensor:
    """Hard negatives ``[B, P]`` (bool): per image the ``floor(ratio * positives)`` background priors
    (``conf_t == 0``; neutrals never) with the largest background loss ``logsumexp(conf) - conf[..., 0]``,
    or all of them when there are fewer. Ties go to the lower prior index.
    """
    with torch.no_grad():
        candidates = conf_t == 0
        background_loss = torch.logsumexp(conf, dim=-1) - conf[..., 0]
        background_loss = background_loss.masked_fill(~candidates, -float("inf"))
        order = background_loss.sort(dim=1, descending=True, stable=True).indices
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        num_neg = torch.minimum((negpos_ratio * (conf_t > 0).sum(1)).long(), candidates.sum(1))
        return rank < num_neg[:, None]


def ohem_conf_loss(conf: Tensor, conf_t: Tensor, negpos_ratio: float) -> Tensor:
    """Cross-entropy summed over positives and :func:`ohem_negatives`: ``conf [B, P, C+1]``, ``conf_t [B, P]``."""
    keep = (conf_t > 0) | ohem_negatives(conf, conf_t, negpos_ratio)
    return F.cross_entropy(conf[keep], conf_t[keep], reduction="sum")


def focal_conf_loss(conf: Tensor, conf_t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss summed over the foreground logits ``conf[..., 1:]`` of non-neutral priors.

    Targets are one-hot over the ``C`` classes (all zeros for background); the background logit is unused.
    """
    keep = conf_t >= 0
    targets = F.one_hot(conf_t[keep], conf.shape[-1])[:, 1:].to(conf.dtype)
    return sigmoid_focal_loss(conf[keep][:, 1:], targets, alpha=alpha, gamma=gamma, reduction="sum")


def mask_loss(
    proto: Tensor,
    coeffs: Tensor,
    pos: Tensor,
    matched_idx: Tensor,
    gt_masks: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    masks_to_train: int,
) -> Tensor:
    """Sum over trained positives of (mask BCE summed inside the matched GT box) / (box area in proto pixels).

    ``proto [B, h, w, k]``, ``coeffs [B, P, k]``, ``pos``/``matched_idx [B, P]``, per image
    ``gt_masks [G, S, S]`` and ``gt_boxes [G, 4]`` (normalised). Predicted masks are
    ``sigmoid(proto @ coeffs.T)``; GT masks are resized bilinearly to ``h x w`` and thresholded at 0.5.
    The loss outside the box (:func:`pipeline.models.detections.crop_masks`, as at inference) is zero. At most
    ``masks_to_train`` positives per image are used, evenly spaced in prior order (deterministic, and
    spread over all levels and instances like a random subset). Box areas are floored at one pixel.
    """
    batch, height, width, _ = proto.shape
    chosen = [_evenly_spaced(pos[b].nonzero().squeeze(1), masks_to_train) for b in range(batch)]
    counts = torch.tensor([len(c) for c in chosen], device=proto.device)
    if int(counts.sum()) == 0:
        return proto.new_zeros(())
    image = torch.repeat_interleave(torch.arange(batch, device=proto.device), counts)  # [n]
    prior = torch.cat(chosen)  # [n]
    slot = torch.arange(len(prior), device=proto.device) - (counts.cumsum(0) - counts)[image]  # within its image
    gt = _first_rows(gt_masks, proto.device)[image] + matched_idx[image, prior]  # rows of the stacked GT
    target = downsample_masks(torch.cat(list(gt_masks)), (height, width))[gt]  # [n, h, w]
    boxes = torch.cat(list(gt_boxes))[gt]
    # All images in one batched product: coefficients padded to the largest count, padding dropped after.
    padded = coeffs.new_zeros(batch, int(counts.max()), coeffs.shape[-1])
    padded[image, slot] = coeffs[image, prior]
    logits = torch.einsum("bhwk,bnk->bnhw", proto, padded)[image, slot]  # [n, h, w]
    bce = crop_masks(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), boxes)
    area = ((boxes[:, 2] - boxes[:, 0]) * width * (boxes[:, 3] - boxes[:, 1]) * height).clamp(min=1.0)
    return (bce.sum(dim=(1, 2)) / area).sum()


def _evenly_spaced(indices: Tensor, count: int) -> Tensor:
    """At most ``count`` of ``indices [n]``, evenly spaced (all of them when there are no more)."""
    if len(indices) <= count:
        return indices
    spaced = torch.linspace(0, len(indices) - 1, count, device=indices.device)
    return indices[spaced.round().long()]


def _first_rows(per_image: Sequence[Tensor], device: torch.device) -> Tensor:
    """``[B]``: where each image's rows start in ``torch.cat(per_image)``."""
    sizes = torch.tensor([len(t) for t in per_image], device=device)
    return sizes.cumsum(0) - sizes


def semantic_loss(segm: Tensor, gt_masks: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> Tensor:
    """BCE-with-logits of ``segm [B, C, h, w]`` against per-class union masks, summed, ``/ (h * w) / B``."""
    batch, num_classes, height, width = segm.shape
    sizes = torch.tensor([len(m) for m in gt_masks], device=segm.device)
    image = torch.repeat_interleave(torch.arange(batch, device=segm.device), sizes)
    masks = downsample_masks(torch.cat(list(gt_masks)), (height, width))  # [G, h, w], every image's
    union = segm.new_zeros(batch, num_classes, height, width)
    union.index_put_((image, torch.cat(list(gt_labels)).long()), masks.to(segm.dtype), accumulate=True)
    target = (union > 0).to(segm.dtype)
    return F.binary_cross_entropy_with_logits(segm, target, reduction="sum") / (height * width) / batch


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Binary masks ``[G, S, S]`` -> float ``[G, h, w]`` in {0, 1}: bilinear resize, then ``> 0.5``."""
    if len(masks) == 0:
        return torch.zeros(0, *size, device=masks.device)
    resized = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return (resized > 0.5).float()

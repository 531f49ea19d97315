"""Prior-to-ground-truth matching (YOLACT's ``match()``), one image or a padded batch at once.

Semantics, per image with ``G`` ground-truth boxes and ``P`` priors:

1. IoU of every GT box with every prior in point form; each prior takes its best GT.
2. Force-match, repeated ``G`` times: the (GT, prior) pair with the highest remaining IoU (ties: the
   lowest GT index, then the lowest prior index, as ``Tensor.max`` picks them) is assigned with
   overlap 2, then that GT's row and that prior's column leave the matrix.
3. ``label + 1`` where overlap >= ``pos_iou``, neutral ``-1`` below it, background ``0`` below ``neg_iou``.
4. A prior that is not positive and lies more than ``crowd_iou`` inside a crowd box
   (intersection over the prior's area) becomes neutral.
5. Box targets: :func:`pipeline.models.priors.boxes.encode` of the matched GT box.

:func:`match_batch` pads the GTs of a batch and never loops over GTs in Python. On CPUs it computes
IoU only for (GT, tile of priors) pairs whose bounding boxes overlap (every other IoU is exactly 0);
on GPUs, the whole matrix. It resolves the force-match in a few rounds that each assign every pair
the sequential loop is bound to take, re-examining only the GTs that lost their best prior. Its
outputs are identical to the sequential loop's (``tests/reference_match.py``), ties included.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from pipeline.models.priors.boxes import box_ioa, coords_iou, encode, point_form

# Consecutive priors (same level, neighbouring cells) grouped for the overlap test.
_TILE = 32
# Elements per dense IoU block (3 workspaces of this size).
_CHUNK = 1 << 18


def match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    pos_iou: float,
    neg_iou: float,
    crowd_boxes: Optional[Tensor] = None,
    crowd_iou: float = 0.7,
) -> tuple[Tensor, Tensor, Tensor]:
    """Match one image's GTs ``[G, 4]`` (normalised xyxy, labels ``[G]`` 0-based) to ``priors [P, 4]`` (cxcywh).

    Returns ``conf_t [P]`` long (-1 neutral, 0 background, label + 1 positive), ``matched_idx [P]``
    long (index into ``gt_boxes``; 0 where there is no GT) and ``loc_t [P, 4]`` (encoded targets;
    zeros where there is no GT). ``crowd_boxes [K, 4]`` may be None.
    """
    conf_t, matched_idx, loc_t = match_batch(
        [gt_boxes], [gt_labels], priors, pos_iou, neg_iou, [crowd_boxes], crowd_iou
    )
    return conf_t[0], matched_idx[0], loc_t[0]


def match_batch(
    gt_boxes_list: Sequence[Tensor],
    gt_labels_list: Sequence[Tensor],
    priors: Tensor,
    pos_iou: float,
    neg_iou: float,
    crowd_boxes_list: Optional[Sequence[Optional[Tensor]]] = None,
    crowd_iou: float = 0.7,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`match` for ``B`` images at once -> ``conf_t [B, P]``, ``matched_idx [B, P]``, ``loc_t [B, P, 4]``."""
    priors = priors.float()
    prior_boxes = point_form(priors)
    num_priors = priors.shape[0]
    batch = len(gt_boxes_list)
    device = priors.device
    counts = [len(boxes) for boxes in gt_boxes_list]
    if max(counts, default=0) > num_priors:
        raise ValueError(f"more ground-truth boxes ({max(counts)}) than priors ({num_priors})")

    gt_boxes, valid = _pad([boxes.float() for boxes in gt_boxes_list], device)
    gt_labels, _ = _pad([labels.long() for labels in gt_labels_list], device)
    has_gt = valid.any(1)

    if gt_boxes.shape[1] > 0:
        overlap, matched_idx, gt_best, gt_best_prior = _overlap_summaries(gt_boxes, valid, prior_boxes)
        _force_match(overlap, matched_idx, gt_best, gt_best_prior, gt_boxes, valid, prior_boxes)
        conf_t = gt_labels.gather(1, matched_idx) + 1
        conf_t[overlap < pos_iou] = -1
        conf_t[overlap < neg_iou] = 0
        matched = gt_boxes.gather(1, matched_idx[..., None].expand(-1, -1, 4))
        loc_t = encode(matched, priors)
    else:
        conf_t = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
        matched_idx = torch.zeros_like(conf_t)
        loc_t = torch.zeros(batch, num_priors, 4, device=device)
    conf_t[~has_gt] = 0
    loc_t[~has_gt] = 0

    if crowd_boxes_list is not None:
        crowds, crowd_valid = _pad(
            [torch.zeros(0, 4) if c is None else c.float() for c in crowd_boxes_list], device
        )
        if crowds.shape[1] > 0:
            inside = box_ioa(prior_boxes, crowds).masked_fill(~crowd_valid[:, None, :], 0.0).amax(2)
            conf_t[(conf_t <= 0) & (inside > crowd_iou)] = -1
    return conf_t, matched_idx, loc_t


def _pad(tensors: Sequence[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Stack ``[N_i, ...]`` tensors into zero-padded ``[B, max N_i, ...]`` and a ``[B, max N_i]`` validity mask."""
    longest = max((len(t) for t in tensors), default=0)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:])).to(device)
    valid = torch.zeros(len(tensors), longest, dtype=torch.bool, device=device)
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
        valid[i, : len(t)] = True
    return out, valid


def _overlap_summaries(
    gt_boxes: Tensor, valid: Tensor, prior_boxes: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row and column maxima of the ``[B, G, P]`` IoU matrix, with ``Tensor.max``'s tie rule.

    Returns each prior's best IoU and GT ``[B, P]`` and each GT's best IoU and prior ``[B, G]``
    (first index among ties, so all-zero rows and columns give index 0). GPUs compute the whole
    matrix; on CPUs that costs far more than the sparse version.
    """
    if gt_boxes.device.type == "cpu":
        return _tiled_summaries(gt_boxes, valid, prior_boxes)
    return _dense_summaries(gt_boxes, prior_boxes)


def _dense_summaries(gt_boxes: Tensor, prior_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_overlap_summaries` from the whole matrix; padding GTs are zero boxes (IoU 0) after the real ones."""
    iou = coords_iou(gt_boxes.permute(2, 0, 1)[..., None], prior_boxes.T[:, None, None, :])  # [B, G, P]
    scratch = torch.empty_like(iou)
    overlap, matched_idx = _max_first(iou, 1, scratch)
    gt_best, gt_best_prior = _max_first(iou, 2, scratch)
    return overlap, matched_idx, gt_best, gt_best_prior


def _tiled_summaries(
    gt_boxes: Tensor, valid: Tensor, prior_boxes: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_overlap_summaries` computing only the IoUs that can be non-zero.

    Priors are cut into tiles of ``_TILE`` consecutive priors; each (image, tile) unit is compared with
    the GTs that overlap the tile's bounding box (every other IoU is exactly 0). Units are bucketed by
    that GT count so that each bucket is one dense ``[units, GTs, _TILE]`` computation.
    """
    batch, num_gt, _ = gt_boxes.shape
    num_priors = len(prior_boxes)
    num_tiles = -(-num_priors // _TILE)
    # Pad with copies of the last prior: they never change a maximum, and lose its ties.
    padded = torch.cat([prior_boxes, prior_boxes[-1:].expand(num_tiles * _TILE - num_priors, 4)])
    tiles = padded.view(num_tiles, _TILE, 4).permute(2, 0, 1).contiguous()  # [4, T, _TILE]
    tile_lo, tile_hi = tiles[:2].amin(2), tiles[2:].amax(2)  # [2, T]

    corners = gt_boxes.permute(2, 0, 1)[:, :, None, :]  # [4, B, 1, G]
    hits = valid[:, None, :] & (corners[0] < tile_hi[0, :, None]) & (corners[1] < tile_hi[1, :, None])
    hits &= (corners[2] > tile_lo[0, :, None]) & (corners[3] > tile_lo[1, :, None])  # [B, T, G]
    hits = hits.view(batch * num_tiles, num_gt)
    count = hits.sum(1)
    # Per unit, the GTs that hit it in ascending order; the slots after them repeat GT 0, harmlessly.
    unit, hit_gt = hits.nonzero(as_tuple=True)
    rank = torch.arange(len(unit), device=unit.device) - (count.cumsum(0) - count)[unit]
    slots = torch.zeros(len(hits), int(count.max()), dtype=torch.long, device=unit.device)
    slots[unit, rank] = hit_gt

    overlap = gt_boxes.new_zeros(batch * num_tiles, _TILE)
    matched_idx = torch.zeros_like(overlap, dtype=torch.long)
    buckets = _buckets(count, num_gt)
    # One workspace for all chunks: fresh large tensors per operation cost more than the arithmetic.
    size = max((min(len(units), _units_per_chunk(width)) * width * _TILE for units, width in buckets), default=0)
    workspace = [gt_boxes.new_empty(size) for _ in range(3)]
    rows, row_best, row_prior = [], [], []
    for units, width in buckets:
        for chunk in units.split(_units_per_chunk(width)):
            gts = slots[chunk, :width]  # [U, K]
            img, tile = chunk // num_tiles, chunk % num_tiles
            boxes = gt_boxes[img[:, None], gts].permute(2, 0, 1).contiguous()[..., None]  # [4, U, K, 1]
            shape = (len(chunk), width, _TILE)
            iou, tmp, tmp2 = (w[: math.prod(shape)].view(shape) for w in workspace)
            coords_iou(boxes, tiles[:, tile, None, :], out=iou, scratch=(tmp, tmp2))

            best, slot = _max_first(iou, 1, tmp)
            overlap[chunk] = best
            matched_idx[chunk] = torch.where(best > 0, gts.gather(1, slot), 0)
            best, offset = _max_first(iou, 2, tmp)
            rows.append((img[:, None] * num_gt + gts).flatten())
            row_best.append(best.flatten())
            row_prior.append((tile[:, None] * _TILE + offset).flatten())

    # Per GT: its best IoU, then the lowest prior index reaching it.
    gt_best = gt_boxes.new_zeros(batch * num_gt)
    gt_best_prior = torch.zeros(batch * num_gt, dtype=torch.long, device=gt_boxes.device)
    if rows:
        rows, row_best, row_prior = torch.cat(rows), torch.cat(row_best), torch.cat(row_prior).double()
        gt_best.scatter_reduce_(0, rows, row_best, "amax")
        first = torch.full_like(gt_best, float("inf"), dtype=torch.double)
        first.scatter_reduce_(0, rows, row_prior.masked_fill(row_best != gt_best[rows], float("inf")), "amin")
        gt_best_prior = torch.where(gt_best > 0, first, 0).long()
    return (
        overlap.view(batch, -1)[:, :num_priors].contiguous(),
        matched_idx.view(batch, -1)[:, :num_priors].contiguous(),
        gt_best.view(batch, num_gt),
        gt_best_prior.view(batch, num_gt),
    )


def _buckets(count: Tensor, num_gt: int) -> list[tuple[Tensor, int]]:
    """Units grouped by GT count in ``(2^(i-1), 2^i]``, each with its largest count: ``[(units, width)]``."""
    buckets = []
    lower, upper = 0, 1
    while lower < num_gt:
        units = ((count > lower) & (count <= upper)).nonzero().squeeze(1)
        if len(units):
            buckets.append((units, int(count[units].max())))
        lower, upper = upper, 2 * upper
    return buckets


def _units_per_chunk(width: int) -> int:
    return max(1, _CHUNK // (width * _TILE))


def _max_first(values: Tensor, dim: int, scratch: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``values.max(dim)`` (first index among ties) via ``amax``, which is much faster on CPU.

    ``scratch`` is an optional float workspace of ``values``' shape.
    """
    best = values.amax(dim, keepdim=True)
    size = values.shape[dim]
    shape = [1] * values.dim()
    shape[dim] = size
    countdown = torch.arange(size, 0, -1, dtype=values.dtype, device=values.device).view(shape)
    ties = torch.eq(values, best, out=torch.empty_like(values) if scratch is None else scratch)
    return best.squeeze(dim), size - ties.mul_(countdown).amax(dim).long()


def _force_match(
    overlap: Tensor,
    matched_idx: Tensor,
    gt_best: Tensor,
    gt_best_prior: Tensor,
    gt_boxes: Tensor,
    valid: Tensor,
    prior_boxes: Tensor,
) -> None:
    """Give every GT its best remaining prior as the sequential loop does; updates ``overlap``/``matched_idx``.

    The loop is greedy matching: it takes (GT, prior) pairs in the order (IoU desc, GT asc, prior asc)
    whenever both are still free. A pair that comes first in that order among all pairs sharing its GT
    or its prior ("dominant": the prior is the GT's best free prior, and no other free GT beats the GT
    on that prior) is taken by the loop whatever happens elsewhere, so all dominant pairs are assigned
    at once, round after round (each round has at least one: the first remaining pair). GTs whose best
    prior was taken get their best recomputed over the free priors.
    """
    num_gt = valid.shape[1]
    gts = gt_boxes.permute(2, 0, 1)[:, :, None, :]  # [4, B, 1, G]
    priors = prior_boxes.T[:, None, :].contiguous()  # [4, 1, P]
    active = valid.clone()
    taken = torch.zeros_like(overlap, dtype=torch.bool)
    index = torch.arange(num_gt, device=valid.device)
    earlier = index[None, :] < index[:, None]  # [g, g']: g' < g
    while active.any():
        # IoU of every GT g' with each GT g's best prior: [B, g, g'].
        contested = coords_iou(gts, prior_boxes[gt_best_prior].permute(2, 0, 1)[..., None])
        best = gt_best[..., None]
        beaten = ((contested > best) | ((contested == best) & earlier)) & active[:, None, :]
        dominant = active & ~beaten.any(2)

        img, gt = dominant.nonzero(as_tuple=True)
        column = gt_best_prior[img, gt]
        overlap[img, column] = 2.0
        matched_idx[img, column] = gt
        taken[img, column] = True
        active[img, gt] = False

        img, gt = (active & taken.gather(1, gt_best_prior)).nonzero(as_tuple=True)
        if len(img):
            rows = coords_iou(gt_boxes[img, gt].T[..., None], priors).masked_fill_(taken[img], -1.0)
            gt_best[img, gt], gt_best_prior[img, gt] = _max_first(rows, 1)

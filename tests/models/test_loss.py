import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.models.priors.anchors import make_priors
from pipeline import config
from pipeline.config import LossParams
from pipeline.models.yolact.loss import (
    box_loss,
    downsample_masks,
    focal_conf_loss,
    mask_loss,
    ohem_conf_loss,
    ohem_negatives,
    semantic_loss,
    yolact_loss,
)
from pipeline.models.yolact.model import build_model

REPO = Path(__file__).resolve().parents[2]


def test_ohem_selects_ratio_times_positives_hardest_non_neutral_negatives():
    g = torch.Generator().manual_seed(0)
    conf = torch.randn(2, 40, 5, generator=g) * 3
    conf_t = torch.zeros(2, 40, dtype=torch.long)
    conf_t[0, [3, 17]] = torch.tensor([2, 4])  # 2 positives -> 6 negatives
    conf_t[0, 20:30] = -1  # neutrals, never chosen whatever their loss
    conf[0, 25, 0] = -50.0  # the hardest prior of all is neutral
    conf_t[1, :36] = 1  # 36 positives -> 108 wanted, only 4 background priors exist
    neg = ohem_negatives(conf, conf_t, 3)
    assert not neg[0, 20:30].any() and not neg[conf_t > 0].any()

    background_loss = torch.logsumexp(conf, -1) - conf[..., 0]
    candidates0 = [p for p in range(40) if conf_t[0, p] == 0]
    hardest0 = sorted(candidates0, key=lambda p: -background_loss[0, p].item())[:6]
    assert set(neg[0].nonzero().squeeze(1).tolist()) == set(hardest0)
    assert neg[1].nonzero().squeeze(1).tolist() == [36, 37, 38, 39]
    # A fractional ratio floors; an image without positives trains no negatives.
    assert ohem_negatives(conf, conf_t, 2.5)[0].sum() == 5
    assert not ohem_negatives(conf[:1], torch.zeros(1, 40, dtype=torch.long), 3).any()

    expected = F.cross_entropy(conf[(conf_t > 0) | neg], conf_t[(conf_t > 0) | neg], reduction="sum")
    torch.testing.assert_close(ohem_conf_loss(conf, conf_t, 3), expected)


def test_focal_equals_torchvision_and_the_formula():
    g = torch.Generator().manual_seed(1)
    conf = torch.randn(2, 30, 4, generator=g)
    conf_t = torch.randint(-1, 4, (2, 30), generator=g)
    keep = conf_t >= 0
    one_hot = torch.zeros(int(keep.sum()), 3)
    labels = conf_t[keep]
    one_hot[labels > 0, labels[labels > 0] - 1] = 1
    expected = sigmoid_focal_loss(conf[keep][:, 1:], one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(focal_conf_loss(conf, conf_t, 0.25, 2.0), expected)

    p = torch.sigmoid(conf[keep][:, 1:])
    p_t = torch.where(one_hot == 1, p, 1 - p)
    alpha_t = torch.where(one_hot == 1, 0.25, 0.75)
    formula = (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).sum()
    torch.testing.assert_close(focal_conf_loss(conf, conf_t, 0.25, 2.0), formula)


def test_box_loss_is_smooth_l1_over_positives():
    loc = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.5, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    loc_t = torch.zeros(1, 3, 4)
    pos = torch.tensor([[True, True, False]])
    torch.testing.assert_close(box_loss(loc, loc_t, pos), torch.tensor(1.5 + 0.125))


def block_masks(blocks: torch.Tensor) -> torch.Tensor:
    """``[G, h, w]`` {0, 1} -> uint8 ``[G, 2h, 2w]``, each value a 2x2 block (resizes back exactly)."""
    return blocks.repeat_interleave(2, 1).repeat_interleave(2, 2).to(torch.uint8)


def test_downsample_masks_thresholds_the_bilinear_average():
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :2, :2] = 1  # a full 2x2 block -> 1
    mask[0, 2, 2:] = 1  # half a block -> 0.5, not above the threshold
    assert downsample_masks(mask, (2, 2)).tolist() == [[[1.0, 0.0], [0.0, 0.0]]]
    assert downsample_masks(torch.zeros(0, 4, 4, dtype=torch.uint8), (2, 2)).shape == (0, 2, 2)


def test_mask_loss_equals_direct_per_instance_computation():
    g = torch.Generator().manual_seed(2)
    h = w = 4
    proto = torch.randn(1, h, w, 2, generator=g)
    coeffs = torch.tanh(torch.randn(1, 5, 2, generator=g))
    blocks = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
                           [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]]], dtype=torch.float)
    gt_masks = [block_masks(blocks)]
    gt_boxes = [torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.25, 1.0, 0.75]])]
    pos = torch.tensor([[True, False, True, True, False]])
    matched_idx = torch.tensor([[0, 0, 1, 0, 1]])

    expected = 0.0
    for p in (0, 2, 3):
        gt = int(matched_idx[0, p])
        x1, y1, x2, y2 = gt_boxes[0][gt].tolist()
        bce_sum = 0.0
        for i in range(h):
            for j in range(w):
                # A pixel counts when its square overlaps the box.
                if (j + 1) / w > x1 and j / w < x2 and (i + 1) / h > y1 and i / h < y2:
                    logit = float(proto[0, i, j] @ coeffs[0, p])
                    prob = 1 / (1 + math.exp(-logit))
                    target = float(blocks[gt, i, j])
                    bce_sum -= target * math.log(prob) + (1 - target) * math.log(1 - prob)
        expected += bce_sum / ((x2 - x1) * w * (y2 - y1) * h)
    actual = mask_loss(proto, coeffs, pos, matched_idx, gt_masks, gt_boxes, masks_to_train=100)
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-5, atol=1e-6)

    # masks_to_train keeps an evenly spaced subset of the positives: the first and last here.
    two = mask_loss(proto, coeffs, pos, matched_idx, gt_masks, gt_boxes, masks_to_train=2)
    only = torch.tensor([[True, False, False, True, False]])
    torch.testing.assert_close(two, mask_loss(proto, coeffs, only, matched_idx, gt_masks, gt_boxes, 100))


def test_mask_loss_of_a_batch_is_the_sum_of_its_images():
    # Images with 3, 0 and 7 positives: the batched product pads to the largest count and must drop the padding.
    g = torch.Generator().manual_seed(4)
    proto = torch.randn(3, 6, 6, 4, generator=g, requires_grad=True)
    coeffs = torch.randn(3, 9, 4, generator=g, requires_grad=True)
    pos = torch.zeros(3, 9, dtype=torch.bool)
    pos[0, [1, 4, 8]] = True
    pos[2, :7] = True
    matched_idx = torch.randint(0, 2, (3, 9), generator=g)
    gt_masks = [(torch.rand(2, 12, 12, generator=g) > 0.5).to(torch.uint8), torch.zeros(0, 12, 12, dtype=torch.uint8),
                (torch.rand(2, 12, 12, generator=g) > 0.5).to(torch.uint8)]
    gt_boxes = [torch.tensor([[0.0, 0.1, 0.6, 0.7], [0.2, 0.2, 1.0, 0.9]]), torch.zeros(0, 4),
                torch.tensor([[0.1, 0.0, 0.5, 0.5], [0.3, 0.4, 0.9, 1.0]])]
    batched = mask_loss(proto, coeffs, pos, matched_idx, gt_masks, gt_boxes, masks_to_train=5)
    per_image = sum(mask_loss(proto[b:b + 1], coeffs[b:b + 1], pos[b:b + 1], matched_idx[b:b + 1], gt_masks[b:b + 1],
                              gt_boxes[b:b + 1], masks_to_train=5) for b in range(3))
    torch.testing.assert_close(batched, per_image)
    grads = torch.autograd.grad(batched, (proto, coeffs))
    for grad, expected in zip(grads, torch.autograd.grad(per_image, (proto, coeffs))):
        torch.testing.assert_close(grad, expected)
    assert grads[1][1].abs().sum() == 0 and grads[1][0, 0].abs().sum() == 0  # no positives, no gradient


def test_semantic_loss_uses_per_class_unions():
    segm = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    blocks = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[1, 1], [0, 0]]], dtype=torch.float)
    gt_masks = [block_masks(blocks), torch.zeros(0, 4, 4, dtype=torch.uint8)]
    gt_labels = [torch.tensor([2, 2, 0]), torch.zeros(0, dtype=torch.long)]
    target = torch.zeros(2, 3, 2, 2)
    target[0, 2] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target[0, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(segm, target, reduction="sum") / 4 / 2
    torch.testing.assert_close(semantic_loss(segm, gt_masks, gt_labels), expected)


def synthetic_batch(num_gts, size=64, num_classes=3, k=4, seed=0):
    """Random predictions shaped like the model's, for ``len(num_gts)`` images, and matching targets."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors(size, [(8, 8), (4, 4), (2, 2)], [[8], [20], [40]], [1.0, 0.5, 2.0])
    batch, p = len(num_gts), len(priors)
    predictions = {
        "loc": torch.randn(batch, p, 4, generator=g),
        "conf": torch.randn(batch, p, num_classes + 1, generator=g),
        "mask": torch.tanh(torch.randn(batch, p, k, generator=g)),
        "priors": priors,
        "proto": torch.relu(torch.randn(batch, size // 4, size // 4, k, generator=g)),
        "segm": torch.randn(batch, num_classes, size // 8, size // 8, generator=g),
    }
    targets = []
    for n in num_gts:
        xy = torch.randint(0, size // 2, (n, 2), generator=g)
        wh = torch.randint(4, size // 2, (n, 2), generator=g)
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            masks[i, y1:y2, x1:x2] = 1
        targets.append({
            "boxes": boxes.float() / size,
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "masks": masks,
            "crowd_boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]]) if n % 2 else torch.zeros(0, 4),
        })
    return predictions, targets


def test_yolact_loss_terms_weights_and_empty_images():
    predictions, targets = synthetic_batch([3, 0, 5])
    params = LossParams()
    losses = yolact_loss(predictions, targets, params)
    assert set(losses) == {"box", "conf", "mask", "semantic", "total"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert all(losses[k] > 0 for k in ("box", "conf", "mask", "semantic"))
    torch.testing.assert_close(losses["total"], sum(losses[k] for k in ("box", "conf", "mask", "semantic")))
    doubled = yolact_loss(predictions, targets, replace(params, box_weight=3.0, mask_weight=0.0))
    torch.testing.assert_close(doubled["box"], 2 * losses["box"])
    assert doubled["mask"] == 0
    focal = yolact_loss(predictions, targets, replace(params, use_focal_loss=True))
    assert torch.isfinite(focal["conf"]) and focal["conf"] != losses["conf"]

    # No ground truth anywhere: every term stays finite (no positives, so no OHEM negatives either).
    predictions, targets = synthetic_batch([0, 0])
    for use_focal_loss in (False, True):
        losses = yolact_loss(predictions, targets, replace(params, use_focal_loss=use_focal_loss))
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["box"] == 0 and losses["mask"] == 0
    del predictions["segm"]
    assert yolact_loss(predictions, targets, params)["semantic"] == 0


def test_yolact_loss_computes_in_float32_under_bf16():
    predictions, targets = synthetic_batch([4, 2], seed=5)
    low = {k: (v.bfloat16() if k != "priors" else v) for k, v in predictions.items()}
    reference = yolact_loss({k: v.float() for k, v in low.items()}, targets, LossParams())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = yolact_loss(low, targets, LossParams())
    for key in reference:
        assert losses[key].dtype == torch.float32
        torch.testing.assert_close(losses[key], reference[key])


def test_yolact_loss_trains_the_real_model():
    # from scratch: the default warm start is a pretrain-stage output a fresh clone does not have
    params = config.replace(config.load(REPO / "params.yaml"), **{"model.backbone.pretrained": None})
    torch.manual_seed(0)
    model = build_model(params, num_classes=3).train()
    size = params.input.size
    _, targets = synthetic_batch([2, 0], size=size, num_classes=3)
    predictions = model(torch.randn(2, 3, size, size))
    losses = yolact_loss(predictions, targets, params.loss)
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.head.mask_layer.weight.grad.abs().sum() > 0  # the mask loss reaches the coefficients

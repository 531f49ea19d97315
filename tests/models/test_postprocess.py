import math

import pytest
import torch

from pipeline.models.yolact.postprocess import class_scores, detect, fast_nms, standard_nms
from pipeline.models.detections import crop_masks, to_image

NMS = {"fast": fast_nms, "standard": standard_nms}

# A chain along x (height 10): IoU(A, B) = IoU(B, C) = 8/12, IoU(A, C) = 6/14; D is far away.
CHAIN = torch.tensor(
    [[0.0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10], [50, 50, 60, 60]]
)
CHAIN_SCORES = torch.tensor([[0.9], [0.8], [0.7], [0.6]])


def as_set(index, labels):
    return set(zip(index.tolist(), labels.tolist()))


def test_class_scores_softmax_drops_background_and_focal_uses_sigmoid():
    conf = torch.tensor([[2.0, 0.0, 1.0]])
    softmax = torch.softmax(conf, dim=-1)
    torch.testing.assert_close(class_scores(conf, use_focal_loss=False), softmax[:, 1:])
    torch.testing.assert_close(class_scores(conf, use_focal_loss=True), torch.sigmoid(conf[:, 1:]))


def test_fast_nms_suppresses_with_already_suppressed_boxes():
    index, labels, scores = fast_nms(CHAIN, CHAIN_SCORES, iou_threshold=0.5, top_k=10)
    # B is suppressed by A, and (unlike greedy NMS) C by B although B itself was dropped.
    assert as_set(index, labels) == {(0, 0), (3, 0)}
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.6]))


def test_standard_nms_only_suppresses_with_kept_boxes():
    index, labels, scores = standard_nms(CHAIN, CHAIN_SCORES, iou_threshold=0.5, top_k=10)
    assert index.tolist() == [0, 2, 3]
    assert labels.tolist() == [0, 0, 0]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))


@pytest.mark.parametrize("nms", ["fast", "standard"])
def test_nms_iou_threshold_is_strict_and_honoured(nms):
    two = CHAIN[:2]
    scores = CHAIN_SCORES[:2]
    assert NMS[nms](two, scores, iou_threshold=0.7, top_k=10)[0].tolist() == [0, 1]
    assert NMS[nms](two, scores, iou_threshold=0.6, top_k=10)[0].tolist() == [0]
    # Identical boxes have IoU 1: kept only at a threshold of 1.
    same = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]])
    assert len(NMS[nms](same, scores, iou_threshold=0.99, top_k=10)[0]) == 1


@pytest.mark.parametrize("nms", ["fast", "standard"])
def test_nms_is_per_class(nms):
    # Class 1 prefers B: it survives there while A survives in class 0.
    scores = torch.cat([CHAIN_SCORES, torch.tensor([[0.1], [0.9], [0.1], [0.1]])], dim=1)
    index, labels, _ = NMS[nms](CHAIN[:2], scores[:2], iou_threshold=0.5, top_k=10)
    assert as_set(index, labels) == {(0, 0), (1, 1)}


@pytest.mark.parametrize("nms", ["fast", "standard"])
def test_nms_top_k_per_class(nms):
    boxes = torch.tensor([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(5)])  # disjoint
    scores = torch.tensor([[0.1, 0.5], [0.9, 0.4], [0.3, 0.3], [0.7, 0.2], [0.5, 0.1]])
    index, labels, _ = NMS[nms](boxes, scores, iou_threshold=0.5, top_k=2)
    assert as_set(index, labels) == {(1, 0), (3, 0), (0, 1), (1, 1)}


def make_outputs(priors, class_logits, coeffs, proto):
    """Batch-of-one network outputs whose boxes decode exactly to ``priors``."""
    num = priors.shape[0]
    background = torch.zeros(num, 1)
    return {
        "loc": torch.zeros(1, num, 4),
        "conf": torch.cat([background, class_logits], dim=1)[None],
        "mask_coeffs": coeffs[None],
        "proto": proto[None],
        "priors": priors,
    }


EVAL_ARGS = dict(
    score_threshold=0.05, nms="fast", nms_iou=0.5, top_k=200, max_detections=100, use_focal_loss=True
)


def test_detect_thresholds_sorts_and_assembles_cropped_masks():
    # Priors (cx, cy, w, h): two overlapping ones (IoU 2/3 after decoding) and a separate one.
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.35, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    class_logits = torch.tensor(
        [[logit(0.9), logit(0.01)], [logit(0.8), logit(0.01)], [logit(0.01), logit(0.6)]]
    )
    proto = torch.ones(8, 8, 1)
    coeffs = torch.tensor([[10.0], [10.0], [-10.0]])
    (det,) = detect(**make_outputs(priors, class_logits, coeffs, proto), **EVAL_ARGS)

    assert det["labels"].tolist() == [0, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.6]))
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    assert det["masks"].shape == (2, 8, 8)
    expected_first = torch.zeros(8, 8)
    expected_first[:4, :4] = torch.sigmoid(torch.tensor(10.0))
    torch.testing.assert_close(det["masks"][0], expected_first)
    assert det["masks"][1, 4:, 4:].max() < 1e-4 and det["masks"][1, :4].abs().sum() == 0

    standard = detect(**make_outputs(priors, class_logits, coeffs, proto), **{**EVAL_ARGS, "nms": "standard"})[0]
    assert standard["labels"].tolist() == [0, 1]

    loose = detect(**make_outputs(priors, class_logits, coeffs, proto), **{**EVAL_ARGS, "nms_iou": 0.7})[0]
    torch.testing.assert_close(loose["scores"], torch.tensor([0.9, 0.8, 0.6]))
    capped = detect(**make_outputs(priors, class_logits, coeffs, proto), **{**EVAL_ARGS, "nms_iou": 0.7, "max_detections": 2})[0]
    torch.testing.assert_close(capped["scores"], torch.tensor([0.9, 0.8]))
    strict = detect(**make_outputs(priors, class_logits, coeffs, proto), **{**EVAL_ARGS, "score_threshold": 0.85})[0]
    assert strict["labels"].tolist() == [0]


def test_detect_decodes_with_variances_and_clips_boxes():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.9, 0.1, 0.4, 0.4]])
    outputs = make_outputs(priors, torch.tensor([[5.0], [4.0]]), torch.ones(2, 1), torch.ones(4, 4, 1))
    outputs["loc"] = torch.tensor([[[1.0, -1.0, math.log(2) / 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    (det,) = detect(**outputs, **EVAL_ARGS)
    # cx = 0.5 + 1 * 0.1 * 0.2, cy = 0.5 - 0.1 * 0.4, w = 0.2 * 2, h = 0.4; the second box leaves the image.
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.32, 0.26, 0.72, 0.66], [0.7, 0.0, 1.0, 0.3]]))


def test_detect_softmax_scores_and_empty_output():
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4]])
    class_logits = torch.tensor([[math.log(3.0), -30.0]])  # softmax with background logit 0: 0.75, ~0
    outputs = make_outputs(priors, class_logits, torch.ones(1, 2), torch.ones(4, 6, 2))
    (det,) = detect(**outputs, **{**EVAL_ARGS, "use_focal_loss": False})
    torch.testing.assert_close(det["scores"], torch.tensor([0.75]))
    assert det["labels"].tolist() == [0]

    (empty,) = detect(**outputs, **{**EVAL_ARGS, "use_focal_loss": False, "score_threshold": 0.8})
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)
    assert empty["labels"].dtype == torch.long and empty["masks"].shape == (0, 4, 6)
    image = to_image(empty, 30, 40, mask_threshold=0.5)
    assert image["masks"].shape == (0, 30, 40) and image["boxes"].shape == (0, 4)


def test_crop_masks_keeps_pixels_the_box_touches():
    box = torch.tensor([[0.3, 0.0, 0.55, 1.0]])  # on a 10-wide grid: overlaps columns 3..5
    cropped = crop_masks(torch.ones(1, 2, 10), box)
    assert cropped[0, 0].nonzero().squeeze(1).tolist() == [3, 4, 5]


def test_to_image_maps_low_res_box_mask_to_pixel_region():
    # A 10x10 prototype-resolution mask covering exactly the box's cells (cols 2..5, rows 3..7),
    # at 100x200 pixels: the box is columns 40..119, rows 30..79.
    box = torch.tensor([[0.2, 0.3, 0.6, 0.8]])
    low_res = torch.zeros(1, 10, 10)
    low_res[0, 3:8, 2:6] = 0.97
    det = {"boxes": box, "scores": torch.tensor([0.8]), "labels": torch.tensor([2]), "masks": low_res}
    out = to_image(det, orig_h=100, orig_w=200, mask_threshold=0.5)

    torch.testing.assert_close(out["boxes"], torch.tensor([[40.0, 30.0, 120.0, 80.0]]))
    assert out["labels"].tolist() == [2] and out["scores"].tolist() == pytest.approx([0.8])
    mask = out["masks"][0]
    assert mask.dtype == torch.bool and mask.shape == (100, 200)
    region = torch.zeros(100, 200, dtype=torch.bool)
    region[30:80, 40:120] = True
    assert not (mask & ~region).any()
    # Edges land on the right pixels; only the corners are rounded by bilinear resizing.
    assert mask[55].nonzero().squeeze(1).tolist() == list(range(40, 120))
    assert mask[:, 80].nonzero().squeeze(1).tolist() == list(range(30, 80))
    assert mask.sum() / region.sum() > 0.97


def test_to_image_crops_upsampled_mask_to_box():
    # A mask that spills over the whole low-res grid is cut at the (non-grid-aligned) pixel box.
    box = torch.tensor([[0.25, 0.1, 0.5, 0.9]])
    det = {"boxes": box, "scores": torch.tensor([0.5]), "labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}
    out = to_image(det, orig_h=50, orig_w=40, mask_threshold=0.5)
    expected = torch.zeros(1, 50, 40, dtype=torch.bool)
    expected[0, 5:45, 10:20] = True
    assert torch.equal(out["masks"], expected)

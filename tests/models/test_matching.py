import pytest
import torch

from pipeline.models.priors.anchors import make_priors
from pipeline.models.priors.boxes import point_form
from pipeline.models.priors.matching import _dense_summaries, _pad, _tiled_summaries, match, match_batch
from tests.reference_match import reference_match

YOLACT_PRIORS = make_priors(
    550, [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)], [[24], [48], [96], [192], [384]], [1.0, 0.5, 2.0]
)
SMALL_PRIORS = make_priors(64, [(8, 8), (4, 4), (2, 2)], [[8], [20], [40]], [1.0, 0.5, 2.0])  # 252 priors


def random_boxes(n: int, g: torch.Generator, grid: int = 0) -> torch.Tensor:
    """Random xyxy boxes, partly outside [0, 1]; with ``grid``, corners snap to multiples of 1/grid (ties)."""
    centre = torch.rand(n, 2, generator=g) * 1.1 - 0.05
    size = torch.rand(n, 2, generator=g) ** 2 * 0.8 + 0.01
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    if grid:
        boxes = (boxes * grid).round() / grid
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1 / grid)
    return boxes


def random_case(g: torch.Generator, max_gt: int, grid: int = 0):
    num_gt = int(torch.randint(0, max_gt + 1, (), generator=g))
    boxes = random_boxes(num_gt, g, grid)
    if num_gt > 1 and torch.rand((), generator=g) < 0.5:
        boxes[-1] = boxes[0]  # duplicate GT: exact ties in every column
    labels = torch.randint(0, 5, (num_gt,), generator=g)
    crowds = None
    if torch.rand((), generator=g) < 0.5:
        crowds = random_boxes(int(torch.randint(1, 3, (), generator=g)), g)
    return boxes, labels, crowds


def assert_same(actual, expected):
    for a, e, name in zip(actual, expected, ("conf_t", "matched_idx", "loc_t")):
        assert torch.equal(a, e), f"{name} differs at {(a != e).nonzero()[:5].tolist()}"


SNAPPED_PRIORS = (SMALL_PRIORS * 8).round().clamp(min=1) / 8  # on a 1/8 grid, with duplicate priors
RANDOM_PRIORS = torch.cat([torch.rand(300, 2), torch.rand(300, 2) * 0.5 + 0.01], dim=1)


@pytest.mark.parametrize(
    "priors, max_gt, grid",
    [
        (SMALL_PRIORS, 12, 0),
        (SMALL_PRIORS, 40, 8),  # GT corners on a coarse grid: many equal IoUs
        (SNAPPED_PRIORS, 30, 8),
        (RANDOM_PRIORS, 25, 0),  # no structure
    ],
)
def test_match_equals_reference_on_random_cases(priors, max_gt, grid):
    g = torch.Generator().manual_seed(max_gt + grid)
    for _ in range(25):
        boxes, labels, crowds = random_case(g, max_gt, grid)
        pos, neg = sorted(torch.rand(2, generator=g).tolist(), reverse=True)
        expected = reference_match(boxes, labels, priors, pos, neg, crowds, 0.6)
        assert_same(match(boxes, labels, priors, pos, neg, crowds, 0.6), expected)


def test_match_equals_reference_on_yolact_priors():
    g = torch.Generator().manual_seed(7)
    for num_gt in (1, 30):
        boxes = random_boxes(num_gt, g).clamp(0, 1)
        labels = torch.randint(0, 80, (num_gt,), generator=g)
        crowds = random_boxes(2, g)
        expected = reference_match(boxes, labels, YOLACT_PRIORS, 0.5, 0.4, crowds, 0.7)
        assert_same(match(boxes, labels, YOLACT_PRIORS, 0.5, 0.4, crowds, 0.7), expected)


def test_match_batch_equals_per_image_match():
    g = torch.Generator().manual_seed(3)
    cases = [random_case(g, 20) for _ in range(6)]
    cases.append((torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.tensor([[0.0, 0.0, 0.5, 0.5]])))
    boxes, labels, crowds = zip(*cases)
    conf_t, matched_idx, loc_t = match_batch(boxes, labels, SMALL_PRIORS, 0.5, 0.4, crowds, 0.7)
    assert conf_t.shape == matched_idx.shape == (7, 252) and loc_t.shape == (7, 252, 4)
    for i, case in enumerate(cases):
        boxes, labels, crowds = case
        batched = (conf_t[i], matched_idx[i], loc_t[i])
        assert_same(batched, match(boxes, labels, SMALL_PRIORS, 0.5, 0.4, crowds, 0.7))
        assert_same(batched, reference_match(boxes, labels, SMALL_PRIORS, 0.5, 0.4, crowds, 0.7))


def test_match_batch_equals_reference_at_benchmark_scale():
    g = torch.Generator().manual_seed(9)
    boxes = [random_boxes(n, g).clamp(0, 1) for n in (100, 60, 0)]
    labels = [torch.randint(0, 80, (len(b),), generator=g) for b in boxes]
    result = match_batch(boxes, labels, YOLACT_PRIORS, 0.5, 0.4)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        assert_same([r[i] for r in result], reference_match(b, l, YOLACT_PRIORS, 0.5, 0.4))


def test_dense_and_tiled_overlap_summaries_agree():
    g = torch.Generator().manual_seed(5)
    boxes = [random_boxes(n, g, grid) for n, grid in ((9, 0), (0, 0), (30, 8))]
    gt_boxes, valid = _pad(boxes, torch.device("cpu"))
    prior_boxes = point_form(YOLACT_PRIORS[::7])  # a prior count that is no multiple of the tile size
    dense = _dense_summaries(gt_boxes, prior_boxes)
    tiled = _tiled_summaries(gt_boxes, valid, prior_boxes)
    for d, t in zip(dense, tiled):
        assert torch.equal(d, t)


# Four priors: the quadrants of the unit square.
QUADRANTS = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]
)


def test_force_match_hand_example():
    # A covers quadrant 0 exactly (IoU 1). B's best prior is also quadrant 0 (IoU 2/3); it loses it to A
    # and is forced onto quadrant 1 (IoU 1/9, background by threshold).
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.1, 0.0, 0.6, 0.5]])
    labels = torch.tensor([3, 7])
    conf_t, matched_idx, loc_t = match(boxes, labels, QUADRANTS, 0.5, 0.4)
    assert conf_t.tolist() == [4, 8, 0, 0]
    assert matched_idx.tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(loc_t[0], torch.zeros(4))
    torch.testing.assert_close(loc_t[1, 0], torch.tensor((0.35 - 0.75) / (0.1 * 0.5)))
    # Without the competitor, B keeps quadrant 0.
    assert match(boxes[1:], labels[1:], QUADRANTS, 0.5, 0.4)[0].tolist() == [8, 0, 0, 0]


def test_force_match_gives_zero_overlap_gt_the_first_free_prior():
    # Both GTs only overlap quadrant 0; the second has nothing left and takes the first free prior.
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3]])
    conf_t, matched_idx, _ = match(boxes, torch.tensor([0, 1]), QUADRANTS, 0.5, 0.4)
    assert conf_t.tolist() == [1, 2, 0, 0] and matched_idx.tolist() == [0, 1, 0, 0]


# Priors sliding right along the top of the square, and one at the bottom left.
SLIDING = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.45, 0.25, 0.5, 0.5], [0.55, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5]]
)


def test_neutral_between_thresholds():
    # IoUs with the GT: 1 (forced), 0.15 / 0.35 = 0.43 (neutral), 0.1 / 0.4 = 0.25 and 0 (background).
    conf_t, matched_idx, _ = match(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([2]), SLIDING, 0.5, 0.4)
    assert conf_t.tolist() == [3, -1, 0, 0]
    assert matched_idx.tolist() == [0, 0, 0, 0]
    lower = match(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([2]), SLIDING, 0.4, 0.3)
    assert lower[0].tolist() == [3, 3, 0, 0]


def test_crowd_neutralises_non_positive_priors_only():
    # The crowd covers 76 % of prior 0 (positive: stays), all of priors 1 and 2, nothing of prior 3.
    crowd = torch.tensor([[0.12, 0.0, 1.0, 0.5]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    conf_t, _, _ = match(gt, torch.tensor([2]), SLIDING, 0.5, 0.4, crowd, 0.7)
    assert conf_t.tolist() == [3, -1, -1, 0]
    assert match(gt, torch.tensor([2]), SLIDING, 0.5, 0.4, crowd, 0.8)[0].tolist() == [3, -1, -1, 0]
    assert match(gt, torch.tensor([2]), SLIDING, 0.5, 0.4, crowd, 1.0)[0].tolist() == [3, -1, 0, 0]


def test_no_ground_truth_is_all_background_and_crowd_still_applies():
    empty, no_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    conf_t, matched_idx, loc_t = match(empty, no_labels, SLIDING, 0.5, 0.4)
    assert conf_t.tolist() == [0, 0, 0, 0] and matched_idx.tolist() == [0, 0, 0, 0]
    assert torch.equal(loc_t, torch.zeros(4, 4))
    conf_t, _, _ = match(empty, no_labels, SLIDING, 0.5, 0.4, torch.tensor([[0.12, 0.0, 1.0, 0.5]]), 0.7)
    assert conf_t.tolist() == [-1, -1, -1, 0]
    conf_t, _, _ = match_batch([empty, empty], [no_labels, no_labels], SLIDING, 0.5, 0.4, None)
    assert torch.equal(conf_t, torch.zeros(2, 4, dtype=torch.long))


def test_more_ground_truth_than_priors_is_rejected():
    with pytest.raises(ValueError, match="more ground-truth boxes"):
        match(torch.rand(5, 4), torch.zeros(5, dtype=torch.long), QUADRANTS, 0.5, 0.4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_match_batch_on_cuda_equals_reference():
    g = torch.Generator().manual_seed(11)
    cases = [random_case(g, 40, grid) for grid in (0, 0, 16, 0)]
    boxes, labels, crowds = zip(*cases)
    cuda = [[t.cuda() if t is not None else None for t in group] for group in (boxes, labels, crowds)]
    result = match_batch(*cuda[:2], YOLACT_PRIORS.cuda(), 0.5, 0.4, cuda[2], 0.7)
    for i, (b, l, c) in enumerate(zip(*cuda)):
        expected = reference_match(b, l, YOLACT_PRIORS.cuda(), 0.5, 0.4, c, 0.7)
        assert_same([r[i] for r in result], expected)

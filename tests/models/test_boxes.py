import math

import torch
from torchvision.ops import box_iou

from pipeline.models.priors.boxes import box_ioa, center_form, coords_iou, decode, encode, point_form


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator)
    size = torch.rand(n, 2, generator=generator) * 0.6 + 1e-3
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def test_point_and_center_form():
    prior = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    torch.testing.assert_close(point_form(prior), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(center_form(point_form(prior)), prior)


def test_coords_iou_is_bit_identical_to_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(37, g), random_boxes(53, g)
    # Touching, nested and identical boxes besides the random ones.
    a = torch.cat([a, torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]])])
    b = torch.cat([b, torch.tensor([[0.0, 0.0, 0.5, 0.5]])])
    expected = box_iou(a, b)
    assert torch.equal(coords_iou(a[:, None].unbind(-1), b[None].unbind(-1)), expected)
    # Coordinate-major input with explicit workspaces gives the same bits.
    out, tmp, tmp2 = (torch.empty(len(a), len(b)) for _ in range(3))
    coords_iou(a.T[..., None], b.T[:, None, :], out=out, scratch=(tmp, tmp2))
    assert torch.equal(out, expected)
    assert expected[-3, -1] == 1 and expected[-2, -1] == 0.25 and expected[-1, -1] == 0


def test_box_ioa_is_intersection_over_first_area():
    priors = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]])
    crowds = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 1.0, 0.2]])
    expected = torch.tensor([[1.0, 1.0], [0.25, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(box_ioa(priors, crowds), expected)
    batched = box_ioa(priors, torch.stack([crowds, crowds.flip(0)]))
    assert batched.shape == (2, 3, 2)
    torch.testing.assert_close(batched[1], expected.flip(1))


def test_encode_hand_example():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    matched = torch.tensor([[0.45, 0.35, 0.85, 0.75]])  # centre (0.65, 0.55), size (0.4, 0.4)
    expected = torch.tensor([[0.15 / 0.02, 0.05 / 0.04, math.log(2) / 0.2, 0.0]])
    torch.testing.assert_close(encode(matched, prior), expected)
    unit_variances = encode(matched, prior, variances=(1.0, 1.0))
    torch.testing.assert_close(unit_variances, expected * torch.tensor([0.1, 0.1, 0.2, 1.0]))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(1)
    priors = center_form(random_boxes(200, g))
    boxes = random_boxes(200, g)
    torch.testing.assert_close(decode(encode(boxes, priors), priors), boxes, atol=1e-5, rtol=1e-5)
    # Batched offsets [B, P, 4] against shared priors.
    loc = torch.randn(3, 200, 4, generator=g)
    torch.testing.assert_close(encode(decode(loc, priors), priors.expand(3, -1, -1)), loc, atol=1e-4, rtol=1e-4)
    assert torch.equal(decode(torch.zeros(200, 4), priors), point_form(priors))

import math

import pytest
import torch

from pipeline.models.priors.anchors import make_priors, num_anchors_per_location

YOLACT_SCALES = [[24], [48], [96], [192], [384]]
YOLACT_RATIOS = [1.0, 0.5, 2.0]
YOLACT_SIZES = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]


def test_yolact_550_count_and_first_priors():
    priors = make_priors(550, YOLACT_SIZES, YOLACT_SCALES, YOLACT_RATIOS)
    assert priors.shape == (19248, 4)
    centre = 0.5 / 69
    expected = torch.tensor(
        [
            [centre, centre, 24 / 550, 24 / 550],
            [centre, centre, 24 * math.sqrt(0.5) / 550, 24 / math.sqrt(0.5) / 550],
            [centre, centre, 24 * math.sqrt(2) / 550, 24 / math.sqrt(2) / 550],
            [1.5 / 69, centre, 24 / 550, 24 / 550],
        ]
    )
    torch.testing.assert_close(priors[:4], expected)


def test_order_is_level_y_x_scale_ratio():
    scales = [[10, 20], [30, 40]]
    ratios = [1.0, 4.0]
    sizes = [(3, 4), (2, 2)]
    size = 100
    priors = make_priors(size, sizes, scales, ratios)
    assert priors.shape == ((3 * 4 + 2 * 2) * 4, 4)
    # level 1, y = 1, x = 0, scale 40, ratio 4
    y, x, s, r = 1, 0, 1, 1  # level 1
    index = 3 * 4 * 4 + ((y * 2 + x) * 2 + s) * 2 + r
    expected = torch.tensor([(x + 0.5) / 2, (y + 0.5) / 2, 40 * 2 / size, 40 / 2 / size])
    torch.testing.assert_close(priors[index], expected)
    # level 0, y = 2, x = 3, scale 10, ratio 1: last location of level 0, first anchor
    index = ((2 * 4 + 3) * 2 + 0) * 2 + 0
    torch.testing.assert_close(priors[index], torch.tensor([3.5 / 4, 2.5 / 3, 0.1, 0.1]))


def test_rectangular_feature_map_uses_its_own_width_and_height():
    priors = make_priors(64, [(2, 4)], [[8]], [1.0])
    assert priors[:, 0].unique().tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert priors[:, 1].unique().tolist() == pytest.approx([0.25, 0.75])


def test_square_sets_height_to_width():
    plain = make_priors(550, YOLACT_SIZES, YOLACT_SCALES, YOLACT_RATIOS)
    square = make_priors(550, YOLACT_SIZES, YOLACT_SCALES, YOLACT_RATIOS, square=True)
    torch.testing.assert_close(square[:, :3], plain[:, :3])
    torch.testing.assert_close(square[:, 3], square[:, 2])
    assert not torch.allclose(plain[:, 3], plain[:, 2])


def test_anchors_per_location_and_errors():
    assert num_anchors_per_location(YOLACT_SCALES, YOLACT_RATIOS) == 3
    assert num_anchors_per_location([[1, 2]] * 3, [1.0, 2.0]) == 4
    with pytest.raises(ValueError, match="same number"):
        num_anchors_per_location([[1], [1, 2]], [1.0])
    with pytest.raises(ValueError, match="feature maps"):
        make_priors(64, [(8, 8)], [[8], [16]], [1.0])

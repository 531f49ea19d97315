import matplotlib.image
import numpy as np
import pytest
import torch

from pipeline.analysis.visualize import MASK_ALPHA, class_color, overlay_masks, save_comparison


def test_overlay_masks_blends_only_inside_the_mask():
    image = np.full((4, 5, 3), 200, dtype=np.uint8)
    masks = np.zeros((1, 4, 5), dtype=bool)
    masks[0, 1:3, 2:4] = True
    out = overlay_masks(image, masks, [3])
    expected_inside = (1 - MASK_ALPHA) * 200 / 255 + MASK_ALPHA * np.asarray(class_color(3))
    np.testing.assert_allclose(out[1, 2], expected_inside, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0], [200 / 255] * 3, rtol=1e-6)
    assert class_color(3) != class_color(4)


def test_save_comparison_writes_a_png(tmp_path):
    height, width = 40, 60
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 25:35, 40:55] = True
    target = {"boxes": torch.tensor([[10.0, 5, 30, 20]]), "labels": torch.tensor([0]), "masks": masks[:1]}
    det = {
        "boxes": torch.tensor([[10.0, 5, 30, 20], [40, 25, 55, 35]]),
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([0, 1]),
        "masks": masks,
    }
    path = save_comparison([image, image], [target, target], [det, det], ["cat", "dog"], tmp_path / "fig" / "val.png")
    assert path == tmp_path / "fig" / "val.png"
    png = matplotlib.image.imread(path)
    # Two rows of (GT | prediction) panels, 4 inches wide at 100 dpi, keeping the image's aspect ratio.
    assert png.shape[1] == 800
    assert png.shape[0] == pytest.approx(2 * (400 * height / width + 40), abs=1)
    assert png[..., :3].std() > 0.05
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    with pytest.raises(ValueError):
        save_comparison([image], [target, target], [det], ["cat", "dog"], tmp_path / "bad.png")

"""The inference fast path (BatchNorm folded at eval, masks pasted inside their boxes) against the plain path:
the unfolded eval model and every mask resized over the whole image, cut to its box and thresholded.

Tolerances: folding re-associates each convolution's float32 arithmetic (w * s, then the sum, instead of the
sum, then * s), which moves every activation by a few float32 ulps; the raw outputs are compared at 1e-4 of
their magnitude. A thresholded mask pixel can flip only where its probability lies within such rounding of
the threshold, so the binary masks may differ in a handful of pixels per million.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import config
from pipeline.config import EvalParams
from pipeline.models.backbone.resnet import ResNet
from pipeline.models.detections import crop_masks, paste_masks, to_image
from pipeline.models.folding import fold_batchnorm
from pipeline.models.networks import network_of
from pipeline.models.yolact.model import build_model
from tests.models.test_model import SMALL

MASK_PIXELS_MAY_DIFFER = 1e-5  # fraction of all mask pixels


def _with_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters away from their identity initialisation, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model.eval()


def _reference_to_image(det, height, width, threshold):
    """The plain path: every mask resized to the full image, cut to its box, thresholded."""
    masks = det["masks"]
    if masks.shape[0]:
        masks = F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return crop_masks(masks, det["boxes"]) > threshold


@pytest.mark.parametrize("options", [{"depth": 18}, {"depth": 50, "base_channels": 8},
                                     {"depth": 18, "deep_stem": True, "avg_down": True}])
@torch.no_grad()
def test_folding_removes_every_batchnorm_and_keeps_the_outputs(options):
    torch.manual_seed(0)
    backbone = _with_trained_statistics(ResNet(**options))
    folded = fold_batchnorm(backbone)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()), "the original must be untouched"
    images = torch.rand(2, 3, 64, 64)
    for plain, fast in zip(backbone(images), folded(images)):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


@pytest.mark.parametrize("size", [(96, 96), (60, 200), (137, 41)])
def test_paste_masks_matches_full_image_resizing(size):
    generator = torch.Generator().manual_seed(1)
    count, low_res = 50, (24, 24)
    corner = torch.rand(count, 2, generator=generator) * 0.9
    boxes = torch.cat([corner, corner + torch.rand(count, 2, generator=generator) * (1 - corner)], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # a box over the whole image
    boxes[1] = torch.tensor([0.5, 0.5, 0.5, 0.9])  # an empty one
    smooth = F.interpolate(torch.rand(count, 1, 6, 6, generator=generator), size=low_res, mode="bilinear")[:, 0]
    masks = crop_masks(smooth, boxes)

    fast = paste_masks(masks, boxes, *size, threshold=0.5)
    plain = _reference_to_image({"masks": masks, "boxes": boxes}, *size, 0.5)
    assert fast.dtype == torch.bool and fast.shape == plain.shape
    assert (fast != plain).float().mean() <= MASK_PIXELS_MAY_DIFFER
    assert plain[0].any() and not plain[1].any() and not fast[1].any()


@torch.no_grad()
def test_fast_path_detections_equal_the_plain_path():
    torch.manual_seed(0)
    params = config.replace(config.Params(), **SMALL)
    model = _with_trained_statistics(build_model(params, 5))
    eval_params = EvalParams(score_threshold=0.05, max_detections=50)
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    net = network_of(model)
    fast_model = net.inference_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast_model.modules())

    plain = net.detect(model, images, eval_params, use_focal_loss=False)
    fast = net.detect(fast_model, images, eval_params, use_focal_loss=False)
    for (height, width), p, f in zip([(120, 90), (96, 160)], plain, fast):
        assert len(p["scores"]) > 10 and torch.equal(p["labels"], f["labels"])
        torch.testing.assert_close(f["scores"], p["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(f["boxes"], p["boxes"], rtol=0, atol=1e-5)
        fast_pixels = to_image(f, height, width, eval_params.mask_threshold)
        plain_masks = _reference_to_image(p, height, width, eval_params.mask_threshold)
        assert (fast_pixels["masks"] != plain_masks).float().mean() <= MASK_PIXELS_MAY_DIFFER

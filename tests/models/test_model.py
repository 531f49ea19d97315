import math

import pytest
import torch
import torchvision
from torch import nn

from pipeline import config
from pipeline.models.yolact.model import build_model, count_flops

YOLACT_R50 = {
    "input.size": 550,
    "model.backbone.depth": 50,
    "model.backbone.base_channels": 64,
    "model.fpn.out_channels": 256,
    "model.head.num_prototypes": 32,
    "anchors.scales": [[24], [48], [96], [192], [384]],
    "anchors.aspect_ratios": [1.0, 0.5, 2.0],
}
SMALL = {
    "input.size": 96,
    "model.backbone.depth": 18,
    "model.backbone.base_channels": 16,
    "model.fpn.out_channels": 32,
    "model.head.num_prototypes": 8,
    "anchors.scales": [[8], [16], [32], [64], [96]],
}


def _params(**overrides):
    return config.replace(config.Params(), **overrides)


def _small_model(num_classes=5, **overrides):
    torch.manual_seed(0)
    return build_model(_params(**{**SMALL, **overrides}), num_classes)


def test_yolact_r50_550_shapes_and_first_priors():
    torch.manual_seed(0)
    model = build_model(_params(**YOLACT_R50), 80).train()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 550, 550))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "loc": (1, 19248, 4),
        "conf": (1, 19248, 81),
        "mask": (1, 19248, 32),
        "priors": (19248, 4),
        "proto": (1, 138, 138, 32),
        "segm": (1, 80, 69, 69),
    }
    c = 0.5 / 69
    r = math.sqrt(2)
    expected = torch.tensor(
        [[c, c, 24 / 550, 24 / 550], [c, c, 24 / r / 550, 24 * r / 550], [c, c, 24 * r / 550, 24 / r / 550]]
    )
    torch.testing.assert_close(out["priors"][:3], expected)
    assert out["mask"].abs().max() <= 1 and out["proto"].min() >= 0


def test_yolact_r50_550_forward_flops_match_reference():
    with torch.device("meta"):
        model = build_model(_params(**YOLACT_R50), 80).eval()
        flops = count_flops(model, torch.empty(1, 3, 550, 550))
    assert flops == pytest.approx(118e9, rel=0.03)


def test_count_flops_counts_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.zeros(2, 3, 10, 10)) == 2 * (2 * 10 * 10) * 8 * 3 * 9


def test_segm_only_in_train_mode_and_optional():
    model = _small_model()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    assert tuple(train_out["segm"].shape) == (2, 5, 12, 12)
    assert "segm" not in eval_out
    assert tuple(eval_out["proto"].shape) == (2, 24, 24, 8)
    no_segm = _small_model(**{"model.head.semantic_segmentation": False})
    assert "segm" not in no_segm.train()(x) and no_segm.semantic_head is None


def test_priors_follow_the_input_size_and_are_cached():
    model = _small_model().eval()
    with torch.no_grad():
        a = model(torch.randn(1, 3, 96, 96))["priors"]
        b = model(torch.randn(1, 3, 96, 96))["priors"]
        c = model(torch.randn(1, 3, 128, 128))["priors"]
    assert a is b
    assert a.shape[0] == 3 * (12**2 + 6**2 + 3**2 + 2**2 + 1)
    assert c.shape[0] == 3 * (16**2 + 8**2 + 4**2 + 2**2 + 1)
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(1, 3, 96, 128))


def test_focal_loss_initialises_conf_bias_per_anchor():
    model = _small_model(**{"loss.use_focal_loss": True, "loss.focal_init_pi": 0.01})
    bias = model.head.conf_layer.bias.view(3, 6)
    torch.testing.assert_close(torch.sigmoid(bias[:, 1:]), torch.full((3, 5), 0.01))
    torch.testing.assert_close(torch.sigmoid(bias[:, 0]), torch.full((3,), 0.99))
    assert (_small_model().head.conf_layer.bias == 0).all()


def test_backbone_options_and_pretrained_file_reach_the_backbone(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "weights" / "resnet18.pth"  # weight files live under weights/
    path.parent.mkdir()
    torch.save(reference.state_dict(), path)
    raw = config.to_dict(_params(**{**SMALL, "model.backbone.base_channels": 64, "model.backbone.frozen_stages": 1,
                                    "model.backbone.with_cp": True}))
    raw["model"]["backbone"]["pretrained"] = str(path)
    params = config.from_dict(raw)
    config.validate(params, base_dir=tmp_path)
    torch.manual_seed(0)
    model = build_model(params, 5)
    torch.testing.assert_close(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert model.backbone.layer2[0].with_cp
    model.train()
    assert not model.backbone.layer1[0].bn1.training and model.backbone.layer2[0].bn1.training


def test_channels_last_gives_the_same_outputs():
    model = _small_model().eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for key in reference:
        torch.testing.assert_close(out[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param(
            "cuda",
            torch.float16,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA"),
        ),
    ],
)
def test_autocast_close_to_fp32(device, dtype):
    # bf16 keeps 8 significant bits (rounding error <= 2^-9, about 0.2 %). Autocast rounds the inputs and
    # weights of each of the ~25 convolutions on any output's path (accumulation stays fp32); independent
    # roundings add up to ~1-2 % relative error (1 % measured on CPU). 4 % leaves room for seeds and
    # kernels while a real fault (a layer left in the wrong dtype, overflow, a bad cast) is far larger.
    # fp16 (11 bits) is 8x finer, so the same bound holds with more margin.
    model = _small_model().eval().to(device)
    x = torch.randn(2, 3, 96, 96, device=device)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast(device, dtype=dtype):
            low = model(x)
    assert low["conf"].dtype == dtype
    assert low["priors"].dtype == torch.float32
    for key in reference:
        error = (low[key].float() - reference[key]).norm() / reference[key].norm()
        assert error < 0.04, f"{key}: relative error {error:.4f}"


def test_outputs_train_end_to_end():
    model = _small_model().train()
    out = model(torch.randn(2, 3, 96, 96))
    loss = sum(out[k].float().square().mean() for k in ("loc", "conf", "mask", "proto", "segm"))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing

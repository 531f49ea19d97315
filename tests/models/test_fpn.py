import pytest
import torch
import torch.nn.functional as F

from pipeline.models.backbone.fpn import FPN, strided_conv


def _inputs(channels, sizes, batch=1):
    torch.manual_seed(0)
    return [torch.rand(batch, c, s, s) for c, s in zip(channels, sizes)]


def test_mmdetection_example_shapes():
    in_channels, sizes = [2, 3, 5, 7], [340, 170, 84, 43]
    fpn = FPN(in_channels, 11, len(in_channels)).eval()
    with torch.no_grad():
        outputs = fpn(_inputs(in_channels, sizes))
    assert [tuple(o.shape) for o in outputs] == [(1, 11, s, s) for s in sizes]


@pytest.mark.parametrize("mode", ["on_input", "on_lateral", "on_output", "none"])
def test_each_extra_mode_gives_num_outs_levels(mode):
    in_channels, sizes = [4, 8, 16], [69, 35, 18]
    fpn = FPN(in_channels, 6, 5, add_extra_convs=mode)
    outputs = fpn(_inputs(in_channels, sizes))
    assert [tuple(o.shape) for o in outputs] == [(1, 6, s, s) for s in [69, 35, 18, 9, 5]]
    expected_extra_inputs = {"on_input": [16, 6], "on_lateral": [6, 6], "on_output": [6, 6], "none": []}
    assert [c.in_channels for c in fpn.extra_convs] == expected_extra_inputs[mode]


def test_none_mode_max_pools_the_last_output():
    fpn = FPN([4, 8], 6, 4, add_extra_convs="none")
    outputs = fpn(_inputs([4, 8], [16, 8]))
    torch.testing.assert_close(outputs[2], outputs[1][..., ::2, ::2])
    torch.testing.assert_close(outputs[3], outputs[2][..., ::2, ::2])


def test_extra_sources_and_relu_before_extra_convs():
    inputs = _inputs([4, 8], [16, 8])
    for mode, relu in [("on_input", True), ("on_lateral", False), ("on_output", False)]:
        fpn = FPN([4, 8], 6, 4, add_extra_convs=mode, relu_before_extra_convs=relu)
        outputs = fpn(inputs)
        lateral = fpn.lateral_convs[1](inputs[1])
        source = {"on_input": inputs[1], "on_lateral": lateral, "on_output": outputs[1]}[mode]
        p_first = fpn.extra_convs[0](source)
        p_second = fpn.extra_convs[1](F.relu(p_first) if relu else p_first)
        torch.testing.assert_close(outputs[2], p_first)
        torch.testing.assert_close(outputs[3], p_second)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_top_down_pathway(mode):
    inputs = _inputs([3, 5], [9, 5])
    fpn = FPN([3, 5], 4, 2, upsample_mode=mode)
    outputs = fpn(inputs)
    coarse = fpn.lateral_convs[1](inputs[1])
    extra = {"align_corners": False} if mode == "bilinear" else {}
    fine = fpn.lateral_convs[0](inputs[0]) + F.interpolate(coarse, size=(9, 9), mode=mode, **extra)
    torch.testing.assert_close(outputs[0], fpn.output_convs[0](fine))
    torch.testing.assert_close(outputs[1], fpn.output_convs[1](coarse))


def test_yolact_configuration_relu_on_outputs_only():
    in_channels, sizes = [8, 16, 32], [20, 10, 5]
    fpn = FPN(
        in_channels, 6, 5, add_extra_convs="on_output", relu_on_outputs=True, upsample_mode="bilinear"
    )
    outputs = fpn(_inputs(in_channels, sizes))
    assert all((o >= 0).all() for o in outputs[:3])
    # P6 and P7 come straight from the stride-2 convs, without a ReLU between or after them.
    assert all((o < 0).any() for o in outputs[3:])
    torch.testing.assert_close(outputs[4], fpn.extra_convs[1](outputs[3]))


def test_start_and_end_level_select_inputs():
    in_channels, sizes = [4, 8, 16, 32], [32, 16, 8, 4]
    fpn = FPN(in_channels, 6, 3, start_level=1, end_level=3, add_extra_convs="on_input")
    assert [c.in_channels for c in fpn.lateral_convs] == [8, 16]
    assert fpn.extra_convs[0].in_channels == 16
    outputs = fpn(_inputs(in_channels, sizes))
    assert [tuple(o.shape) for o in outputs] == [(1, 6, 16, 16), (1, 6, 8, 8), (1, 6, 4, 4)]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="add_extra_convs"):
        FPN([4, 8], 6, 3, add_extra_convs="on_top")
    with pytest.raises(ValueError, match="num_outs"):
        FPN([4, 8, 16], 6, 2)
    with pytest.raises(ValueError, match="start_level"):
        FPN([4, 8], 6, 2, start_level=2)
    with pytest.raises(ValueError, match="upsample_mode"):
        FPN([4, 8], 6, 2, upsample_mode="bicubic")


def test_strided_conv_over_a_1x1_input_has_true_gradients_under_cpu_bf16_autocast():
    """torch 2.14's CPU bf16 backward of this conv gives non-finite weight gradients ~1 call in 5."""
    torch.manual_seed(0)
    for _ in range(40):
        conv = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
        x = torch.randn(4, 16, 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = strided_conv(conv, x)
        y.float().sum().backward()
        weight = conv.weight.detach().double().requires_grad_()
        torch.nn.functional.conv2d(x.double(), weight, None, 2, 1).sum().backward()
        assert torch.allclose(conv.weight.grad.double(), weight.grad, rtol=1e-2, atol=1e-2)

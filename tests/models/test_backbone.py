import pytest
import torch
import torchvision
from torch import nn

from pipeline.models.backbone.resnet import ResNet, load_torchvision_weights
from pipeline.utils.errors import PipelineError


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine params, so a wrong BN mapping cannot go unnoticed."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _torchvision_stages(model: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("depth", [18, 50])
def test_same_outputs_as_torchvision_with_its_weights(depth, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    _randomise_norms(reference)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(reference.state_dict(), path)

    backbone = ResNet(depth=depth, out_indices=[0, 1, 2, 3])
    load_torchvision_weights(backbone, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = backbone.eval()(x)
        theirs = _torchvision_stages(reference.eval(), x)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4


def test_mismatched_weights_error_names_the_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(PipelineError, match="r18.pth.*missing"):
        load_torchvision_weights(ResNet(depth=34), path)
    with pytest.raises(PipelineError, match="r18.pth.*shape"):
        load_torchvision_weights(ResNet(depth=18, base_channels=32), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PipelineError, match="garbage.pth"):
        load_torchvision_weights(ResNet(depth=18), garbage)


@pytest.mark.parametrize(
    "depth, channels",
    [
        (18, [64, 128, 256, 512]),
        (34, [64, 128, 256, 512]),
        (50, [256, 512, 1024, 2048]),
        (101, [256, 512, 1024, 2048]),
        (152, [256, 512, 1024, 2048]),
    ],
)
def test_depths_channels_strides_and_block_counts(depth, channels):
    with torch.device("meta"):
        backbone = ResNet(depth=depth, out_indices=[0, 1, 2, 3])
        outs = backbone(torch.empty(1, 3, 64, 96))
    assert backbone.out_channels == channels
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, [4, 8, 16, 32])]
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == blocks[depth]


def test_base_channels_and_default_out_indices():
    backbone = ResNet(depth=18, base_channels=32)
    assert backbone.conv1.out_channels == 32
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]


def _shapes(backbone: ResNet, size: int = 64) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(o.shape) for o in backbone.eval()(torch.randn(1, 3, size, size))]


def test_caffe_style_strides_the_first_1x1():
    caffe = ResNet(depth=50, base_channels=16, style="caffe", out_indices=[0, 1, 2, 3])
    pytorch = ResNet(depth=50, base_channels=16, out_indices=[0, 1, 2, 3])
    first = caffe.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer2[0].conv2.stride == (2, 2)
    assert _shapes(caffe) == _shapes(pytorch)


def test_deep_stem_replaces_the_7x7():
    backbone = ResNet(depth=18, base_channels=16, deep_stem=True, out_indices=[0, 1, 2, 3])
    assert not hasattr(backbone, "conv1")
    convs = [m for m in backbone.stem if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((3, 3), (2, 2), 8),
        ((3, 3), (1, 1), 8),
        ((3, 3), (1, 1), 16),
    ]
    assert _shapes(backbone) == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]


def test_avg_down_pools_before_a_stride_1_shortcut():
    backbone = ResNet(depth=50, base_channels=16, avg_down=True, out_indices=[0, 1, 2, 3])
    shortcut = backbone.layer3[0].downsample
    assert isinstance(shortcut[0], nn.AvgPool2d) and shortcut[0].stride == 2
    assert shortcut[1].stride == (1, 1)
    assert _shapes(backbone, 72) == [(1, 64, 18, 18), (1, 128, 9, 9), (1, 256, 5, 5), (1, 512, 3, 3)]


def test_strides_and_dilations_keep_resolution():
    backbone = ResNet(depth=50, base_channels=16, strides=[1, 2, 2, 1], dilations=[1, 1, 1, 2])
    assert backbone.layer4[1].conv2.dilation == (2, 2)
    assert _shapes(backbone) == [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 4, 4)]


def test_zero_init_residual_zeroes_the_last_norm_of_every_block():
    basic = ResNet(depth=18, base_channels=8, zero_init_residual=True)
    bottleneck = ResNet(depth=50, base_channels=8, zero_init_residual=True)
    assert all((b.bn2.weight == 0).all() for i in range(1, 5) for b in getattr(basic, f"layer{i}"))
    assert all((b.bn3.weight == 0).all() for i in range(1, 5) for b in getattr(bottleneck, f"layer{i}"))
    assert (ResNet(depth=18, base_channels=8).layer1[0].bn2.weight == 1).all()


def _bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)]


def test_frozen_stages_freeze_params_and_norm_statistics():
    backbone = ResNet(depth=18, base_channels=8, frozen_stages=2).train()
    frozen = [backbone.conv1, backbone.bn1, backbone.layer1, backbone.layer2]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (backbone.layer3, backbone.layer4) for p in m.parameters())
    assert not backbone.bn1.training and not backbone.layer2[0].bn1.training
    assert backbone.layer3[0].bn1.training

    frozen_before, live_before = _bn_state(backbone.layer2), _bn_state(backbone.layer3)
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_state(backbone.layer2)))
    assert not all(torch.equal(a, b) for a, b in zip(live_before, _bn_state(backbone.layer3)))

    backbone.eval().train()  # switching modes again must not unfreeze
    assert not backbone.layer1[0].bn1.training


def test_deep_stem_is_frozen_as_stage_0():
    backbone = ResNet(depth=18, base_channels=8, deep_stem=True, frozen_stages=0).train()
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not backbone.stem[1].training
    assert all(p.requires_grad for p in backbone.layer1.parameters())


def test_norm_eval_keeps_every_norm_in_eval_mode():
    backbone = ResNet(depth=18, base_channels=8, norm_eval=True).train()
    assert backbone.training
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in norms)
    assert all(p.requires_grad for p in backbone.parameters())
    before = _bn_state(backbone)
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(backbone)))


@pytest.mark.parametrize("depth", [18, 50])
def test_with_cp_gives_same_outputs_and_gradients(depth):
    torch.manual_seed(0)
    plain = ResNet(depth=depth, base_channels=8).train()
    checkpointed = ResNet(depth=depth, base_channels=8, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.layer1[0].conv1.register_forward_hook(lambda *args: calls.append(1))

    x = torch.randn(2, 3, 64, 64)
    out_plain = plain(x)
    out_cp = checkpointed(x)
    sum(o.square().sum() for o in out_plain).backward()
    sum(o.square().sum() for o in out_cp).backward()

    assert len(calls) == 2, "the block's forward should be recomputed in backward"
    for a, b in zip(out_plain, out_cp):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)

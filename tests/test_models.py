"""3D ResNet / MERANet builders: exact parameter counts, shapes, shortcuts, init and errors."""
import pytest
import torch
from torch import nn

from meranet_fast.models import (
    BLOCKS_PER_DEPTH,
    STAGE_WIDTHS,
    meranet10,
    meranet18,
    meranet34,
    resnet3d,
    resnet3d10,
    resnet3d18,
    resnet3d34,
)
from meranet_fast.nn import ChannelAttention3d, SpatioTemporalAttention3d


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _meta(builder, *args, **kwargs):
    """Build on the meta device: parameter counts need no memory, init or forward pass."""
    with torch.device("meta"):
        return builder(*args, **kwargs)


def _attention_params(depth, reduction=16, k=5, bias=True):
    """Hand count of what attention adds: per block CA 2*C*(C/r) (+ C/r + C) and STA 2*k^3 + 1."""
    total = 0
    for blocks, c in zip(BLOCKS_PER_DEPTH[depth], STAGE_WIDTHS):
        hidden = max(1, c // reduction)
        ca = 2 * c * hidden + ((hidden + c) if bias else 0)
        sta = 2 * k ** 3 + 1
        total += blocks * (ca + sta)
    return total


def test_resnet3d18_has_the_papers_parameter_count():
    assert _params(_meta(resnet3d18, num_classes=3, stem_t=3, shortcut="B")) == 33_167_811


def test_meranet18_adds_exactly_the_attention_parameters():
    extra = _params(_meta(meranet18)) - 33_167_811
    assert extra == _attention_params(18) == 91_088


@pytest.mark.parametrize("depth", [10, 18, 34])
@pytest.mark.parametrize("reduction, k", [(16, 5), (8, 3), (16, 7), (128, 5)])
def test_attention_parameter_overhead_all_depths(depth, reduction, k):
    vanilla = _meta(resnet3d, depth)
    meranet = _meta(resnet3d, depth, attention=True, reduction=reduction, st_kernel_size=k)
    assert _params(meranet) - _params(vanilla) == _attention_params(depth, reduction, k)


def test_mlp_variant_has_the_same_parameter_count():
    assert _params(_meta(meranet18, shared="mlp")) == _params(_meta(meranet18))


def test_shortcut_a_has_no_shortcut_parameters():
    model = _meta(resnet3d18, shortcut="A")
    assert not [n for n, _ in model.named_parameters() if ".shortcut." in n]
    # The three downsampling shortcuts of type B hold conv + BN weights (2 BN vectors each).
    b_shortcuts = sum(c_in * c_out + 2 * c_out for c_in, c_out in zip(STAGE_WIDTHS, STAGE_WIDTHS[1:]))
    assert _params(_meta(resnet3d18, shortcut="B")) - _params(model) == b_shortcuts


@pytest.mark.parametrize("builder", [resnet3d10, resnet3d18, resnet3d34, meranet10, meranet18, meranet34])
def test_forward_shapes_all_depths(builder):
    model = builder(num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 32, 32))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("t, hw, stem_t", [(1, 32, 3), (1, 33, 1), (5, 40, 7)])
def test_meranet_any_t_and_small_frames(shortcut, t, hw, stem_t):
    model = meranet10(shortcut=shortcut, stem_t=stem_t, in_channels=1, num_classes=2)
    out = model(torch.randn(2, 1, t, hw, hw))  # train mode: batch 2 so BN sees > 1 value at 1x1x1
    assert out.shape == (2, 2)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_gradient_reaches_input_and_every_parameter(shortcut):
    model = meranet10(shortcut=shortcut)
    x = torch.randn(2, 3, 2, 32, 32, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_stem_and_head_layout():
    model = _meta(resnet3d18, stem_t=5)
    conv, bn, relu, pool = model.stem
    assert conv.kernel_size == (5, 7, 7) and conv.stride == (1, 2, 2) and conv.padding == (2, 3, 3)
    assert conv.bias is None and isinstance(bn, nn.BatchNorm3d) and isinstance(relu, nn.ReLU)
    assert pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 1
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert [getattr(model, f"layer{i}")[0].conv1.stride for i in range(1, 5)] == [(1, 1, 1)] + [(2, 2, 2)] * 3
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool3d) and model.fc.in_features == 512


def test_attention_modules_only_in_meranet():
    vanilla = _meta(resnet3d18)
    assert not any(isinstance(m, (ChannelAttention3d, SpatioTemporalAttention3d)) for m in vanilla.modules())
    meranet = _meta(meranet18, st_kernel_size=7, backend="auto")
    stas = [m for m in meranet.modules() if isinstance(m, SpatioTemporalAttention3d)]
    assert len(stas) == 8 and all(m.backend == "auto" and m.conv.kernel_size == (7, 7, 7) for m in stas)
    assert sum(isinstance(m, ChannelAttention3d) for m in meranet.modules()) == 8


def test_paper_init():
    model = meranet10()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert m.weight.abs().max() <= bound + 1e-7, name
            assert m.weight.std() > bound / 4, name  # actually drawn, not left at zero
            assert m.bias is None or not m.bias.any(), name
        elif isinstance(m, nn.BatchNorm3d):
            assert (m.weight == 1).all() and not m.bias.any(), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=50), "depth.*50"),
    (dict(depth=18, shortcut="C"), "shortcut.*'C'"),
    (dict(depth=18, stem_t=2), "stem_t.*2"),
    (dict(depth=18, stem_t=0), "stem_t.*0"),
    (dict(depth=18, stem_t=3.0), "stem_t"),
    (dict(depth=18, num_classes=0), "num_classes"),
    (dict(depth=18, attention=True, st_kernel_size=4), "kernel_size.*4"),
    (dict(depth=18, attention=True, backend="fused"), "backend.*'fused'"),
    (dict(depth=18, attention=True, shared="linear"), "shared"),
])
def test_builder_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet3d(**kwargs)

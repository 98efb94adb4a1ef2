"""Fused channel attention (paper eq. 6-10) as the operator ``torch.ops.meranet.channel_attention``.

``a = sigmoid(We relu(Ws avg_thw y) + We relu(Ws max_thw y))``, ``out = y * a[n, c]``.

Schedule (kernel-level ops of a backend: ``ca_*`` in C++ for CPU and CUDA, ``ca_*_triton`` in Triton)::

    forward   ca_pool(y) -> avg, max, argmax_thw        read y                 1 pass
              shared network + sigmoid on [N, C]        (ATen, tiny)
              ca_scale(y, a) -> out                     read y, write out      2 passes
    backward  ca_scale_grad(g, y) -> dL/da              read g, y              2 passes
              network backward on [N, C]                (ATen, by hand, tiny)
              ca_input_grad(g, a, g_avg, g_max, argmax) read g, write gy       2 passes

3 passes over y-sized tensors forward and 4 backward. Eager PyTorch: forward mean, amax, mul =
4 passes; backward about 13 (mul backward: 2 products + a reduction; amax backward: compare mask,
scatter; mean backward: expand; two gradient accumulations of y-sized tensors).

Why the network's backward is written by hand instead of letting autograd see the torch ops between
two kernel ops: the gradient wrt y has three terms (``g * a``, the mean-pool term and the max-pool
term) and two of them are only known after the network's backward. With autograd composing
``pool -> network -> scale`` ops, each op returns its own y-sized gradient and autograd adds them
(+1 y-sized write and +3 passes for the accumulation); inside one operator the three terms are
written once by ``ca_input_grad``. The network is 2 matmuls on ``[2N, C]`` rows, so its backward
costs nothing; both variants of the paper (1x1x1 convs or Linear layers) pass their weights as
2-D matrices (``ChannelAttention3d.shared_weights()``) and biases may be ``None``.

The composition and its autograd are C++ (csrc/composition/channel_attention_op.cpp, shared pieces in
csrc/composition/composition.h): one composition for every backend, whose kernel-level ops it looks up by name
(``meranet::ca_pool`` or ``meranet::ca_pool_triton``), and a call costs one dispatch from Python and
its backward none (docs/design.md §4.2). So every backend but ``"eager"`` needs ``meranet_fast._C``
(:mod:`meranet_fast.ops.backends` says so); this module holds the public functions, the fake kernels
are in ``_fakes``, the input checks in ``_checks``.

argmax over T*H*W is the FIRST position of the maximum: on exact ties the whole max gradient goes
there (eager ``amax`` splits it evenly between the tied positions).

Small maps and the network run in float32 (float64 for float64 ``y``); weights may have another
floating dtype than ``y`` (autocast: bf16 activations, fp32 parameters) and get gradients in their
own dtype.
"""
from __future__ import annotations

import torch

from meranet_fast.ops._checks import check_channel_attention_inputs
from meranet_fast.ops.backends import resolve_backend
from meranet_fast.ops.reference import channel_attention_reference

__all__ = ["channel_attention", "channel_attention_with_map"]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, *, backend: str = "auto"):
    """``(out, a)``: fused channel attention and its per-channel weights ``a`` [N, C] (in y's dtype).

    Args:
        y: ``[N, C, T, H, W]`` float32 / float64 / bfloat16 / float16 (any strides; NCTHW and
            channels_last_3d run without a copy, and ``out`` keeps channels_last_3d).
        w_reduce: ``[C/r, C]``; b_reduce: ``[C/r]`` or ``None``.
        w_expand: ``[C, C/r]``; b_expand: ``[C]`` or ``None``.
        backend: one of :data:`meranet_fast.ops.backends.BACKENDS`.

    Both outputs are differentiable wrt y and all weights.
    """
    op = "channel_attention"
    check_channel_attention_inputs(op, y, w_reduce, b_reduce, w_expand, b_expand)
    resolved = resolve_backend(backend, y.device, y.dtype, op)
    if resolved == "eager":
        return channel_attention_reference(y, w_reduce, b_reduce, w_expand, b_expand)
    out, a, _, _, _ = torch.ops.meranet.channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, resolved)
    return out, a.to(y.dtype)


def channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, *, backend: str = "auto"):
    """Fused channel attention ``y * sigmoid(We relu(Ws avg y) + We relu(Ws max y))``; see
    :func:`channel_attention_with_map`."""
    return channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, backend=backend)[0]

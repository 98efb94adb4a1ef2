"""The fused residual-attention tail ``relu(STA(CA(y)) + shortcut)`` as ``torch.ops.meranet.ra_tail``.

With ``a`` the channel-attention weights ([N, C]), ``u = y * a``, ``P = [mean_c u; max_c u]``,
``A = sigmoid(conv3d(P, st_weight, st_bias, pad=k//2))`` and ``out = relu(u * A + shortcut)``.

Schedule (kernel-level ops of a backend; C++ on CPU and CUDA, Triton with the ``_triton`` suffix)::

    forward   ca_pool(y) -> avg, max, argmax_thw          read y                         1
              shared network + sigmoid -> a [N, C]         (ATen, tiny)
              ra_pool(y, a) -> P [N,2,T,H,W], I (argmax_c) read y                         1
              ra_attend(y, shortcut, a, P, w, b) -> out, A read y, shortcut, write out    3
    backward  ra_attend_bwd(g, out, y, a, A, P, w)         read g, out, y, write gz       4
                -> gz = g [out > 0] (= grad_shortcut), gP, gw, gb   (conv^T on the small maps)
              ca_scale_grad(gz, y, A, gP, I) -> dL/da      read gz, y                     2
              shared-network backward                      (ATen, tiny)
              ca_input_grad(gz, a, g_avg, g_max, argmax_thw, A, gP, I) -> gy
                                                           read gz, write gy              2

5 passes over y-sized tensors forward (the budget of docs/design.md §3: read y twice, read y + shortcut,
write out) and 8 backward (writing gz is free: grad_shortcut must be materialised anyway, and it
replaces reading g and out twice more). Eager PyTorch: about 13 forward (CA: mean, amax, mul;
STA: mean, amax, mul; add; relu) and 30+ backward.

Saved for backward: y, out (the block output, kept alive anyway), and [N, C] / [N, T, H, W] maps;
the shortcut is not saved. Inside the backward the gradient wrt u = y * a is
``gu = gz * A + gP[0] / C + gP[1] [c == I]`` and ``gy = gu * a + g_avg / THW + g_max [thw == argmax]``.
Ties in either max go to the first index (channel / flat position); eager ``amax`` splits them.

Composed in C++ with C++ autograd like ``channel_attention`` (csrc/composition/ra_tail_op.cpp; see that module's
docstring): ``meranet::ra_tail`` returns the saved maps next to ``out``, ``meranet::ra_tail_backward``
is the backward above; both have fake kernels (``_fakes``), so torch.compile and opcheck see two operators.
"""
from __future__ import annotations

import torch

from meranet_fast.ops._checks import check_ra_tail_inputs
from meranet_fast.ops.backends import resolve_backend
from meranet_fast.ops.reference import ra_tail_reference

__all__ = ["ra_tail"]


def ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, *, backend: str = "auto"):
    """``relu(STA(CA(y)) + shortcut)`` in one operator (paper eq. 10-12), differentiable wrt y, shortcut
    and every weight.

    Args:
        y: ``[N, C, T, H, W]`` float32 / float64 / bfloat16 / float16 (NCTHW or channels_last_3d run
            without a copy; ``out`` has y's layout).
        shortcut: like y (same shape, dtype, device; another layout is copied once into y's).
        w_reduce ``[C/r, C]``, b_reduce ``[C/r]`` or None, w_expand ``[C, C/r]``, b_expand ``[C]`` or None:
            the channel-attention network (``ChannelAttention3d.shared_weights()``).
        st_weight ``[1, 2, k, k, k]`` (k = 3, 5, 7; input channel 0 sees the mean map), st_bias ``[1]``
            or None: the spatio-temporal attention conv.
        backend: ``"auto"``, ``"eager"``, ``"cpp"``, ``"cuda"`` or ``"triton"``
            (:mod:`meranet_fast.ops.backends`).
    """
    op = "ra_tail"
    check_ra_tail_inputs(op, y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)
    resolved = resolve_backend(backend, y.device, y.dtype, op)
    if resolved == "eager":
        return ra_tail_reference(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)
    return torch.ops.meranet.ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias,
                                     resolved)[0]


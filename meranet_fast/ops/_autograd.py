"""The autograd formula of st_attention's (forward, backward) operator pairs, one definition for the C++
and the Triton pair (docs/design.md §2.1). channel_attention and ra_tail have theirs in C++
(csrc/composition/composition.h)."""
from __future__ import annotations

import torch

__all__ = ["register_st_attention_autograd"]


def register_st_attention_autograd(fwd_name: str, bwd_op) -> None:
    """Register the autograd formula of a fused forward operator ``fwd_name`` with its ``bwd_op``.

    Both operators follow the ``meranet::st_attention_fwd`` / ``_bwd`` schemas. The forward saves
    ``x``, ``weight`` and its by-products (attn, pooled, argmax), which are marked non-differentiable.
    """

    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        _, attn, pooled, argmax = output
        ctx.save_for_backward(x, weight, attn, pooled, argmax)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(attn, pooled, argmax)

    def backward(ctx, grad_out, _grad_attn, _grad_pooled, _grad_argmax):
        x, weight, attn, pooled, argmax = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = bwd_op(grad_out, x, weight, attn, pooled, argmax)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight if ctx.needs_input_grad[1] else None,
            grad_bias if ctx.has_bias and ctx.needs_input_grad[2] else None,
        )

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)

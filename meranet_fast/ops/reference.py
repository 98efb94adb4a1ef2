"""Eager PyTorch references for every fused operator.

Tests and benchmarks import these; they are the ground truth each backend is compared to.
They are written with plain differentiable PyTorch ops so autograd gives the reference gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "st_attention_reference",
    "channel_attention_reference",
    "ra_tail_reference",
]


def st_attention_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """Spatio-temporal attention (paper eq. 1-5).

    ``out = x * sigmoid(conv3d([mean_c x; max_c x], weight, bias, padding=k//2))``.

    Args:
        x: ``[N, C, T, H, W]``.
        weight: ``[1, 2, k, k, k]`` (channel 0 sees the mean map, channel 1 the max map).
        bias: ``[1]`` or ``None``.

    Returns:
        ``(out, attn)`` with ``attn`` of shape ``[N, 1, T, H, W]``.
    """
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    attn = torch.sigmoid(F.conv3d(pooled, weight, bias, padding=weight.shape[-1] // 2))
    return x * attn, attn


def channel_attention_reference(
    y: torch.Tensor,
    w_reduce: torch.Tensor,
    b_reduce: torch.Tensor | None,
    w_expand: torch.Tensor,
    b_expand: torch.Tensor | None,
):
    """Channel attention (paper eq. 6-10) with the shared two-layer network.

    ``a = sigmoid(We relu(Ws avg_thw y) + We relu(Ws max_thw y))``, ``out = y * a`` per channel.

    Args:
        y: ``[N, C, T, H, W]``.
        w_reduce: ``[C/r, C]`` (a 1x1x1 conv weight viewed as a matrix, or a Linear weight).
        b_reduce: ``[C/r]`` or ``None``.
        w_expand: ``[C, C/r]``.
        b_expand: ``[C]`` or ``None``.

    Returns:
        ``(out, a)`` with ``a`` of shape ``[N, C]``.
    """
    avg = y.mean(dim=(2, 3, 4))
    mx = y.amax(dim=(2, 3, 4))

    def shared(v):
        return F.linear(F.relu(F.linear(v, w_reduce, b_reduce)), w_expand, b_expand)

    a = torch.sigmoid(shared(avg) + shared(mx))
    return y * a[:, :, None, None, None], a


def ra_tail_reference(
    y: torch.Tensor,
    shortcut: torch.Tensor,
    w_reduce: torch.Tensor,
    b_reduce: torch.Tensor | None,
    w_expand: torch.Tensor,
    b_expand: torch.Tensor | None,
    st_weight: torch.Tensor,
    st_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The residual-attention block tail (paper eq. 10-12): ``relu(STA(CA(y)) + shortcut)``."""
    y_ca, _ = channel_attention_reference(y, w_reduce, b_reduce, w_expand, b_expand)
    y_st, _ = st_attention_reference(y_ca, st_weight, st_bias)
    return torch.relu(y_st + shortcut)

"""The two attention modules of the MERANet residual attention block (paper §3.1–3.2).

Both modules hold ordinary ``nn.Conv3d`` / ``nn.Linear`` parameters and compute their forward pass by
calling the eager references in :mod:`meranet_fast.ops.reference`, so the math lives in one place and
fused operators can take the very same parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from meranet_fast.ops._checks import KERNEL_SIZES
from meranet_fast.ops.backends import BACKENDS
from meranet_fast.ops.reference import channel_attention_reference, st_attention_reference
from meranet_fast.ops.st_attention import st_attention

__all__ = ["ChannelAttention3d", "SpatioTemporalAttention3d", "ST_KERNEL_SIZES", "check_backend"]

#: Kernel sizes of the spatio-temporal attention conv studied in the paper's ablation.
ST_KERNEL_SIZES = KERNEL_SIZES


def check_backend(value: str) -> str:
    """``value`` if it is a backend name of :mod:`meranet_fast.ops.backends`, else ``ValueError``."""
    if value not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
    return value

_SHARED_KINDS = ("conv", "mlp")


class ChannelAttention3d(nn.Module):
    """Channel attention (paper eq. 6–10): ``y * sigmoid(We relu(Ws avg(y)) + We relu(Ws max(y)))``.

    ``avg``/``max`` pool over T, H and W; ``Ws`` (``reduce``: C → C/r) and ``We`` (``expand``:
    C/r → C) are shared by both paths.

    Args:
        channels: C, the number of input channels.
        reduction: r; the hidden width is ``max(1, C // r)``.
        shared: ``"conv"`` (1×1×1 ``nn.Conv3d`` layers, the paper's choice) or ``"mlp"``
            (``nn.Linear`` layers, the paper's ablation). Both compute the same function.
        bias: whether ``reduce`` and ``expand`` have biases.
    """

    def __init__(self, channels: int, reduction: int = 16, shared: str = "conv", bias: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        if shared not in _SHARED_KINDS:
            raise ValueError(f"shared must be one of {_SHARED_KINDS}, got {shared!r}")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.hidden = hidden
        self.shared = shared
        if shared == "conv":
            self.reduce = nn.Conv3d(channels, hidden, 1, bias=bias)
            self.expand = nn.Conv3d(hidden, channels, 1, bias=bias)
        else:
            self.reduce = nn.Linear(channels, hidden, bias=bias)
            self.expand = nn.Linear(hidden, channels, bias=bias)

    def shared_weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(w_reduce [C/r, C], b_reduce, w_expand [C, C/r], b_expand)``: 2-D views of the weights.

        This is the argument list of :func:`~meranet_fast.ops.reference.channel_attention_reference`
        and of the fused operators; the views share storage (and autograd) with the parameters.
        """
        return (self.reduce.weight.flatten(1), self.reduce.bias,
                self.expand.weight.flatten(1), self.expand.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return channel_attention_reference(y, *self.shared_weights())[0]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, shared={self.shared!r}"


class SpatioTemporalAttention3d(nn.Module):
    """Spatio-temporal attention (paper eq. 1–5): ``x * sigmoid(conv_k([mean_c x; max_c x]))``.

    Holds ``conv = nn.Conv3d(2, 1, k, padding=k // 2)``; input channel 0 of the conv sees the mean
    map, channel 1 the max map.

    Args:
        kernel_size: k, one of :data:`ST_KERNEL_SIZES` (3, 5 or 7; the paper uses 5).
        bias: whether the conv has a bias.
        backend: a backend of :mod:`meranet_fast.ops.backends`, passed to
            :func:`meranet_fast.ops.st_attention`: ``"auto"`` (default: the compiled or Triton kernels that can
            run, the eager reference when none can, ``$MERANET_BACKEND`` when set), ``"eager"``, ``"cpp"``,
            ``"cuda"`` or ``"triton"``. An attribute: ``module.backend = "eager"`` switches it at run time;
            unknown names raise ``ValueError`` when assigned. Inside a
            :class:`~meranet_fast.nn.BasicBlock3d` it is also the block's ``backend``: every backend but
            ``"eager"`` runs the whole tail as one ``ra_tail`` operator.
    """

    def __init__(self, kernel_size: int = 5, bias: bool = True, backend: str = "auto"):
        super().__init__()
        if kernel_size not in ST_KERNEL_SIZES:
            raise ValueError(f"kernel_size must be one of {ST_KERNEL_SIZES}, got {kernel_size!r}")
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=bias)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "eager":
            return st_attention_reference(x, self.conv.weight, self.conv.bias)[0]
        return st_attention(x, self.conv.weight, self.conv.bias, backend=self.backend)

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, attn)`` with the attention map ``attn`` of shape ``[N, 1, T, H, W]`` (for saliency).

        Always runs the eager reference, whatever :attr:`backend` says, since the map is needed.
        """
        return st_attention_reference(x, self.conv.weight, self.conv.bias)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

"""The 3D residual block, with or without attention (paper §3.3, Fig. 4).

``BasicBlock3d(attention=False)`` is the plain 3D ResNet basic block; ``attention=True`` makes it the
paper's residual attention (RA) block. Both share the tail ``relu(attend(y) + shortcut(x))`` in
:meth:`BasicBlock3d._attention_tail`; with any backend but ``"eager"`` (the default is ``"auto"``) an RA
block runs that whole tail as one operator, :func:`meranet_fast.ops.ra_tail`, on the same parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meranet_fast.nn.attention import ChannelAttention3d, SpatioTemporalAttention3d, check_backend
from meranet_fast.ops.ra_tail import ra_tail

__all__ = ["BasicBlock3d", "ZeroPadShortcut3d", "make_shortcut", "SHORTCUT_TYPES"]

#: ``"A"``: parameter-free (strided subsampling + zero channels); ``"B"``: 1×1×1 conv + BN when needed.
SHORTCUT_TYPES = ("A", "B")


class ZeroPadShortcut3d(nn.Module):
    """Shortcut 'A': subsample by ``stride`` in T, H and W, then append zero channels.

    No parameters; gradients flow to the kept positions of the input. The subsampling picks the same
    positions a 3×3×3 conv with padding 1 and the same stride centres on, so shapes always match the
    residual branch (odd sizes and T=1 included).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be >= in_channels ({in_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s > 1:
            x = x[:, :, ::s, ::s, ::s]
        # F.pad's pad tuple runs from the last dim backwards: (W, W, H, H, T, T, C_before, C_after).
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The residual path ``d(I)`` of paper eq. 12: identity when the shape is kept, else type A or B."""
    if kind not in SHORTCUT_TYPES:
        raise ValueError(f"shortcut must be one of {SHORTCUT_TYPES}, got {kind!r}")
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut3d(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm3d(out_channels),
    )


class BasicBlock3d(nn.Module):
    """3D ResNet basic block; with ``attention=True`` the MERANet residual attention block.

    ``y = bn2(conv2(relu(bn1(conv1(x)))))``, then (attention only) ``y = sta(ca(y))``, then
    ``relu(y + shortcut(x))``. Convs are 3×3×3 without bias; ``conv1`` carries the stride.

    Args:
        in_channels, out_channels: channel counts of the block input and output.
        stride: stride of ``conv1`` (and of the shortcut) in T, H and W.
        shortcut: ``"A"`` or ``"B"``, see :func:`make_shortcut`.
        attention: add channel attention (``ca``) and spatio-temporal attention (``sta``).
        reduction, shared: channel-attention options (:class:`ChannelAttention3d`).
        st_kernel_size: spatio-temporal-attention kernel size (:class:`SpatioTemporalAttention3d`).
        backend: a backend of :mod:`meranet_fast.ops.backends` (default ``"auto"``), see :attr:`backend`.

    ``backend`` of an RA block is the ``backend`` of its ``sta`` module (one attribute, so
    :func:`meranet_fast.convert` and ``block.backend = ...`` switch the same thing):

    * ``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"``: the tail ``relu(sta(ca(y)) + shortcut(x))`` is one call
      to :func:`meranet_fast.ops.ra_tail` with that backend (``"auto"``: C++ on CPU, Triton on CUDA, the
      eager reference when neither can run, e.g. without the compiled extension; ``$MERANET_BACKEND``
      when set). If forward (pre-)hooks are registered on ``ca`` or ``sta`` (saliency maps, profiling
      scopes), the tail calls the two modules instead so the hooks fire; ``sta`` then still uses its
      fused op. (Hooks are ignored under ``torch.jit.trace``, e.g. by fvcore, which then records
      ``meranet::ra_tail``.)
    * ``"eager"``: ``ca`` and ``sta`` run the PyTorch reference, the numerical reference of the
      fused path.

    Without attention ``backend`` is accepted and validated but changes nothing.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: str = "B",
        attention: bool = False,
        reduction: int = 16,
        st_kernel_size: int = 5,
        shared: str = "conv",
        backend: str = "auto",
    ):
        super().__init__()
        self._plain_backend = check_backend(backend)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)
        self.attention = attention
        if attention:
            self.ca = ChannelAttention3d(out_channels, reduction=reduction, shared=shared)
            self.sta = SpatioTemporalAttention3d(st_kernel_size, backend=backend)

    @property
    def backend(self) -> str:
        """The attention backend; for an RA block, the ``backend`` of its ``sta`` module."""
        return self.sta.backend if self.attention else self._plain_backend

    @backend.setter
    def backend(self, value: str) -> None:
        if self.attention:
            self.sta.backend = value  # validates
        else:
            self._plain_backend = check_backend(value)

    def _attention_hooked(self) -> bool:
        """Whether ``ca`` or ``sta`` has forward (pre-)hooks, which need the modules to be called.

        Not while ``torch.jit.trace`` runs: tracers such as fvcore's ``FlopCountAnalysis`` hook every
        module only to name scopes, and must see the fused operator the model really runs.
        """
        if torch.jit.is_tracing():
            return False
        return any(m._forward_hooks or m._forward_pre_hooks for m in (self.ca, self.sta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self._attention_tail(y, self.shortcut(x))

    def _attention_tail(self, y: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``relu(sta(ca(y)) + identity)`` (paper eq. 10–12); ``relu(y + identity)`` without attention."""
        if self.attention:
            if self.sta.backend != "eager" and not self._attention_hooked():
                if identity.dtype != y.dtype:  # autocast: the shortcut may come out in another dtype
                    identity = identity.to(y.dtype)
                return ra_tail(y, identity, *self.ca.shared_weights(), self.sta.conv.weight, self.sta.conv.bias,
                               backend=self.sta.backend)
            y = self.sta(self.ca(y))
        return torch.relu(y + identity)

"""Attention modules and the residual (attention) block of MERANet."""
from meranet_fast.nn.attention import (
    ST_KERNEL_SIZES,
    ChannelAttention3d,
    SpatioTemporalAttention3d,
    check_backend,
)
from meranet_fast.nn.blocks import SHORTCUT_TYPES, BasicBlock3d, ZeroPadShortcut3d, make_shortcut

__all__ = [
    "ChannelAttention3d",
    "SpatioTemporalAttention3d",
    "BasicBlock3d",
    "ZeroPadShortcut3d",
    "make_shortcut",
    "check_backend",
    "ST_KERNEL_SIZES",
    "SHORTCUT_TYPES",
]

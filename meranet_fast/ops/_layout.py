"""The memory layout the fused kernels run in and write (docs/design.md §5), shared by every backend."""
from __future__ import annotations

import torch

__all__ = ["dense_format", "empty_dense_like"]


def dense_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last_3d when x is in it (and not also contiguous), contiguous otherwise (the Python twin of
    ``meranet::dense_format`` in csrc/cpu/channel_attention_cpu.cpp)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def empty_dense_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like x in :func:`dense_format` (x)."""
    return torch.empty_like(x, memory_format=dense_format(x))

"""Switch the attention modules of any model between the eager reference and the fused operators."""
from __future__ import annotations

from torch import nn

__all__ = ["convert", "IMPLS"]

IMPLS = ("fused", "eager")


def _fusable_types() -> tuple[type, ...]:
    """Module classes with an ``impl`` attribute taking ``"eager"`` / ``"fused"``."""
    from meranet_fast.nn.attention import SpatioTemporalAttention3d

    return (SpatioTemporalAttention3d,)


def convert(model: nn.Module, impl: str = "fused") -> nn.Module:
    """Set ``impl`` of every fusable module in ``model`` (in place) and return ``model``.

    ``impl="fused"`` makes :class:`~meranet_fast.nn.SpatioTemporalAttention3d` call
    :func:`meranet_fast.ops.st_attention` (backend chosen by device, see that function);
    ``impl="eager"`` switches back to the PyTorch reference. Parameters are untouched, so a model can be
    converted before or after loading a checkpoint, and back.
    """
    if impl not in IMPLS:
        raise ValueError(f"convert: impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    types = _fusable_types()
    for module in model.modules():
        if isinstance(module, types):
            module.impl = impl
    return model

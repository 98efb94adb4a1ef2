"""Switch the attention modules of any model between the backends of the fused operators and the eager
reference."""
from __future__ import annotations

from torch import nn

__all__ = ["convert"]


def _fusable_types() -> tuple[type, ...]:
    """Module classes with a ``backend`` attribute (the vocabulary of :mod:`meranet_fast.ops.backends`)."""
    from meranet_fast.nn.attention import SpatioTemporalAttention3d

    return (SpatioTemporalAttention3d,)


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Set ``backend`` of every fusable module in ``model`` (in place) and return ``model``.

    ``backend="auto"`` (default) makes :class:`~meranet_fast.nn.SpatioTemporalAttention3d` (and the residual
    attention blocks it belongs to) call the fused operators with the backend the device allows;
    ``"cpp"``, ``"cuda"`` or ``"triton"`` ask for one; ``"eager"`` switches back to the PyTorch reference.
    Parameters are untouched, so a model can be converted before or after loading a checkpoint, and back.
    """
    from meranet_fast.nn.attention import check_backend

    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        check_backend(backend)
    except ValueError as exc:
        raise ValueError(f"convert: {exc}") from None
    types = _fusable_types()
    for module in model.modules():
        if isinstance(module, types):
            module.backend = backend
    return model

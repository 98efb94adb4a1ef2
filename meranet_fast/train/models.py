"""Models by name (``meranet18``, ``resnet3d10``, ...), with the attention backend chosen once here."""
from __future__ import annotations

import re

from torch import nn

__all__ = ["MODEL_NAME_PATTERN", "build_model", "default_impl", "resolve_impl"]

#: ``meranet<depth>`` (with residual attention) or ``resnet3d<depth>`` (plain), depth 10, 18 or 34.
MODEL_NAME_PATTERN = re.compile(r"^(meranet|resnet3d)(10|18|34)$")


def default_impl() -> str:
    """``"fused"`` when the fused spatio-temporal attention operator imports, else ``"eager"``."""
    try:
        from meranet_fast.ops import st_attention  # noqa: F401
    except ImportError:
        return "eager"
    return "fused"


def resolve_impl(impl: str) -> str:
    """``"auto"`` → :func:`default_impl`; ``"eager"``/``"fused"`` pass through."""
    if impl == "auto":
        return default_impl()
    if impl not in ("eager", "fused"):
        raise ValueError(f"impl must be 'auto', 'eager' or 'fused', got {impl!r}")
    return impl


def build_model(name: str, num_classes: int, impl: str = "auto", **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: ``meranet10|18|34`` (MERANet: residual attention blocks) or ``resnet3d10|18|34``.
        num_classes: classifier outputs.
        impl: spatio-temporal attention backend, ``"auto"``, ``"eager"`` or ``"fused"`` (MERANet only).
        kwargs: passed to :func:`meranet_fast.models.resnet3d` (``stem_t``, ``shortcut``,
            ``st_kernel_size``, ...).
    """
    m = MODEL_NAME_PATTERN.match(name)
    if m is None:
        raise ValueError(f"unknown model {name!r}; expected meranet10/18/34 or resnet3d10/18/34")
    from meranet_fast.models import resnet3d

    return resnet3d(int(m.group(2)), num_classes=num_classes, attention=m.group(1) == "meranet",
                    impl=resolve_impl(impl), **kwargs)

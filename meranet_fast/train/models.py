"""Models by name (``meranet18``, ``resnet3d10``, ...)."""
from __future__ import annotations

import re

from torch import nn

__all__ = ["MODEL_NAME_PATTERN", "build_model"]

#: ``meranet<depth>`` (with residual attention) or ``resnet3d<depth>`` (plain), depth 10, 18 or 34.
MODEL_NAME_PATTERN = re.compile(r"^(meranet|resnet3d)(10|18|34)$")


def build_model(name: str, num_classes: int, backend: str = "auto", **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: ``meranet10|18|34`` (MERANet: residual attention blocks) or ``resnet3d10|18|34``.
        num_classes: classifier outputs.
        backend: the attention backend (:mod:`meranet_fast.ops.backends`: ``"auto"``, ``"eager"``, ``"cpp"``,
            ``"cuda"``, ``"triton"``; MERANet only).
        kwargs: passed to :func:`meranet_fast.models.resnet3d` (``stem_t``, ``shortcut``,
            ``st_kernel_size``, ...).
    """
    m = MODEL_NAME_PATTERN.match(name)
    if m is None:
        raise ValueError(f"unknown model {name!r}; expected meranet10/18/34 or resnet3d10/18/34")
    from meranet_fast.models import resnet3d

    return resnet3d(int(m.group(2)), num_classes=num_classes, attention=m.group(1) == "meranet",
                    backend=backend, **kwargs)

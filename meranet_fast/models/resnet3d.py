"""3D ResNet (Hara et al. style) and MERANet, its residual-attention version (paper §3.4).

Layout: ``stem`` (Conv3d 3→64, kernel (t,7,7), stride (1,2,2) → BN → ReLU → MaxPool3d(3, 2, 1)),
``layer1``..``layer4`` (widths 64/128/256/512, strides 1/2/2/2), ``avgpool`` and ``fc``.
With shortcut "B", ``stem_t=3`` and 3 classes, ResNet3d-18 has 33,167,811 parameters, the paper's
"3D ResNet" count. The analysis code relies on these module names for its per-stage report.
"""
from __future__ import annotations

import torch
from torch import nn

from meranet_fast.nn.blocks import BasicBlock3d

__all__ = [
    "ResNet3d",
    "BLOCKS_PER_DEPTH",
    "STAGE_WIDTHS",
    "init_weights_",
    "resnet3d",
    "resnet3d10",
    "resnet3d18",
    "resnet3d34",
    "meranet10",
    "meranet18",
    "meranet34",
]

#: Number of basic blocks in each of the four stages, per network depth.
BLOCKS_PER_DEPTH: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}
#: Output channels of the four stages (the stem outputs ``STAGE_WIDTHS[0]``).
STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)


def init_weights_(model: nn.Module) -> nn.Module:
    """Paper §4.3 init, in place: Xavier-uniform conv and linear weights, zero biases, BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class ResNet3d(nn.Module):
    """3D ResNet of :class:`~meranet_fast.nn.BasicBlock3d`; ``attention=True`` gives MERANet.

    Args:
        blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for depth 18.
        num_classes: outputs of ``fc``.
        attention: use residual attention blocks (channel + spatio-temporal attention).
        stem_t: temporal kernel size of the stem conv; odd and >= 1 so the stem keeps T.
        shortcut: ``"A"`` (parameter-free) or ``"B"`` (1×1×1 conv + BN where the shape changes).
        in_channels: input channels (3 for RGB).
        reduction, shared: channel-attention options; st_kernel_size: spatio-temporal-attention kernel
            size. Used only with ``attention=True``.
        backend: the attention backend of every block (:mod:`meranet_fast.ops.backends`; see
            :attr:`BasicBlock3d.backend <meranet_fast.nn.BasicBlock3d.backend>`); ``"auto"`` (default) falls
            back to the eager reference by itself where no fused kernel can run. Switch later with
            :func:`meranet_fast.convert` or :attr:`backend`.

    Input ``[N, in_channels, T, H, W]`` with any T >= 1 and H, W >= 32; output ``[N, num_classes]``.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 3,
        attention: bool = False,
        stem_t: int = 3,
        shortcut: str = "B",
        in_channels: int = 3,
        reduction: int = 16,
        st_kernel_size: int = 5,
        shared: str = "conv",
        backend: str = "auto",
    ):
        super().__init__()
        if len(blocks) != len(STAGE_WIDTHS) or any(n < 1 for n in blocks):
            raise ValueError(f"blocks must be {len(STAGE_WIDTHS)} positive counts, got {blocks!r}")
        if not isinstance(stem_t, int) or stem_t < 1 or stem_t % 2 == 0:
            raise ValueError(f"stem_t must be an odd integer >= 1, got {stem_t!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        width = STAGE_WIDTHS[0]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, (stem_t, 7, 7), stride=(1, 2, 2), padding=(stem_t // 2, 3, 3),
                      bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        block_kwargs = dict(shortcut=shortcut, attention=attention, reduction=reduction,
                            st_kernel_size=st_kernel_size, shared=shared, backend=backend)
        for i, (n, out_width, stride) in enumerate(zip(blocks, STAGE_WIDTHS, _STAGE_STRIDES), start=1):
            stage = [BasicBlock3d(width, out_width, stride, **block_kwargs)]
            stage += [BasicBlock3d(out_width, out_width, 1, **block_kwargs) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            width = out_width
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(width, num_classes)
        init_weights_(self)

    @property
    def backend(self) -> str:
        """The blocks' attention ``backend``; ``"mixed"`` if they differ.

        Assigning sets every block (as :func:`meranet_fast.convert` does)."""
        backends = {m.backend for m in self.modules() if isinstance(m, BasicBlock3d)}
        return backends.pop() if len(backends) == 1 else "mixed"

    @backend.setter
    def backend(self, value: str) -> None:
        for m in self.modules():
            if isinstance(m, BasicBlock3d):
                m.backend = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet3d(
    depth: int,
    num_classes: int = 3,
    attention: bool = False,
    stem_t: int = 3,
    shortcut: str = "B",
    in_channels: int = 3,
    reduction: int = 16,
    st_kernel_size: int = 5,
    shared: str = "conv",
    backend: str = "auto",
) -> ResNet3d:
    """Build a 3D ResNet (``attention=False``) or MERANet (``attention=True``) of depth 10, 18 or 34.

    See :class:`ResNet3d` for the other arguments.
    """
    if depth not in BLOCKS_PER_DEPTH:
        raise ValueError(f"depth must be one of {tuple(BLOCKS_PER_DEPTH)}, got {depth!r}")
    return ResNet3d(BLOCKS_PER_DEPTH[depth], num_classes=num_classes, attention=attention, stem_t=stem_t,
                    shortcut=shortcut, in_channels=in_channels, reduction=reduction,
                    st_kernel_size=st_kernel_size, shared=shared, backend=backend)


def resnet3d10(**kwargs) -> ResNet3d:
    """3D ResNet-10; keyword arguments as :func:`resnet3d`."""
    return resnet3d(10, **kwargs)


def resnet3d18(**kwargs) -> ResNet3d:
    """3D ResNet-18 (33,167,811 parameters with the defaults); keyword arguments as :func:`resnet3d`."""
    return resnet3d(18, **kwargs)


def resnet3d34(**kwargs) -> ResNet3d:
    """3D ResNet-34; keyword arguments as :func:`resnet3d`."""
    return resnet3d(34, **kwargs)


def meranet10(**kwargs) -> ResNet3d:
    """MERANet-10: :func:`resnet3d` with ``depth=10, attention=True``."""
    return resnet3d(10, attention=True, **kwargs)


def meranet18(**kwargs) -> ResNet3d:
    """MERANet-18, the paper's model: :func:`resnet3d` with ``depth=18, attention=True``."""
    return resnet3d(18, attention=True, **kwargs)


def meranet34(**kwargs) -> ResNet3d:
    """MERANet-34: :func:`resnet3d` with ``depth=34, attention=True``."""
    return resnet3d(34, attention=True, **kwargs)

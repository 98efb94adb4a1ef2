"""Model builders: 3D ResNet-10/18/34 and MERANet-10/18/34."""
from meranet_fast.models.resnet3d import (
    BLOCKS_PER_DEPTH,
    STAGE_WIDTHS,
    ResNet3d,
    init_weights_,
    meranet10,
    meranet18,
    meranet34,
    resnet3d,
    resnet3d10,
    resnet3d18,
    resnet3d34,
)

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

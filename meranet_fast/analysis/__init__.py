"""Parameter and FLOP reports (fvcore) of 3D ResNet vs MERANet, with handles for the fused ops."""
from meranet_fast.analysis.flops import (
    FLOP_HANDLES,
    PAPER_MERANET18,
    PAPER_RESNET3D18,
    STAGES,
    ModelStats,
    compare_models,
    elementwise_flops,
    flop_count_analysis,
    model_stats,
    overhead,
    reduction_flops,
    register_flop_handle,
    st_attention_flops,
)

__all__ = [
    "FLOP_HANDLES",
    "STAGES",
    "PAPER_RESNET3D18",
    "PAPER_MERANET18",
    "ModelStats",
    "register_flop_handle",
    "elementwise_flops",
    "reduction_flops",
    "st_attention_flops",
    "flop_count_analysis",
    "model_stats",
    "compare_models",
    "overhead",
]

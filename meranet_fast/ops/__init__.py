"""Fused operators (``torch.ops.meranet.*``) and their eager references."""
from meranet_fast.ops.reference import (  # noqa: F401
    channel_attention_reference,
    ra_tail_reference,
    st_attention_reference,
)

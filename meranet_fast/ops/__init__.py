"""Fused operators (``torch.ops.meranet.*``) and their eager references."""
from meranet_fast.ops.channel_attention import (  # noqa: F401
    channel_attention,
    channel_attention_with_map,
)
from meranet_fast.ops.ra_tail import ra_tail  # noqa: F401
from meranet_fast.ops.reference import (  # noqa: F401
    channel_attention_reference,
    ra_tail_reference,
    st_attention_reference,
)
from meranet_fast.ops.st_attention import (  # noqa: F401
    st_attention,
    st_attention_with_map,
)

"""meranet_fast: fused attention kernels and a fast MERANet for facial micro-expression recognition."""
__version__ = "0.1.0"
from meranet_fast.convert import convert  # noqa: E402,F401

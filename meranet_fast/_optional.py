"""Optional dependencies: imported where a feature uses them, with an error that says how to install them.

The package and its core (operators, models, training) need none of them; pyproject.toml's extras list
them: ``[flops]`` fvcore, ``[spreadsheets]`` openpyxl, ``[plots]`` matplotlib, ``[full]`` all three.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["OPTIONAL", "available", "require", "pyplot"]

#: module -> (what needs it, the pyproject extra that installs it)
OPTIONAL = {
    "fvcore": ("FLOP counts (meranet_fast.analysis, `meranet-fast flops`)", "flops"),
    "openpyxl": ("the annotation spreadsheets (.xlsx) of the datasets", "spreadsheets"),
    "matplotlib": ("PNG plots (training curves, benchmark charts, saliency maps)", "plots"),
}


def available(module: str) -> bool:
    """Whether the optional ``module`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec (e.g. set to None to block the import)
        return False


def require(module: str) -> ModuleType:
    """Import the optional ``module``, or raise ImportError naming the feature and how to install it."""
    purpose, extra = OPTIONAL[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} need {module}, which cannot be imported ({exc}); install it with "
                          f"`pip install {module}` or the [{extra}] extra of meranet_fast") from exc


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt

    return plt

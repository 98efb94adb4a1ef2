"""Learning-rate schedule of the paper's recipe: untuned linear warmup × cosine annealing, per optimizer step.

Warmup follows Ma & Yarats (2021), "On the adequacy of untuned warmup for adaptive optimization": the
multiplier is ``min(1, t / τ)`` at optimizer step ``t = 1, 2, ...`` with ``τ = 2 / (1 - β2)`` (2000 steps
for Adam's default β2 = 0.999). Cosine annealing (Loshchilov & Hutter) takes the rate from its base
value to 0 over the run: ``0.5 · (1 + cos(π · (t - 1) / T))`` for ``T`` total steps.
"""
from __future__ import annotations

import math

import torch

__all__ = ["untuned_warmup_steps", "warmup_cosine", "make_scheduler"]


def untuned_warmup_steps(beta2: float) -> int:
    """``τ = 2 / (1 - β2)`` optimizer steps, rounded."""
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
    return max(1, int(round(2.0 / (1.0 - beta2))))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step + 1`` (``step`` counts completed steps from 0)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine`; call ``.step()`` after every optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps))

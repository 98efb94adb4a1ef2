"""Evaluation protocols: the paper's stratified hold-out split, and leave-one-subject-out (LOSO)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "stratified_split", "holdout_protocol", "loso_protocol"]


@dataclass(frozen=True)
class Split:
    """Index lists into one sample list. ``name`` identifies the split (``"holdout"``, ``"loso-sub01"``)."""

    name: str
    train: list[int]
    val: list[int]
    test: list[int]


def stratified_split(labels: list, fraction: float, seed: int,
                     indices: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Split ``indices`` (default: all) into ``(kept, held_out)`` with ``fraction`` of each class held out.

    Per class, ``round(n * fraction)`` samples are held out, at least one when the class has two or
    more samples and ``fraction > 0``, and never all of them. Seeded and order-independent: the result
    depends only on the labels, ``fraction`` and ``seed``. Both lists come back sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    indices = list(range(len(labels))) if indices is None else list(indices)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in sorted({labels[i] for i in indices}, key=str):
        members = [i for i in indices if labels[i] == cls]
        order = [members[j] for j in rng.permutation(len(members))]
        n_held = int(round(len(members) * fraction))
        if fraction > 0:
            n_held = max(n_held, 1)
        n_held = min(n_held, len(members) - 1)
        held += order[:n_held]
        kept += order[n_held:]
    return sorted(kept), sorted(held)


def holdout_protocol(labels: list, test_fraction: float, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The paper's protocol (§4.3): stratified train/test split, then a stratified train/validation split
    of the training part (80/20 by default), both seeded."""
    trainval, test = stratified_split(labels, test_fraction, seed)
    train, val = stratified_split(labels, val_fraction, seed + 1, trainval)
    return Split("holdout", train, val, test)


def loso_protocol(labels: list, subjects: list, val_fraction: float = 0.2, seed: int = 0) -> list[Split]:
    """Leave-one-subject-out: one split per subject, whose samples are the test set.

    The validation set (for model selection) is a stratified ``val_fraction`` of the *other* subjects'
    samples, so the test subject is never used for training or for choosing the epoch.
    """
    folds = []
    for subject in sorted(set(subjects), key=str):
        test = [i for i, s in enumerate(subjects) if s == subject]
        rest = [i for i, s in enumerate(subjects) if s != subject]
        train, val = stratified_split(labels, val_fraction, seed, rest)
        folds.append(Split(f"loso-{subject}", train, val, test))
    return folds

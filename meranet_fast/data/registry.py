"""Datasets by name, with the paper's per-dataset settings (class subsets §4.1, clip depth §4.2, split §4.3)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meranet_fast.data.releases import (
    MEGC2019_CLASSES,
    load_casme1,
    load_casme2,
    load_casme_sq,
    load_megc2019,
    load_samm,
    load_smic,
)
from meranet_fast.data.samples import SampleIndex
from meranet_fast.data.synthetic import SYNTH_CLASSES, make_synthetic

__all__ = ["DatasetSpec", "DATASETS", "load_dataset", "parse_roots"]


@dataclass(frozen=True)
class DatasetSpec:
    """Defaults of one dataset.

    Attributes:
        classes: the class subset used (paper §4.1).
        clip_len: temporal depth T (paper §4.2).
        test_fraction: held-out test fraction of the hold-out protocol (paper §4.3).
        min_frames: samples with fewer frames are skipped (paper §4.2: 16 for CASME I/II).
        loader: ``loader(root, annotation) -> SampleIndex`` (``None`` for the synthetic set).
        about: one line for ``--help``.
    """

    classes: tuple[str, ...]
    clip_len: int
    test_fraction: float
    min_frames: int
    loader: Callable[..., SampleIndex] | None
    about: str


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(SYNTH_CLASSES, 32, 0.25, 0, None,
                             "built-in synthetic micro-expressions (no download)"),
    "casme1": DatasetSpec(("disgust", "repression", "tense"), 32, 0.25, 16, load_casme1, "CASME I"),
    "casme2": DatasetSpec(("disgust", "happiness", "surprise"), 32, 0.25, 16, load_casme2, "CASME II"),
    "casme_sq": DatasetSpec(("happy", "anger", "disgust"), 16, 0.2, 0, load_casme_sq,
                            "CAS(ME)^2, micro-expressions"),
    # The paper does not give SAMM's split; 75/25 as for the CASME sets is assumed.
    "samm": DatasetSpec(("anger", "happiness", "other"), 64, 0.25, 0, load_samm, "SAMM"),
    "smic": DatasetSpec(MEGC2019_CLASSES, 32, 0.25, 0, load_smic, "SMIC-HS"),
    "megc2019": DatasetSpec(MEGC2019_CLASSES, 32, 0.25, 0, None,
                            "MEGC2019 composite; --data-root casme2=DIR,samm=DIR[,smic=DIR]"),
}


def parse_roots(text: str) -> dict[str, str]:
    """``"casme2=/d/c2,samm=/d/samm"`` → ``{"casme2": "/d/c2", "samm": "/d/samm"}``."""
    roots = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"expected NAME=DIR, got {part!r}")
        roots[key.strip()] = value.strip()
    return roots


def load_dataset(name: str, root: str | None = None, annotation: str | None = None,
                 classes: tuple[str, ...] | None = None, synthetic: dict | None = None,
                 min_frames: int | None = None) -> tuple[SampleIndex, tuple[str, ...]]:
    """Load a dataset by name and keep its class subset.

    Args:
        name: a key of :data:`DATASETS`.
        root: the release folder (``megc2019``: ``casme2=DIR,samm=DIR[,smic=DIR]``; unused for synthetic).
        annotation: explicit spreadsheet path (default: found in ``root``).
        classes: class subset (default: the paper's, :attr:`DatasetSpec.classes`).
        synthetic: keyword arguments of :func:`~meranet_fast.data.synthetic.make_synthetic`.
        min_frames: override :attr:`DatasetSpec.min_frames`.

    Returns:
        ``(index, classes)``; the index's issues list the annotation gaps handled and samples skipped.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    spec = DATASETS[name]
    classes = tuple(classes) if classes else spec.classes
    if name == "synthetic":
        index = make_synthetic(classes=classes, **(synthetic or {}))
    elif root is None:
        raise ValueError(f"dataset {name!r} needs a data root")
    elif name == "megc2019":
        index = load_megc2019(parse_roots(root))
    else:
        index = spec.loader(root, annotation)
    index = index.restrict(classes, spec.min_frames if min_frames is None else min_frames)
    found = {s.label for s in index.samples}
    absent = [c for c in classes if c not in found]
    if absent:
        raise ValueError(f"{name}: no samples of class(es) {absent} (labels found: {sorted(found)})")
    return index, classes

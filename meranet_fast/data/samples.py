"""What a micro-expression sample is, how its frames are found on disk, and how a clip is cut from it.

Every loader (official releases and the synthetic generator) produces :class:`Sample` objects; the
torch dataset (:mod:`meranet_fast.data.dataset`) only ever sees samples.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Sample",
    "SampleIndex",
    "AnnotationError",
    "FrameError",
    "IMAGE_EXTENSIONS",
    "frame_number",
    "index_frames",
    "frames_in_range",
    "resolve_apex",
    "clip_indices",
    "normalize_label",
]

#: File extensions treated as video frames (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_TRAILING_INT = re.compile(r"(\d+)\.[A-Za-z]+$")


class AnnotationError(ValueError):
    """A spreadsheet is missing, unreadable, or lacks the columns a loader needs."""


class FrameError(FileNotFoundError):
    """A frame folder or frame file is missing or cannot be decoded."""


@dataclass(frozen=True)
class Sample:
    """One micro-expression sample.

    Attributes:
        dataset: dataset key, e.g. ``"casme2"``.
        subject: subject id, unique within the dataset (the LOSO grouping key).
        name: sample id within the subject (e.g. CASME II ``EP02_01f``).
        label: emotion label, normalised by :func:`normalize_label` (e.g. ``"happiness"``).
        frames: frame file paths in temporal order, onset to offset (empty for synthetic samples).
        apex: index of the apex frame in ``frames`` (or in the synthetic sequence).
        synthetic: the generator parameters of a synthetic sample (``None`` for real data).
    """

    dataset: str
    subject: str
    name: str
    label: str
    frames: tuple[str, ...]
    apex: int
    synthetic: Any = field(default=None, compare=False)

    @property
    def uid(self) -> str:
        """``dataset/subject/name``: unique id of the sample."""
        return f"{self.dataset}/{self.subject}/{self.name}"

    @property
    def num_frames(self) -> int:
        return self.synthetic.num_frames if self.synthetic is not None else len(self.frames)


@dataclass
class SampleIndex:
    """The samples a loader found, and the annotation problems it worked around.

    Attributes:
        dataset: dataset key.
        samples: the usable samples.
        issues: one human-readable line per annotation gap or skipped row (missing apex, bad offset,
            too few frames, ...). :meth:`warn` reports them.
    """

    dataset: str
    samples: list[Sample]
    issues: list[str] = field(default_factory=list)

    def warn(self) -> None:
        """Emit one ``UserWarning`` summarising :attr:`issues` (nothing when there are none)."""
        if self.issues:
            warnings.warn(f"{self.dataset}: {len(self.issues)} annotation issue(s) handled:\n  "
                          + "\n  ".join(self.issues), stacklevel=2)

    def restrict(self, classes: tuple[str, ...] | None, min_frames: int = 0) -> SampleIndex:
        """Keep the samples whose label is in ``classes`` (all when ``None``) with >= ``min_frames`` frames.

        Samples dropped for being too short are added to the issues (the paper keeps CASME I/II samples
        with at least 16 frames).
        """
        kept, issues = [], list(self.issues)
        for s in self.samples:
            if classes is not None and s.label not in classes:
                continue
            if s.num_frames < min_frames:
                issues.append(f"{s.uid}: {s.num_frames} frames < {min_frames}, sample skipped")
                continue
            kept.append(s)
        return SampleIndex(self.dataset, kept, issues)


def normalize_label(label: Any) -> str:
    """Lower-case, trimmed emotion label (``"Happiness "`` → ``"happiness"``)."""
    return str(label).strip().lower()


def frame_number(filename: str) -> int | None:
    """The frame number in a frame file name: the digits before the extension.

    ``img46.jpg`` → 46, ``reg_img46.jpg`` → 46, ``006_05562.jpg`` → 5562, ``EP01_5-12.jpg`` → 12;
    ``None`` when the name does not end in digits + extension.
    """
    m = _TRAILING_INT.search(filename)
    return int(m.group(1)) if m else None


def index_frames(folder: str) -> dict[int, str]:
    """``{frame number: path}`` of the image files in ``folder``.

    Raises:
        FrameError: the folder does not exist, holds no numbered image files, or two files carry the same
            number.
    """
    if not os.path.isdir(folder):
        raise FrameError(f"frame folder not found: {folder}")
    frames: dict[int, str] = {}
    for entry in os.listdir(folder):
        if not entry.lower().endswith(IMAGE_EXTENSIONS):
            continue
        n = frame_number(entry)
        if n is None:
            continue
        path = os.path.join(folder, entry)
        if n in frames:
            raise FrameError(f"two frames numbered {n} in {folder}: {os.path.basename(frames[n])}, {entry}")
        frames[n] = path
    if not frames:
        raise FrameError(f"no numbered image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return frames


def _expected_name(numbered: dict[int, str], missing: int) -> str:
    """The path a missing frame would have, following the naming (prefix, zero padding) of a neighbour."""
    neighbour = numbered[min(numbered, key=lambda k: abs(k - missing))]
    folder, name = os.path.split(neighbour)
    m = _TRAILING_INT.search(name)
    digits = m.group(1)
    width = len(digits) if digits.startswith("0") else 0
    return os.path.join(folder, name[:m.start(1)] + str(missing).zfill(width) + name[m.end(1):])


def frames_in_range(numbered: dict[int, str], first: int, last: int, uid: str | None = None) -> list[str]:
    """Paths of frames ``first..last`` (inclusive), which must all exist.

    Raises:
        FrameError: naming the first missing frame file (a gap in the folder) and the sample ``uid``.
    """
    paths = []
    for n in range(first, last + 1):
        if n not in numbered:
            sample = f"sample {uid}: " if uid else ""
            raise FrameError(f"{sample}missing frame {_expected_name(numbered, n)} "
                             f"(the sample needs frames {first}..{last}; the folder has a gap)")
        paths.append(numbered[n])
    return paths


def _as_int(value: Any) -> int | None:
    """An annotation cell as a frame number, or ``None`` for blanks and markers like ``'/'``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() and value > 0 else None
    text = str(value).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def resolve_apex(uid: str, folder: str, onset: Any, apex: Any, offset: Any,
                 issues: list[str]) -> tuple[list[str], int]:
    """Frames onset..offset of a sample in ``folder`` and the apex index among them.

    Annotation gaps are handled and appended to ``issues``: a missing or non-numeric apex (e.g. ``'/'``)
    or one outside onset..offset becomes the middle frame; a missing offset (0 or blank) or one before the
    onset becomes the last frame in the folder; a missing onset becomes the first frame in the folder.

    Raises:
        FrameError: the folder or a frame inside onset..offset is missing.
    """
    numbered = index_frames(folder)
    on, ap, off = _as_int(onset), _as_int(apex), _as_int(offset)
    if on is None:
        on = min(numbered)
        issues.append(f"{uid}: onset {onset!r} not a frame number, using first frame {on}")
    if off is None or off < on:
        new_off = max(numbered)
        issues.append(f"{uid}: offset {offset!r} invalid, using last frame {new_off}")
        off = new_off
    frames = frames_in_range(numbered, on, off, uid)
    if ap is None or not on <= ap <= off:
        ap = (on + off) // 2
        issues.append(f"{uid}: apex {apex!r} missing or outside onset..offset {on}..{off}, "
                      f"using the middle frame {ap}")
    return frames, ap - on


def clip_indices(num_frames: int, apex: int, length: int) -> list[int]:
    """``length`` frame indices centred on ``apex``, replicating the edge frames past either end.

    The clip covers ``apex - length // 2 .. apex - length // 2 + length - 1``; indices outside
    ``0..num_frames-1`` are clamped, so a short video repeats its first/last frame (paper §4.2).
    """
    if num_frames < 1:
        raise ValueError("a sample needs at least one frame")
    if length < 1:
        raise ValueError(f"clip length must be >= 1, got {length}")
    if not 0 <= apex < num_frames:
        raise ValueError(f"apex index {apex} outside 0..{num_frames - 1}")
    start = apex - length // 2
    return [min(max(start + i, 0), num_frames - 1) for i in range(length)]

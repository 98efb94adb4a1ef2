"""Checkpoints: atomic writes, integrity checks, the previous version kept, and the RNG state to resume exactly.

A checkpoint is a ``torch.save`` zip archive. Every record of it carries a CRC-32, which ``torch.load`` does
not check: :func:`load_checkpoint` checks them first, so a file truncated or corrupted on disk raises
:class:`CheckpointError` naming the file instead of loading damaged tensors. ``save_checkpoint(...,
keep_previous=True)`` keeps the version it replaces as ``<name>.prev.pt``, which
:func:`load_checkpoint_or_previous` falls back to.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_checkpoint_or_previous", "previous_path",
           "rng_state", "set_rng_state"]


#: The first bytes of a zip archive (a local file header), which torch.save writes.
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or not a checkpoint; the message names the file."""


def previous_path(path: str) -> str:
    """Where :func:`save_checkpoint` keeps the version of ``path`` it replaced: ``last.pt`` -> ``last.prev.pt``."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.pt'}"


def _keep_as_previous(path: str) -> None:
    """Make ``previous_path(path)`` a copy of ``path`` (a hard link when the file system allows), atomically."""
    prev = previous_path(path)
    tmp = prev + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here: copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def save_checkpoint(state: dict[str, Any], path: str, keep_previous: bool = False) -> None:
    """``torch.save(state)`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``.

    A reader (or a crash mid-write) never sees a partial file: ``path`` holds either the previous
    checkpoint or the new one. With ``keep_previous`` the checkpoint being replaced stays available as
    :func:`previous_path` (``path`` exists throughout).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            _keep_as_previous(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_integrity(path: str) -> None:
    """Raise CheckpointError when a zip checkpoint is cut short or a record fails its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupted: its record {bad!r} fails the CRC-32 check")


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, after checking its integrity.

    Checkpoints hold Python objects (configuration, RNG states), so they are unpickled in full
    (``weights_only=False``): load only checkpoints you trust.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted or not a checkpoint (naming it).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is truncated: the file is empty")
    if zipfile.is_zipfile(path):  # torch.save's format; older pickle-only files go straight to torch.load
        _check_integrity(path)
    else:
        with open(path, "rb") as f:
            if f.read(4) == _ZIP_MAGIC:
                raise CheckpointError(f"checkpoint {path} is truncated: a zip archive of {size} bytes whose end "
                                      "(the central directory) is missing")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, ImportError,
            pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint {path} is truncated, corrupted or not a checkpoint "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a meranet_fast checkpoint (it holds a {type(state).__name__})")
    return state


def load_checkpoint_or_previous(path: str, accept: Callable[[dict], str | None] = lambda state: None,
                                log: Callable[[str], Any] = print) -> tuple[dict[str, Any], str]:
    """``(state, path it came from)``: ``path``, or its previous version when ``path`` cannot be used.

    ``accept(state)`` returns ``None`` for a usable checkpoint, or why it is not. A fallback is reported
    through ``log``.

    Raises:
        CheckpointError: neither file is usable; the message names both and says how to go on.
    """
    prev = previous_path(path)
    problems = []
    for candidate in (path, prev):
        if candidate == prev and not os.path.exists(prev):
            problems.append(f"no previous checkpoint {prev}")
            break
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        why = accept(state)
        if why is not None:
            problems.append(f"{candidate}: {why}")
            continue
        if candidate == prev:
            log(f"warning: {problems[0]}; using the previous checkpoint {prev} instead")
        return state, candidate
    raise CheckpointError("; ".join(problems) + ". Restore the file from a copy, or start the run again "
                                                "(another --out, or delete this run folder)")


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Decoding frames into resized uint8 clips, and the on-disk cache of decoded clips."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable

import numpy as np

from meranet_fast.data.samples import FrameError

__all__ = ["load_frame", "load_frames", "ClipCache", "default_cache_dir"]


def load_frame(path: str, size: tuple[int, int]) -> np.ndarray:
    """One frame as an RGB uint8 array ``[H, W, 3]`` resized to ``size = (H, W)`` (bilinear, antialiased).

    Raises:
        FrameError: the file is missing or cannot be decoded (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FrameError(f"frame not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FrameError(f"cannot decode frame {path}: {e}") from None


def load_frames(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """Frames as ``[T, H, W, 3]`` uint8; a path repeated (edge replication) is decoded once."""
    decoded: dict[str, np.ndarray] = {}
    for p in paths:
        if p not in decoded:
            decoded[p] = load_frame(p, size)
    return np.stack([decoded[p] for p in paths])


def default_cache_dir() -> str:
    """``$MERANET_CACHE`` or ``$XDG_CACHE_HOME/meranet_fast/clips`` (``~/.cache/...`` by default)."""
    if os.environ.get("MERANET_CACHE"):
        return os.environ["MERANET_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meranet_fast", "clips")


class ClipCache:
    """Decoded, resized clips stored as ``.npy`` (uint8 ``[T, H, W, 3]``), one file per sample and size.

    File: ``<root>/<dataset>/<subject>_<name>_<T>x<H>x<W>_<digest>.npy`` where the digest covers whatever
    identifies the clip's content (the frame paths it was cut from, or the synthetic parameters), so a
    changed annotation or clip length gets a new entry. Files are written to a temporary name and moved
    into place (``os.replace``), so DataLoader workers and DDP ranks can share one cache safely; an
    unreadable entry is rebuilt.
    """

    def __init__(self, root: str):
        self.root = root

    def path(self, dataset: str, stem: str, shape: tuple[int, int, int], identity: str) -> str:
        digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        return os.path.join(self.root, dataset, f"{safe}_{'x'.join(map(str, shape))}_{digest}.npy")

    def get(self, path: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The array cached at ``path``, built with ``build()`` and stored on a miss."""
        if os.path.exists(path):
            try:
                return np.load(path)
            except (OSError, ValueError, EOFError):
                pass  # a torn or foreign file: rebuild it below
        clip = build()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, clip)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return clip

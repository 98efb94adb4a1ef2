"""The torch dataset: apex-centred clips, resized, flipped (training), normalised per sample (paper §4.2)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from meranet_fast.data.frames import ClipCache, load_frames
from meranet_fast.data.samples import FrameError, Sample, clip_indices
from meranet_fast.data.synthetic import render_frames

__all__ = ["ClipDataset", "clip_to_tensor"]


def clip_to_tensor(clip: np.ndarray, flip: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` → float32 ``[3, T, H, W]``, optionally flipped left-right, then normalised.

    Normalisation (paper §4.2): each sample gets its per-channel mean subtracted and is divided by its
    per-channel standard deviation (computed over T, H and W); ``eps`` guards constant clips.
    """
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float()
    if flip:
        x = x.flip(-1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + eps)


class ClipDataset(Dataset):
    """Clips of ``clip_len`` frames centred on each sample's apex, with edge-frame replication.

    Args:
        samples: the samples.
        classes: class names; a sample's target is ``classes.index(sample.label)``.
        clip_len: temporal depth T (paper: SAMM 64, CASME I/II 32, CAS(ME)² 16).
        size: ``(H, W)`` frames are resized to (paper: 112×112).
        train: apply the random horizontal flip.
        flip_p: flip probability when training (paper: 0.5).
        cache: a :class:`~meranet_fast.data.frames.ClipCache`, or ``None`` to decode every time.
        seed: seed of the flips. Whether sample ``i`` is flipped in epoch ``e`` depends only on
            ``(seed, e, i)`` (set the epoch with :meth:`set_epoch`), not on worker processes or global RNG
            state, so a resumed run sees exactly the same augmentation.

    Items are ``(x, target)`` with ``x`` float32 ``[3, T, H, W]``.
    """

    def __init__(self, samples: list[Sample], classes: tuple[str, ...], clip_len: int,
                 size: tuple[int, int] = (112, 112), train: bool = False, flip_p: float = 0.5,
                 cache: ClipCache | None = None, seed: int = 0):
        missing = sorted({s.label for s in samples} - set(classes))
        if missing:
            raise ValueError(f"samples have labels {missing} outside classes {classes}")
        if clip_len < 1 or min(size) < 1:
            raise ValueError(f"clip_len and size must be positive, got {clip_len}, {size}")
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.clip_len = clip_len
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        self.flip_p = flip_p
        self.cache = cache
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of ``epoch`` (call before iterating; workers copy the dataset per epoch)."""
        self.epoch = epoch

    @property
    def targets(self) -> list[int]:
        return [self.classes.index(s.label) for s in self.samples]

    def raw_clip(self, i: int) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` clip of sample ``i`` (from the cache when there is one).

        Raises:
            FrameError: a frame is missing or cannot be decoded (e.g. a truncated JPEG); the message names
                the file and the sample.
        """
        try:
            return self._raw_clip(i)
        except FrameError as e:
            raise FrameError(f"sample {self.samples[i].uid} (index {i}): {e}") from None

    def _raw_clip(self, i: int) -> np.ndarray:
        s = self.samples[i]
        idx = clip_indices(s.num_frames, s.apex, self.clip_len)
        if s.synthetic is not None:
            def build():
                return render_frames(s.synthetic, idx, self.size)
            identity = f"{s.synthetic!r}|{idx}"
        else:
            paths = [s.frames[j] for j in idx]

            def build():
                return load_frames(paths, self.size)
            identity = "\n".join(paths)
        if self.cache is None:
            return build()
        path = self.cache.path(s.dataset, f"{s.subject}_{s.name}", (self.clip_len, *self.size), identity)
        return self.cache.get(path, build)

    def flipped(self, i: int) -> bool:
        """Whether sample ``i`` is flipped in the current epoch."""
        if not self.train or self.flip_p <= 0:
            return False
        return bool(np.random.default_rng([self.seed, self.epoch, i]).random() < self.flip_p)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return clip_to_tensor(self.raw_clip(i), flip=self.flipped(i)), self.classes.index(self.samples[i].label)

"""A deterministic synthetic micro-expression dataset: drawn faces with short, subtle, local motions.

Each synthetic subject has its own face geometry, skin tone and background. A sample is a short sequence
(the onset..offset run of a real release) in which one class-specific facial action rises to a peak at
the apex frame and relaxes again, as in a micro-expression:

- ``surprise``: brows raised, eyes widened, lips parted;
- ``happiness``: mouth corners lifted and pulled outwards;
- ``disgust``: brows lowered and drawn together, nose-wrinkle lines, upper lip raised.

Class-independent distractors make the task non-trivial: slow head drift, random blinks, illumination
flicker and pixel noise. The motions are a pixel or two at 56×56 (subtle), well within what a 3D CNN
picks up. Everything is a function of ``(seed, index)``: the same arguments give the same pixels, and
nothing is downloaded. :func:`write_casme2_style` stores a generated set as a CASME II-style release
(folders of JPEGs + coding spreadsheet) that :func:`~meranet_fast.data.releases.load_casme2` reads back.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from meranet_fast._optional import require
from meranet_fast.data.samples import Sample, SampleIndex

__all__ = ["SYNTH_CLASSES", "SyntheticFace", "SyntheticClip", "make_synthetic", "render_frames",
           "write_casme2_style"]

#: Classes of the synthetic set (the paper's CASME II subset).
SYNTH_CLASSES = ("disgust", "happiness", "surprise")


@dataclass(frozen=True)
class SyntheticFace:
    """Geometry and colours of one synthetic subject (coordinates in face units, y pointing up)."""

    scale: float
    aspect: float
    eye_dx: float
    eye_y: float
    brow_gap: float
    mouth_y: float
    mouth_w: float
    smile: float
    skin: tuple[float, float, float]
    background: tuple[float, float, float]
    ink: tuple[float, float, float]
    lips: tuple[float, float, float]


@dataclass(frozen=True)
class SyntheticClip:
    """Everything needed to render one synthetic sample.

    Attributes:
        face: the subject's face.
        label: one of :data:`SYNTH_CLASSES`.
        num_frames: frames in the sequence.
        onset, apex, offset: frame indices where the action starts, peaks and ends.
        intensity: motion amplitude multiplier (1.0 = default subtlety).
        drift: head translation over the whole sequence (face units, x and y).
        blink: frame index of a blink (-1 for none).
        noise: pixel noise standard deviation (intensity units, 0..1 scale).
        seed: noise seed.
    """

    face: SyntheticFace
    label: str
    num_frames: int
    onset: int
    apex: int
    offset: int
    intensity: float
    drift: tuple[float, float]
    blink: int
    noise: float
    seed: int

    def activation(self, t: float) -> float:
        """Action strength at frame ``t``: 0 outside onset..offset, half-cosine rise to 1 at the apex and fall."""
        if t <= self.onset or t >= self.offset:
            return 0.0
        if t <= self.apex:
            u = (t - self.onset) / max(self.apex - self.onset, 1)
        else:
            u = (self.offset - t) / max(self.offset - self.apex, 1)
        return 0.5 - 0.5 * math.cos(math.pi * u)


def _make_face(rng: np.random.Generator) -> SyntheticFace:
    tone = rng.uniform(0.35, 0.85)
    skin = (tone + 0.12, tone * 0.85 + 0.05, tone * 0.7)
    bg = tuple(rng.uniform(0.05, 0.6, size=3))
    return SyntheticFace(
        scale=rng.uniform(0.78, 0.92), aspect=rng.uniform(1.15, 1.35), eye_dx=rng.uniform(0.36, 0.46),
        eye_y=rng.uniform(0.18, 0.3), brow_gap=rng.uniform(0.16, 0.22), mouth_y=rng.uniform(-0.5, -0.4),
        mouth_w=rng.uniform(0.3, 0.4), smile=rng.uniform(-0.03, 0.03),
        skin=tuple(float(np.clip(c, 0, 1)) for c in skin), background=tuple(float(c) for c in bg),
        ink=tuple(float(c) for c in rng.uniform(0.02, 0.15, size=3)),
        lips=(float(rng.uniform(0.5, 0.75)), float(rng.uniform(0.15, 0.3)), float(rng.uniform(0.2, 0.3))))


def make_synthetic(num_subjects: int = 8, per_class: int = 4, classes: tuple[str, ...] = SYNTH_CLASSES,
                   num_frames: int = 24, seed: int = 0, intensity: float = 1.0,
                   noise: float = 0.03) -> SampleIndex:
    """A synthetic dataset of ``num_subjects * len(classes) * per_class`` samples (subjects ``sub01``...).

    Args:
        num_subjects: synthetic people (the LOSO groups).
        per_class: samples per class and subject.
        classes: subset of :data:`SYNTH_CLASSES`.
        num_frames: frames per sample (onset..offset of the sequence).
        seed: everything (faces, timing, noise) derives from it.
        intensity: motion amplitude (1.0 default; smaller is harder).
        noise: pixel noise standard deviation.
    """
    unknown = [c for c in classes if c not in SYNTH_CLASSES]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; choose from {SYNTH_CLASSES}")
    if num_frames < 3:
        raise ValueError(f"num_frames must be >= 3, got {num_frames}")
    samples = []
    for k in range(num_subjects):
        face = _make_face(np.random.default_rng([seed, 1, k]))
        subject = f"sub{k + 1:02d}"
        for label in classes:
            for j in range(per_class):
                rng = np.random.default_rng([seed, 2, k, SYNTH_CLASSES.index(label), j])
                n = num_frames
                apex = int(rng.integers(round(0.35 * (n - 1)), round(0.65 * (n - 1)) + 1))
                onset = int(rng.integers(0, max(1, apex - 2)))
                offset = int(rng.integers(min(n - 1, apex + 2), n))
                blink = int(rng.integers(0, n)) if rng.random() < 0.5 else -1
                clip = SyntheticClip(face, label, n, onset, apex, offset, intensity,
                                     tuple(float(v) for v in rng.uniform(-0.04, 0.04, size=2)), blink, noise,
                                     int(rng.integers(2**31)))
                samples.append(Sample("synthetic", subject, f"{subject}_{label}_{j:02d}", label, (), apex, clip))
    return SampleIndex("synthetic", samples)


def _ellipse(x, y, cx, cy, rx, ry, px):
    """Anti-aliased filled ellipse coverage (0..1) on the grid; ``px`` = one pixel in the grid's units."""
    d = (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * min(rx, ry)
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _stroke(x, y, x0, y0, x1, y1, width, px):
    """Anti-aliased line segment coverage of the given width."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) - width / 2
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _paint(img, cover, colour, opacity=1.0):
    a = (cover * opacity)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour)


def _render(clip: SyntheticClip, t: int, size: tuple[int, int], noise_rng: np.random.Generator) -> np.ndarray:
    f = clip.face
    h, w = size
    a = clip.activation(t) * clip.intensity
    # Face units: x right, y up, face half-width = 1 before scaling; the image spans [-1/scale, 1/scale].
    span = 1.0 / f.scale
    ys, xs = np.meshgrid(np.linspace(span * f.aspect * 0.85, -span * f.aspect * 0.85, h),
                         np.linspace(-span, span, w), indexing="ij")
    px = 2 * span / w
    progress = t / max(clip.num_frames - 1, 1)
    x = xs - clip.drift[0] * progress
    y = ys - clip.drift[1] * progress
    is_ = {c: float(clip.label == c) for c in SYNTH_CLASSES}

    img = np.empty((h, w, 3), np.float64)
    img[...] = f.background
    _paint(img, _ellipse(x, y, 0.0, 0.0, 1.0, f.aspect, px), f.skin)
    # Eyes (whites, then irises); surprise widens them, a blink closes them.
    openness = 1.0 + 0.45 * a * is_["surprise"]
    if clip.blink >= 0 and abs(t - clip.blink) <= 1:
        openness *= 0.15
    for side in (-1, 1):
        ex = side * f.eye_dx
        _paint(img, _ellipse(x, y, ex, f.eye_y, 0.17, 0.075 * openness, px), (0.95, 0.95, 0.93))
        _paint(img, _ellipse(x, y, ex, f.eye_y, 0.065, min(0.065, 0.075 * openness), px), f.ink)
    # Brows: surprise raises them, disgust lowers them and tilts the inner ends down.
    lift = 0.11 * a * is_["surprise"] - 0.07 * a * is_["disgust"]
    tilt = 0.06 * a * is_["disgust"]
    for side in (-1, 1):
        inner, outer = side * (0.12 - 0.5 * tilt), side * (f.eye_dx + 0.2)
        by = f.eye_y + f.brow_gap + lift
        _paint(img, _stroke(x, y, inner, by - tilt, outer, by + 0.02, 0.055, px), f.ink)
    # Nose, and disgust's wrinkle lines beside its bridge.
    _paint(img, _stroke(x, y, 0.0, 0.05, 0.03, -0.2, 0.035, px), f.ink, 0.6)
    wrinkle = a * is_["disgust"]
    if wrinkle > 0:
        for side in (-1, 1):
            for k in range(2):
                y0 = 0.02 - 0.07 * k
                _paint(img, _stroke(x, y, side * 0.07, y0, side * 0.17, y0 + 0.03, 0.025, px), f.ink,
                       0.8 * wrinkle)
    # Mouth: a curved band; happiness lifts and widens the corners, disgust raises the upper lip,
    # surprise parts the lips.
    corners = f.smile + 0.14 * a * is_["happiness"] - 0.03 * a * is_["disgust"]
    half_w = f.mouth_w * (1 + 0.15 * a * is_["happiness"])
    centre_y = f.mouth_y + 0.05 * a * is_["disgust"]
    u = np.clip(x / half_w, -1.0, 1.0)
    curve = centre_y + corners * u ** 2
    band = np.clip(0.5 - (np.abs(y - curve) - 0.035) / px, 0, 1) * np.clip(0.5 - (np.abs(x) - half_w) / px, 0, 1)
    _paint(img, band, f.lips)
    gap = 0.07 * a * is_["surprise"]
    if gap > 0:
        _paint(img, _ellipse(x, y, 0.0, centre_y, half_w * 0.55, gap, px), (0.08, 0.02, 0.03))
    # Illumination flicker and sensor noise.
    img *= 1.0 + noise_rng.normal(0.0, 0.015)
    img += noise_rng.normal(0.0, clip.noise, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_frames(clip: SyntheticClip, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """Frames ``indices`` of a synthetic sample as uint8 ``[len(indices), H, W, 3]`` at ``size = (H, W)``.

    Frame ``t`` always has the same pixels (its noise is seeded by ``(clip.seed, t)``), whatever else is
    rendered.
    """
    cache: dict[int, np.ndarray] = {}
    for t in indices:
        if t not in cache:
            cache[t] = _render(clip, t, size, np.random.default_rng([clip.seed, t]))
    return np.stack([cache[t] for t in indices])


def write_casme2_style(index: SampleIndex, out: str, size: tuple[int, int] = (112, 112)) -> str:
    """Write synthetic samples as a CASME II-style release under ``out``; returns the spreadsheet path.

    Frames go to ``out/<subject>/<name>/img<N>.jpg`` (numbered from 1) and the annotations to
    ``out/CASME2-coding-synthetic.xlsx`` with the CASME II columns (Subject, Filename, OnsetFrame,
    ApexFrame, OffsetFrame, Estimated Emotion).
    """
    from PIL import Image

    wb = require("openpyxl").Workbook()
    ws = wb.active
    ws.append(["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"])
    for s in index.samples:
        folder = os.path.join(out, s.subject, s.name)
        os.makedirs(folder, exist_ok=True)
        frames = render_frames(s.synthetic, list(range(s.num_frames)), size)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(os.path.join(folder, f"img{t + 1}.jpg"), quality=95)
        ws.append([s.subject[3:], s.name, 1, s.apex + 1, s.num_frames, s.label])
    path = os.path.join(out, "CASME2-coding-synthetic.xlsx")
    wb.save(path)
    return path

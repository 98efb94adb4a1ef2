"""Running a trained checkpoint on new input: a folder of frames or a video file."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from meranet_fast.data.dataset import clip_to_tensor
from meranet_fast.data.frames import load_frames
from meranet_fast.data.samples import FrameError, clip_indices, index_frames
from meranet_fast.train.checkpoint import load_checkpoint
from meranet_fast.train.models import build_model

__all__ = ["load_trained", "InputClip", "read_input", "predict"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")


def load_trained(checkpoint: str, device: str | torch.device = "cpu",
                 backend: str = "auto") -> tuple[nn.Module, dict]:
    """The model of a training checkpoint (``best.pt`` or ``last.pt``) in eval mode, and its metadata
    (``classes``, ``clip_len``, ``size``, ``model``, ...)."""
    state = load_checkpoint(checkpoint)
    if "meta" not in state:
        raise ValueError(f"{checkpoint} is not a meranet-fast training checkpoint (no 'meta' entry)")
    meta = state["meta"]
    model = build_model(meta["model"], meta["num_classes"], backend, **meta["model_kwargs"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


@dataclass
class InputClip:
    """A clip cut from the input around its apex.

    Attributes:
        clip: uint8 ``[T, H, W, 3]`` at the model's size, apex at index ``T // 2``.
        apex_frame: the apex frame at its original resolution (uint8 ``[h, w, 3]``), for overlays.
        apex_label: which frame was taken as the apex (for messages).
    """

    clip: np.ndarray
    apex_frame: np.ndarray
    apex_label: str


def _read_video(path: str) -> list[np.ndarray]:
    try:
        import cv2
    except ImportError:
        raise ImportError("reading video files needs OpenCV: pip install opencv-python-headless "
                          "(or opencv-python), or pass a folder of frames instead") from None
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise FrameError(f"cannot open video {path}")
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise FrameError(f"no frames could be decoded from video {path}")
    return frames


def read_input(path: str, clip_len: int, size: int, apex: int | None = None) -> InputClip:
    """Cut a ``clip_len``-frame clip centred on the apex from a frame folder or a video file.

    Args:
        path: a folder of numbered frames (``img46.jpg``, ...) or a video file (needs OpenCV).
        apex: the apex: a frame number (from the file names) for folders, a 0-based frame index for videos;
            default: the middle frame.
    """
    if os.path.isdir(path):
        numbered = index_frames(path)
        numbers = sorted(numbered)
        if apex is not None and apex not in numbered:
            raise FrameError(f"apex frame {apex} not in {path} (frames {numbers[0]}..{numbers[-1]})")
        pos = numbers.index(apex) if apex is not None else (len(numbers) - 1) // 2
        idx = clip_indices(len(numbers), pos, clip_len)
        clip = load_frames([numbered[numbers[i]] for i in idx], (size, size))
        apex_path = numbered[numbers[pos]]
        from PIL import Image

        with Image.open(apex_path) as im:
            full = np.asarray(im.convert("RGB"))
        return InputClip(clip, full, os.path.basename(apex_path))
    if not os.path.isfile(path):
        raise FrameError(f"input not found: {path}")
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        raise FrameError(f"{path}: expected a folder of frames or a video file ({', '.join(VIDEO_EXTENSIONS)})")
    frames = _read_video(path)
    if apex is not None and not 0 <= apex < len(frames):
        raise FrameError(f"apex index {apex} outside the video's {len(frames)} frames ({path})")
    pos = (len(frames) - 1) // 2 if apex is None else apex
    from PIL import Image

    resized = {}
    for i in clip_indices(len(frames), pos, clip_len):
        if i not in resized:
            resized[i] = np.asarray(Image.fromarray(frames[i]).resize((size, size), Image.BILINEAR))
    clip = np.stack([resized[i] for i in clip_indices(len(frames), pos, clip_len)])
    return InputClip(clip, frames[pos], f"frame {pos} of {os.path.basename(path)}")


def predict(model: nn.Module, clip: np.ndarray) -> np.ndarray:
    """Class probabilities (float64 ``[K]``) of one uint8 clip, normalised as in training."""
    device = next(model.parameters()).device
    x = clip_to_tensor(clip).unsqueeze(0).to(device)
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1)[0].cpu().double().numpy()

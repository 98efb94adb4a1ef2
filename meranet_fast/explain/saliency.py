"""Saliency maps (paper §5.4): Grad-CAM on the last conv stage, and the spatio-temporal attention maps.

Both are returned for the whole clip (``[T, H, W]``, upsampled to the input size): Grad-CAM divided by
its maximum (0..1), attention maps as they are (the sigmoid outputs, 0..1). The figures show them at the
apex frame, min-max stretched for contrast, overlaid on the apex image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meranet_fast._optional import pyplot, require
from meranet_fast.data.dataset import clip_to_tensor
from meranet_fast.nn import SpatioTemporalAttention3d

__all__ = ["grad_cam", "attention_maps", "overlay", "save_overlays"]


def _to_input_size(maps: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """``[N, 1, t, h, w]`` → ``[N, T, H, W]`` (trilinear)."""
    return F.interpolate(maps.float(), size=shape, mode="trilinear", align_corners=False)[:, 0].cpu().numpy()


def grad_cam(model: nn.Module, clip: np.ndarray, target: int | None = None,
             layer: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Grad-CAM (Selvaraju et al.) of a 3D CNN for one uint8 clip ``[T, H, W, 3]``.

    ``cam = relu(Σ_c α_c A_c)`` with ``A`` the activations of ``layer`` (default ``model.layer4``, the
    last conv stage) and ``α_c`` the mean over t, h, w of ``∂ logit_target / ∂ A_c``.

    Returns:
        ``(cam [T, H, W], probabilities [K], target)``; the cam is divided by its maximum (all zeros when no
        position has positive evidence); ``target`` defaults to the predicted class. With small inputs the
        last stage is 1×1×1 and the map is uniform: use inputs of 64 pixels or more.
    """
    layer = layer if layer is not None else getattr(model, "layer4", None)
    if layer is None:
        raise ValueError("model has no 'layer4'; pass the layer for Grad-CAM explicitly")
    device = next(model.parameters()).device
    x = clip_to_tensor(clip).unsqueeze(0).to(device)
    store = {}

    def keep(module, inputs, output):
        store["act"] = output
        output.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x).float()
            probs = torch.softmax(logits, 1)[0].detach().cpu().double().numpy()
            target = int(probs.argmax()) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"].detach().float(), store["grad"].float()
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)
    cam = _to_input_size(F.relu((weights * act).sum(1, keepdim=True)), tuple(x.shape[2:]))[0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), probs, target


def attention_maps(model: nn.Module, clip: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The spatio-temporal attention map of every :class:`SpatioTemporalAttention3d` in ``model``.

    Forward hooks recompute each module's map from its input with ``forward_with_map`` (so this works
    whatever backend the module runs). Returns ``[(module name, map [T, H, W]), ...]`` in forward
    order; empty for models without attention (3D ResNet).
    """
    device = next(model.parameters()).device
    x = clip_to_tensor(clip).unsqueeze(0).to(device)
    found: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, SpatioTemporalAttention3d):
            def hook(mod, inputs, output, name=name):
                found.append((name, mod.forward_with_map(inputs[0])[1]))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    shape = tuple(x.shape[2:])
    return [(name, _to_input_size(m, shape)[0]) for name, m in found]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (uint8 ``[h, w, 3]``) blended with ``heat`` (any size, resized; min-max stretched) in jet."""
    colormaps = require("matplotlib").colormaps
    from PIL import Image

    h, w = image.shape[:2]
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    heat_img = Image.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    colour = colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3] * 255
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).astype(np.uint8)


def save_overlays(path: str, apex_frame: np.ndarray, panels: list[tuple[str, np.ndarray]], title: str = "") -> str:
    """A PNG figure: the apex frame, then each ``(caption, heat map at the apex)`` overlaid on it."""
    plt = pyplot()

    n = len(panels) + 1
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + (0.4 if title else 0)), squeeze=False)
    images = [("apex frame", apex_frame)] + [(c, overlay(apex_frame, h)) for c, h in panels]
    for ax in axes.flat:
        ax.axis("off")
    for ax, (caption, img) in zip(axes.flat, images):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

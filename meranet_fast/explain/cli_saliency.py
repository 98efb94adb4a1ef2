"""Saliency maps of a trained model for one clip (paper §5.4), written as PNG.

Writes to --out:
  gradcam.png    Grad-CAM of the last conv stage (layer4) for the predicted (or --target) class,
                 at the apex frame, overlaid on the apex image;
  attention.png  the spatio-temporal attention map of every residual attention block at the apex
                 (MERANet only; 3D ResNets have none);
  maps.npz       the full maps, [T, H, W] each, for further analysis.
The input is a folder of numbered frames or a video file (needs OpenCV), as for `predict`.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder of frames, or a video file")
    parser.add_argument("--checkpoint", required=True, help="best.pt (or last.pt) of a training run")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and maps.npz")
    parser.add_argument("--apex", type=int, default=None,
                        help="apex frame: its number in the file names for a folder, its 0-based index for a "
                             "video (default: the middle frame)")
    parser.add_argument("--target", default=None,
                        help="class name to explain with Grad-CAM (default: the predicted class)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    from meranet_fast.ops.backends import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="attention backend of the forward pass (meranet_fast.ops.backends; default: auto)")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from meranet_fast.data.samples import FrameError
    from meranet_fast.explain.inference import load_trained, read_input
    from meranet_fast.explain.saliency import attention_maps, grad_cam, save_overlays
    from meranet_fast.train.checkpoint import CheckpointError

    try:
        model, meta = load_trained(args.checkpoint, args.device, args.backend)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    classes = meta["classes"]
    if args.target is not None and args.target not in classes:
        print(f"error: --target {args.target!r} is not one of the model's classes {classes}", file=sys.stderr)
        return 1
    try:
        clip = read_input(args.input, meta["clip_len"], meta["size"], args.apex)
    except (FrameError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    target = None if args.target is None else classes.index(args.target)
    cam, probs, target = grad_cam(model, clip.clip, target)
    apex_t = clip.clip.shape[0] // 2
    os.makedirs(args.out, exist_ok=True)
    head = f"predicted {classes[int(probs.argmax())]} ({probs.max():.2f}); apex {clip.apex_label}"
    written = [save_overlays(os.path.join(args.out, "gradcam.png"), clip.apex_frame,
                             [(f"Grad-CAM: {classes[target]}", cam[apex_t])], head)]
    attn = attention_maps(model, clip.clip)
    if attn:
        written.append(save_overlays(os.path.join(args.out, "attention.png"), clip.apex_frame,
                                     [(name, m[apex_t]) for name, m in attn], "spatio-temporal attention, " + head))
    np.savez_compressed(os.path.join(args.out, "maps.npz"), gradcam=cam, probs=probs, classes=np.array(classes),
                        **{f"attention/{name}": m for name, m in attn})
    written.append(os.path.join(args.out, "maps.npz"))
    print(head)
    print("wrote " + ", ".join(written))
    return 0

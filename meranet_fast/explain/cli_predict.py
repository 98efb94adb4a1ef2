"""Class probabilities of a trained model for one micro-expression clip.

The input is a folder of numbered frames (img1.jpg, img2.jpg, ... as in the releases) or a video file
(read with OpenCV, which must then be installed: pip install opencv-python-headless). A clip of the
model's depth and size is cut around the apex (--apex; default: the middle frame) and normalised as in
training.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="folder of frames, or a video file")
    parser.add_argument("--checkpoint", required=True, help="best.pt (or last.pt) of a training run")
    parser.add_argument("--apex", type=int, default=None,
                        help="apex frame: its number in the file names for a folder, its 0-based index for a "
                             "video (default: the middle frame)")
    parser.add_argument("--json", default=None, help="also write the probabilities to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    from meranet_fast.ops.backends import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="attention backend (meranet_fast.ops.backends; default: auto)")


def main(args: argparse.Namespace) -> int:
    from meranet_fast.data.samples import FrameError
    from meranet_fast.explain.inference import load_trained, predict, read_input
    from meranet_fast.train.checkpoint import CheckpointError

    try:
        model, meta = load_trained(args.checkpoint, args.device, args.backend)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        clip = read_input(args.input, meta["clip_len"], meta["size"], args.apex)
    except (FrameError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    probs = predict(model, clip.clip)
    classes = meta["classes"]
    order = probs.argsort()[::-1]
    print(f"{args.input} (apex: {clip.apex_label}): predicted {classes[order[0]]}")
    for i in order:
        print(f"  {classes[i]:<12s} {probs[i]:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"input": args.input, "apex": clip.apex_label, "predicted": classes[order[0]],
                       "probabilities": {c: float(p) for c, p in zip(classes, probs)}}, f, indent=2)
    return 0

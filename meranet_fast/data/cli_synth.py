"""Write the built-in synthetic micro-expression set as a CASME II-style release.

The output folder holds `<subject>/<sample>/img<N>.jpg` frames and `CASME2-coding-synthetic.xlsx`, so
`meranet-fast train --dataset casme2 --data-root DIR --classes disgust,happiness,surprise` trains on it
through the real CASME II loader. Nothing is downloaded; the same options give the same images.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--subjects", type=int, default=8, help="number of synthetic subjects (default 8)")
    parser.add_argument("--per-class", type=int, default=4,
                        help="samples per class and subject (default 4)")
    parser.add_argument("--frames", type=int, default=24, help="frames per sample, onset to offset (default 24)")
    parser.add_argument("--size", type=int, default=112, help="frame height and width in pixels (default 112)")
    parser.add_argument("--intensity", type=float, default=1.0,
                        help="motion amplitude; below 1 is subtler and harder (default 1.0)")
    parser.add_argument("--noise", type=float, default=0.03, help="pixel noise std on a 0..1 scale (default 0.03)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")


def main(args: argparse.Namespace) -> int:
    from meranet_fast.data.synthetic import make_synthetic, write_casme2_style

    index = make_synthetic(num_subjects=args.subjects, per_class=args.per_class, num_frames=args.frames,
                           seed=args.seed, intensity=args.intensity, noise=args.noise)
    sheet = write_casme2_style(index, args.out, (args.size, args.size))
    print(f"wrote {len(index.samples)} samples ({args.subjects} subjects) to {args.out}; annotations: {sheet}")
    return 0

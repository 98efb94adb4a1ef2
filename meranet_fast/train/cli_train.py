"""Train MERANet / 3D ResNet on a micro-expression dataset (paper §4 recipe by default).

Defaults follow the paper: stratified hold-out split (75/25, 80/20 for CAS(ME)^2) and a stratified
80/20 train/validation split, Adam with untuned linear warmup (tau = 2/(1-beta2) steps) and cosine
annealing, batch 8, 100 epochs, cross-entropy, 112x112 clips of the dataset's depth centred on the apex,
horizontal flips. The paper's Adam learning rate of 0.1 diverges; the default is 1e-3 (see --lr).
The best epoch is chosen on validation data only; the test split is evaluated once, with its weights.

Multi-GPU / multi-node: launch with torchrun, e.g.
  torchrun --nproc_per_node 8 -m meranet_fast.cli train --dataset casme2 --data-root DIR --amp bf16
(--batch-size is the global batch, split over the processes; rank 0 logs and writes checkpoints).

Quick start (synthetic data, a few minutes on a CPU):  meranet-fast train --preset demo
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from meranet_fast.train.config import PRESETS, TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _opt(group, flag: str, help: str, **kwargs) -> None:
    """An option whose parsed default is None (so presets apply), documenting the paper default."""
    dest = flag.lstrip("-").replace("-", "_")
    default = _DEFAULTS[dest]
    group.add_argument(flag, dest=dest, default=None, help=f"{help} (default: {default})", **kwargs)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Dataset options shared by ``train`` and ``eval``."""
    from meranet_fast.data.registry import DATASETS

    g = parser.add_argument_group("data")
    _opt(g, "--dataset", "one of: " + "; ".join(f"{k} ({v.about})" for k, v in DATASETS.items()),
         choices=sorted(DATASETS))
    _opt(g, "--data-root", "folder of the release as distributed (megc2019: casme2=DIR,samm=DIR[,smic=DIR])")
    _opt(g, "--annotation", "annotation spreadsheet path, if not found in --data-root")
    _opt(g, "--classes", "comma-separated class subset (default: the paper's subset of the dataset)",
         type=lambda s: tuple(c.strip().lower() for c in s.split(",") if c.strip()))
    _opt(g, "--clip-len", "frames per clip, centred on the apex (default None: the dataset's depth, "
         "SAMM 64, CASME I/II 32, CAS(ME)^2 16)", type=int)
    _opt(g, "--size", "frame height and width after resizing", type=int)
    _opt(g, "--min-frames", "skip samples shorter than this (default None: 16 for CASME I/II, else 0)", type=int)
    _opt(g, "--protocol", "hold-out split as in the paper, or leave-one-subject-out", choices=("holdout", "loso"))
    _opt(g, "--test-fraction", "test share of the hold-out split (default None: the dataset's, 0.25 or 0.2)",
         type=float)
    _opt(g, "--val-fraction", "validation share of the training part (model selection)", type=float)
    _opt(g, "--cache-dir", "clip cache folder (default None: $MERANET_CACHE or ~/.cache/meranet_fast/clips; "
         "'' disables the cache)")
    _opt(g, "--synth-subjects", "synthetic set: number of subjects", type=int)
    _opt(g, "--synth-per-class", "synthetic set: samples per class and subject", type=int)
    _opt(g, "--synth-frames", "synthetic set: frames per sample", type=int)
    _opt(g, "--synth-intensity", "synthetic set: motion amplitude (smaller is harder)", type=float)
    _opt(g, "--synth-noise", "synthetic set: pixel noise std (0..1 scale)", type=float)
    _opt(g, "--seed", "seed of splits, synthetic data, initialisation, data order and flips", type=int)
    _opt(g, "--workers", "DataLoader worker processes per training process", type=int)
    _opt(g, "--device", "auto (CUDA if available), cpu or cuda", choices=("auto", "cpu", "cuda"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from meranet_fast.ops.backends import BACKENDS

    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                        help="starting configuration: 'paper' (the paper's recipe) or 'demo' (synthetic data, "
                             "small clips, MERANet-18, 6 epochs: a few minutes on a CPU); options given on the "
                             "command line override it (default: paper)")
    add_data_arguments(parser)
    g = parser.add_argument_group("model")
    _opt(g, "--model", "meranet10|18|34 (residual attention) or resnet3d10|18|34")
    _opt(g, "--backend", "attention backend (meranet_fast.ops.backends): auto (the fused kernels the device "
         "allows, else eager; $MERANET_BACKEND when set), eager, cpp, cuda or triton", choices=BACKENDS)
    _opt(g, "--stem-t", "temporal kernel size of the stem convolution (odd)", type=int)
    _opt(g, "--shortcut", "residual shortcut: A (parameter-free) or B (1x1x1 conv + BN)", choices=("A", "B"))
    _opt(g, "--st-kernel-size", "spatio-temporal attention kernel size", type=int, choices=(3, 5, 7))
    g = parser.add_argument_group("optimisation")
    _opt(g, "--epochs", "training epochs", type=int)
    _opt(g, "--batch-size", "global batch size (divided among DDP processes)", type=int)
    _opt(g, "--lr", "Adam learning rate (the paper's 0.1 diverges with Adam)", type=float)
    _opt(g, "--beta1", "Adam beta1", type=float)
    _opt(g, "--beta2", "Adam beta2; also sets the untuned warmup period 2/(1-beta2) steps", type=float)
    _opt(g, "--weight-decay", "Adam weight decay (L2)", type=float)
    _opt(g, "--warmup-steps", "linear warmup steps (default None: untuned, 2/(1-beta2))", type=int)
    _opt(g, "--select-metric", "validation score choosing the best epoch", choices=("accuracy", "uf1", "uar",
                                                                                   "f1", "loss"))
    g = parser.add_argument_group("speed")
    _opt(g, "--amp", "automatic mixed precision: none, bf16 or fp16 (fp16 on CUDA only); "
         "steps with NaN/inf gradients are skipped",
         choices=("none", "bf16", "fp16"))
    g.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                   help="torch.compile the model (default: off)")
    _opt(g, "--channels-last", "channels_last_3d memory format: auto (on for CUDA), on or off",
         choices=("auto", "on", "off"))
    g.add_argument("--sync-bn", dest="sync_bn", action="store_const", const=True, default=None,
                   help="synchronise BatchNorm statistics across DDP processes (default: off)")
    g = parser.add_argument_group("run")
    _opt(g, "--out", "run folder: checkpoints, metrics.csv, plots, results.json")
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="continue the run in --out from its last.pt (exactly as if never stopped; from "
                        "last.prev.pt if last.pt is damaged); refused if the configuration or data changed")
    _opt(g, "--stop-after-epochs", "stop this invocation after N epochs (e.g. to fit a job time limit); "
         "continue later with --resume", type=int)
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                   help="no progress bars (epoch summaries are still printed)")


def main(args: argparse.Namespace) -> int:
    from meranet_fast.data.samples import AnnotationError, FrameError
    from meranet_fast.train.checkpoint import CheckpointError
    from meranet_fast.train.config import make_config
    from meranet_fast.train.resume import ResumeMismatch
    from meranet_fast.train.trainer import TrainingDiverged, run_training

    overrides = {k: v for k, v in vars(args).items() if k in _DEFAULTS}
    cfg = make_config(args.preset, **overrides)
    try:
        summary = run_training(cfg)
    except (TrainingDiverged, AnnotationError, FrameError, FileExistsError, CheckpointError, ResumeMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary is None:
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        t = summary["test"]
        print(f"test ({summary['protocol']}): accuracy {t['accuracy']:.3f}  UF1 {t['uf1']:.3f}  UAR {t['uar']:.3f}  "
              f"macro precision {t['precision']:.3f}  recall {t['recall']:.3f}  F1 {t['f1']:.3f}  "
              f"(chance {1 / len(summary['classes']):.3f})")
        print(f"results, checkpoints and plots (curves.png, confusion_matrix.png) in {summary['out']}")
    return 0

"""Evaluate a trained checkpoint on a split of the data it was trained with.

The dataset, classes, protocol and seed come from the checkpoint's configuration, so the split is
rebuilt exactly (for a leave-one-subject-out fold, that fold's split). Data options given here (e.g.
--data-root when the data moved) override the stored ones. Prints accuracy, macro precision/recall/F1,
UF1, UAR and the confusion matrix; --out also writes them as JSON and a confusion-matrix PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from meranet_fast.train.cli_train import _DEFAULTS, add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"),
                        help="which part of the split to evaluate (default: test)")
    parser.add_argument("--out", default=None,
                        help="folder for eval.json and confusion_matrix.png (default: print only)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size (default: 8)")
    add_data_arguments(parser)


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from meranet_fast.data.samples import AnnotationError, FrameError
    from meranet_fast.train.checkpoint import CheckpointError, load_checkpoint
    from meranet_fast.train.config import TrainConfig
    from meranet_fast.train.distributed import init_distributed
    from meranet_fast.train.models import build_model
    from meranet_fast.train.plots import plot_confusion
    from meranet_fast.train.trainer import Trainer, make_split_datasets, prepare_data

    try:
        state = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = state["meta"]
    stored = {k: tuple(v) if k == "classes" and v is not None else v for k, v in state["config"].items()}
    overrides = {k: v for k, v in vars(args).items()
                 if k in _DEFAULTS and k not in ("out", "batch_size") and v is not None}
    cfg = dataclasses.replace(TrainConfig(**stored), **overrides, batch_size=args.batch_size, resume=False)
    try:
        samples, classes, splits = prepare_data(cfg)
    except (AnnotationError, FrameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if list(classes) != list(meta["classes"]):
        print(f"error: the data's classes {classes} differ from the checkpoint's {meta['classes']}", file=sys.stderr)
        return 1
    split = next((s for s in splits if s.name == meta["split"]), None)
    if split is None:
        print(f"error: split {meta['split']!r} of the checkpoint is not in the rebuilt protocol", file=sys.stderr)
        return 1
    dist = init_distributed(cfg.device)
    datasets = make_split_datasets(cfg, samples, classes, split)
    trainer = Trainer(cfg, classes, datasets, args.out or ".", dist, split_name=split.name)
    model = build_model(meta["model"], meta["num_classes"], cfg.backend, **meta["model_kwargs"])
    model.load_state_dict(state["model"])
    model = model.to(dist.device).to(memory_format=trainer.memory_format)
    dataset = dict(zip(("train", "val", "test"), datasets))[args.split]
    ev = trainer.evaluate(model, dataset)
    m = ev["metrics"]
    print(f"{cfg.dataset} [{split.name}] {args.split} ({len(dataset)} samples), checkpoint epoch {state['epoch']}:")
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()) + f"  loss {ev['loss']:.4f}")
    print("  confusion matrix (rows true, columns predicted: " + ", ".join(classes) + ")")
    for row in ev["cm"]:
        print("   " + " ".join(f"{int(v):5d}" for v in row))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "eval.json"), "w") as f:
            json.dump({"split": args.split, "metrics": m, "loss": ev["loss"], "confusion_matrix": ev["cm"].tolist(),
                       "classes": list(classes), "uids": [s.uid for s in dataset.samples],
                       "y_pred": ev["y_pred"], "probs": ev["probs"]}, f, indent=2)
        plot_confusion(ev["cm"], classes, os.path.join(args.out, "confusion_matrix.png"), f"{args.split} set")
        print(f"wrote {args.out}/eval.json and confusion_matrix.png")
    return 0

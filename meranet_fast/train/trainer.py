"""The training loop: one :class:`Trainer` per split, :func:`run_training` over the protocol's splits.

What a run writes (rank 0 only) in its folder (one sub-folder per fold for leave-one-subject-out):

- ``config.json``: the configuration and the resolved choices (classes, attention backend, ...);
- ``last.pt`` after every epoch and ``best.pt`` when the validation score improves, written atomically, each
  keeping the version it replaced as ``last.prev.pt`` / ``best.prev.pt``;
- ``metrics.csv``: one row per epoch (losses, accuracies, validation UF1/UAR, learning rate, time, skipped
  steps);
- ``curves.png``, ``confusion_matrix.png`` and ``result.json`` (test metrics and per-sample predictions)
  at the end; ``results.json`` at the top summarises the run (pooled over folds for LOSO).

Exact resumption: the data order of epoch ``e`` depends only on ``(seed, e)`` (``DistributedSampler``), the
flips only on ``(seed, e, index)``, and ``last.pt`` holds the model, optimizer, scheduler, scaler, history
and the Python/NumPy/torch generator states, so a run stopped after epoch ``k`` and resumed ends with the
same weights and metrics as an uninterrupted one (bit-exact on CPU; on GPU as far as the kernels are
deterministic). A ``last.pt`` truncated or corrupted on disk is reported by name and the run resumes from
``last.prev.pt`` (one epoch earlier, so still exactly); ``--resume`` with another configuration or other data
is refused with the differences listed (:mod:`meranet_fast.train.resume`).

Non-finite gradients: with ``--amp fp16`` the gradient scaler skips a step whose gradients overflowed; with
``--amp bf16`` the trainer does the same itself (one reduction over the gradients per step). The reason is
torch's CPU bf16 conv3d (oneDNN), whose weight gradient is non-finite in a few percent of backward passes
with torch 2.14.1 (``tests/conftest.py``); applying such a step would turn the weights and Adam's moments
into NaN. Skipped steps are counted in ``metrics.csv``; an epoch that skips more than half of its steps
stops the run (:class:`TrainingDiverged`).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from meranet_fast._optional import available
from meranet_fast.data.dataset import ClipDataset
from meranet_fast.data.registry import DATASETS, load_dataset
from meranet_fast.data.samples import Sample
from meranet_fast.data.splits import Split, holdout_protocol, loso_protocol
from meranet_fast.ops.backends import resolve_backend
from meranet_fast.train.checkpoint import (
    load_checkpoint_or_previous,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from meranet_fast.train.config import TrainConfig
from meranet_fast.train.distributed import DistContext, init_distributed
from meranet_fast.train.metrics import classification_metrics, confusion_matrix
from meranet_fast.train.models import build_model
from meranet_fast.train.plots import NO_PLOTS, plot_confusion, plot_curves
from meranet_fast.train.resume import check_resumable, data_identity
from meranet_fast.train.schedule import make_scheduler, untuned_warmup_steps

__all__ = ["Trainer", "TrainingDiverged", "FoldResult", "run_training", "prepare_data", "make_split_datasets",
           "seed_everything", "SELECT_METRICS"]

#: Validation scores that can select the best epoch (``loss``: lower is better, the others higher).
SELECT_METRICS = ("accuracy", "uf1", "uar", "f1", "loss")
#: Training steps between two finiteness checks of the running loss (and progress-bar refreshes).
CHECK_EVERY = 10
_CSV_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_uf1", "val_uar",
               "epoch_seconds", "skipped_steps", "best")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint was kept."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FoldResult:
    """Outcome of training on one split: test predictions of the best-validation weights."""

    name: str
    uids: list[str]
    y_true: list[int]
    y_pred: list[int]
    probs: list[list[float]]
    best_epoch: int
    best_score: float
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_data(cfg: TrainConfig, verbose: bool = True) -> tuple[list[Sample], tuple[str, ...], list[Split]]:
    """Load ``cfg.dataset`` and build the splits of ``cfg.protocol`` (``"holdout"`` or ``"loso"``)."""
    synthetic = dict(num_subjects=cfg.synth_subjects, per_class=cfg.synth_per_class, num_frames=cfg.synth_frames,
                     seed=cfg.seed, intensity=cfg.synth_intensity, noise=cfg.synth_noise)
    index, classes = load_dataset(cfg.dataset, cfg.data_root, cfg.annotation, cfg.classes, synthetic,
                                  cfg.min_frames)
    if verbose:
        index.warn()
    samples = index.samples
    labels = [s.label for s in samples]
    if cfg.protocol == "holdout":
        test_fraction = DATASETS[cfg.dataset].test_fraction if cfg.test_fraction is None else cfg.test_fraction
        splits = [holdout_protocol(labels, test_fraction, cfg.val_fraction, cfg.seed)]
    elif cfg.protocol == "loso":
        splits = loso_protocol(labels, [s.subject for s in samples], cfg.val_fraction, cfg.seed)
    else:
        raise ValueError(f"protocol must be 'holdout' or 'loso', got {cfg.protocol!r}")
    return samples, classes, splits


def make_split_datasets(cfg: TrainConfig, samples: list[Sample], classes: tuple[str, ...],
                        split: Split) -> tuple[ClipDataset, ClipDataset, ClipDataset]:
    """``(train, val, test)`` datasets of a split (flips on the training set only)."""
    clip_len = cfg.clip_len or DATASETS[cfg.dataset].clip_len
    cache = cfg.clip_cache()

    def subset(idx, train):
        return ClipDataset([samples[i] for i in idx], classes, clip_len, (cfg.size, cfg.size), train=train,
                           flip_p=cfg.flip_p, cache=cache, seed=cfg.seed)

    return subset(split.train, True), subset(split.val, False), subset(split.test, False)


class Trainer:
    """Trains one model on one split, selects the epoch on validation data, evaluates it on the test set.

    Args:
        cfg: the configuration.
        classes: class names (model output order).
        datasets: ``(train, val, test)`` :class:`ClipDataset` objects.
        out_dir: where this split's checkpoints, logs and plots go.
        dist: the process's :class:`DistContext`.
        model_factory: ``factory(num_classes) -> nn.Module``; default: :func:`build_model` by ``cfg.model``.
        split_name: the split's name (``"holdout"``, ``"loso-<subject>"``), stored in the checkpoints.
    """

    def __init__(self, cfg: TrainConfig, classes: tuple[str, ...],
                 datasets: tuple[ClipDataset, ClipDataset, ClipDataset], out_dir: str, dist: DistContext,
                 model_factory: Callable[[int], nn.Module] | None = None, split_name: str = "holdout"):
        if cfg.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {cfg.select_metric!r}")
        if cfg.batch_size < dist.world_size or cfg.batch_size % dist.world_size:
            raise ValueError(f"batch size {cfg.batch_size} (global) must be a multiple of the "
                             f"{dist.world_size} processes")
        if cfg.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {cfg.amp!r}")
        if cfg.amp == "fp16" and dist.device.type != "cuda":
            raise ValueError("fp16 AMP needs a CUDA device; use --amp bf16 on CPU")
        self.cfg, self.classes, self.dist, self.out_dir = cfg, classes, dist, out_dir
        self.split_name = split_name
        self.train_ds, self.val_ds, self.test_ds = datasets
        if min(len(d) for d in datasets) == 0:
            raise ValueError(f"empty split (train/val/test sizes {[len(d) for d in datasets]}); "
                             "use more samples or other fractions")
        self.model_factory = model_factory or (
            lambda n: build_model(cfg.model, n, cfg.backend, **cfg.model_kwargs()))
        self.device = dist.device
        self.backend_resolved = resolve_backend(cfg.backend, self.device, None, "ra_tail")
        cuda = self.device.type == "cuda"
        use_cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
        self.memory_format = torch.channels_last_3d if use_cl else torch.contiguous_format
        self.autocast = dict(device_type=self.device.type, enabled=cfg.amp != "none",
                             dtype=torch.float16 if cfg.amp == "fp16" else torch.bfloat16)
        self.per_rank_batch = cfg.batch_size // dist.world_size
        self.log = print if dist.is_main else (lambda *a, **k: None)
        if cuda:
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------ paths and logs
    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def _write_csv(self, history: list[dict]) -> None:
        tmp = self.path("metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in _CSV_FIELDS})  # older runs lack skipped_steps
        os.replace(tmp, self.path("metrics.csv"))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, dataset: ClipDataset) -> dict:
        """Loss, predictions, probabilities and metrics of ``model`` on ``dataset``.

        Each process evaluates every ``world_size``-th sample; results are gathered so every process
        returns the same, complete numbers.
        """
        model.eval()
        mine = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        loader = DataLoader(Subset(dataset, mine), batch_size=self.per_rank_batch, shuffle=False,
                            num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda")
        probs, losses = [], []
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
                y = y.to(self.device, non_blocking=True)
                with torch.autocast(**self.autocast):
                    logits = model(x).float()
                losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
                probs.append(torch.softmax(logits, dim=1).cpu())
        local = (mine, torch.cat(probs).tolist() if probs else [], torch.cat(losses).tolist() if losses else [])
        n = len(dataset)
        all_probs: list = [None] * n
        all_losses = [0.0] * n
        for idx, p, losses_part in self.dist.gather(local):
            for i, pi, li in zip(idx, p, losses_part):
                all_probs[i], all_losses[i] = pi, li
        y_true = dataset.targets
        y_pred = [int(np.argmax(p)) for p in all_probs]
        cm = confusion_matrix(y_true, y_pred, len(self.classes))
        return {"loss": float(np.mean(all_losses)), "y_true": y_true, "y_pred": y_pred, "probs": all_probs,
                "cm": cm, "metrics": classification_metrics(cm)}

    def _score(self, ev: dict) -> float:
        return -ev["loss"] if self.cfg.select_metric == "loss" else ev["metrics"][self.cfg.select_metric]

    # ------------------------------------------------------------------ training
    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int, last_good: str) -> None:
        value = float(self.dist.mean(loss_sum.detach().reshape(1)).item())
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped without saving. "
                f"{last_good} Try a lower --lr, --amp none, or check the data.")

    def _gradients_finite(self, model: nn.Module) -> bool:
        """Whether every gradient of ``model`` is finite (the largest magnitude is NaN or inf otherwise)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)))

    def _load_best(self, best_path: str, epoch: int) -> dict | None:
        """The weights of the best epoch so far (``best.pt``, or ``best.prev.pt`` after a fallback of ``last.pt``)."""
        if epoch == 0:
            return None

        def holds_epoch(state: dict) -> str | None:
            if state.get("epoch") == epoch:
                return None
            return f"holds epoch {state.get('epoch')}, not the best epoch {epoch}"

        return load_checkpoint_or_previous(best_path, accept=holds_epoch, log=self.log)[0]["model"]

    def fit(self) -> FoldResult | None:
        """Train (resuming from ``last.pt`` when ``cfg.resume``), then test the best-validation weights.

        Returns ``None`` when the run stopped early on purpose (``cfg.stop_after_epochs``).

        Raises:
            TrainingDiverged: the loss became NaN/inf; ``last.pt`` still holds the last finished epoch.
            CheckpointError: resuming, neither ``last.pt`` nor ``last.prev.pt`` (or the best weights) can be read.
            ResumeMismatch: resuming with another configuration or data than the checkpoint's.
        """
        cfg, dist = self.cfg, self.dist
        os.makedirs(self.out_dir, exist_ok=True)
        last_path, best_path = self.path("last.pt"), self.path("best.pt")
        has_run = os.path.exists(last_path) or os.path.exists(previous_path(last_path))
        if has_run and not cfg.resume:
            raise FileExistsError(f"{self.out_dir} already holds a run ({last_path}); pass --resume to continue "
                                  "it or choose another --out")
        seed_everything(cfg.seed)
        base = self.model_factory(len(self.classes)).to(self.device)
        if cfg.sync_bn and dist.enabled:
            base = nn.SyncBatchNorm.convert_sync_batchnorm(base)
        base = base.to(memory_format=self.memory_format)
        net: nn.Module = base
        if dist.enabled:
            net = nn.parallel.DistributedDataParallel(
                base, device_ids=[dist.local_rank] if self.device.type == "cuda" else None)
        eval_net: nn.Module = base
        if cfg.compile:
            net, eval_net = torch.compile(net), torch.compile(base)

        sampler = DistributedSampler(self.train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=cfg.seed)
        # A last batch of one sample would break BatchNorm on a 1×1×1 feature map: drop it.
        drop_last = len(sampler) % self.per_rank_batch == 1 and len(sampler) > 1
        steps_per_epoch = len(sampler) // self.per_rank_batch if drop_last else math.ceil(
            len(sampler) / self.per_rank_batch)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else untuned_warmup_steps(cfg.beta2)
        if warmup >= total_steps:
            self.log(f"note: warmup period {warmup} steps >= the run's {total_steps} steps: the learning rate never "
                     "reaches its base value (set --warmup-steps or a lower --beta2)")
        optimizer = torch.optim.Adam(base.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                     weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(optimizer, total_steps, warmup)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")

        history: list[dict] = []
        best = {"epoch": 0, "score": -math.inf}
        best_state = None
        start = 0
        data = data_identity(self.classes, {"train": self.train_ds, "val": self.val_ds, "test": self.test_ds})
        if cfg.resume and has_run:
            state, resumed_from = load_checkpoint_or_previous(last_path, log=self.log)
            check_resumable(state, cfg.to_dict(), data, resumed_from)
            base.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history, best, start = state["history"], state["best"], state["epoch"]
            best_state = self._load_best(best_path, best["epoch"])
            set_rng_state(state["rng"])
            self.log(f"resumed {resumed_from} at epoch {start}/{cfg.epochs}")
        if dist.is_main:
            with open(self.path("config.json"), "w") as f:
                json.dump({**cfg.to_dict(), "classes": list(self.classes), "backend_resolved": self.backend_resolved,
                           "world_size": dist.world_size, "train_size": len(self.train_ds),
                           "val_size": len(self.val_ds), "test_size": len(self.test_ds),
                           "warmup_steps_resolved": warmup, "total_steps": total_steps}, f, indent=2)
        meta = {"model": cfg.model, "num_classes": len(self.classes), "classes": list(self.classes),
                "model_kwargs": cfg.model_kwargs(), "clip_len": self.train_ds.clip_len, "size": cfg.size,
                "split": self.split_name}

        from tqdm.auto import tqdm

        for epoch in range(start, cfg.epochs):
            if cfg.stop_after_epochs is not None and epoch - start >= cfg.stop_after_epochs:
                self.log(f"stopped after {cfg.stop_after_epochs} epoch(s) as asked; continue with --resume")
                return None
            t0 = time.perf_counter()
            net.train()
            sampler.set_epoch(epoch)
            self.train_ds.set_epoch(epoch)
            loader = DataLoader(self.train_ds, batch_size=self.per_rank_batch, sampler=sampler,
                                num_workers=cfg.workers, pin_memory=self.device.type == "cuda", drop_last=drop_last)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device)
            seen = skipped = 0
            last_good = (f"The last good checkpoint is {last_path} (epoch {epoch})." if epoch > 0
                         else "No checkpoint was written (it diverged in the first epoch).")
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                       disable=not (dist.is_main and cfg.progress))
            for step, (x, y) in enumerate(bar):
                x = x.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
                y = y.to(self.device, non_blocking=True)
                with torch.autocast(**self.autocast):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.amp == "bf16" and not self._gradients_finite(base):
                    skipped += 1  # see the module docstring; the scaler does this for fp16
                else:
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                if (step + 1) % CHECK_EVERY == 0 or step + 1 == len(loader):
                    self._check_finite(loss_sum, epoch, step, last_good)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if skipped * 2 > len(loader):
                raise TrainingDiverged(
                    f"the gradients were NaN/inf in {skipped} of {len(loader)} steps of epoch {epoch + 1}; stopped "
                    f"without saving. {last_good} Try --amp none or a lower --lr.")
            if skipped:
                self.log(f"epoch {epoch + 1}: skipped {skipped} of {len(loader)} steps with non-finite gradients")
            totals = dist.mean(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=self.device)]))
            dist.broadcast_buffers(base)
            val = self.evaluate(eval_net, self.val_ds)
            score = self._score(val)
            improved = score > best["score"]
            if improved:
                best = {"epoch": epoch + 1, "score": score}
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in base.state_dict().items()})
            row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                   "train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
                   "val_loss": val["loss"], "val_accuracy": val["metrics"]["accuracy"],
                   "val_uf1": val["metrics"]["uf1"], "val_uar": val["metrics"]["uar"],
                   "epoch_seconds": round(time.perf_counter() - t0, 3), "skipped_steps": skipped,
                   "best": int(improved)}
            history.append(row)
            if dist.is_main:
                if improved:
                    save_checkpoint({"model": best_state, "meta": meta, "epoch": epoch + 1, "val": val["metrics"],
                                     "config": cfg.to_dict()}, best_path, keep_previous=True)
                save_checkpoint({"model": base.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                 "epoch": epoch + 1, "history": history, "best": best, "rng": rng_state(),
                                 "meta": meta, "config": cfg.to_dict(), "data": data}, last_path,
                                keep_previous=True)
                self._write_csv(history)
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.3f} acc "
                           f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f}"
                           f" uf1 {row['val_uf1']:.3f} | lr {row['lr']:.2e} | {row['epoch_seconds']:.1f}s"
                           + ("  *best" if improved else ""))
            dist.barrier()

        base.load_state_dict(best_state)
        test = self.evaluate(eval_net, self.test_ds)
        result = FoldResult(self.split_name, [s.uid for s in self.test_ds.samples], test["y_true"],
                            test["y_pred"], test["probs"], best["epoch"], best["score"], test["metrics"])
        if dist.is_main:
            with open(self.path("result.json"), "w") as f:
                json.dump({**result.__dict__, "classes": list(self.classes), "select_metric": cfg.select_metric}, f)
            if available("matplotlib"):
                plot_curves(history, self.path("curves.png"), f"{cfg.model} on {cfg.dataset}")
                plot_confusion(test["cm"], self.classes, self.path("confusion_matrix.png"),
                               f"test (best epoch {best['epoch']})")
            else:
                self.log(f"note: {NO_PLOTS}")
        return result


def run_training(cfg: TrainConfig, model_factory: Callable[[int], nn.Module] | None = None) -> dict | None:
    """Train and evaluate ``cfg`` under its protocol; returns the summary written to ``results.json``.

    Holdout: one split in ``cfg.out``. LOSO: one fold per subject in ``cfg.out/loso-<subject>``; folds with a
    ``result.json`` are skipped on ``--resume``; metrics are computed on the confusion matrix pooled over
    folds. Returns ``None`` when stopped early by ``cfg.stop_after_epochs``.
    """
    dist = init_distributed(cfg.device)
    try:
        samples, classes, splits = prepare_data(cfg, verbose=dist.is_main)
        backend = resolve_backend(cfg.backend, dist.device, None, "ra_tail")  # fails early if it cannot run
        if dist.is_main:
            print(f"{cfg.dataset}: {len(samples)} samples, classes {', '.join(classes)}; model {cfg.model} "
                  f"(attention backend: {backend}); protocol {cfg.protocol} ({len(splits)} split(s)); "
                  f"{dist.world_size} process(es) on {dist.device}")
        results = []
        for split in splits:
            out = cfg.out if cfg.protocol == "holdout" else os.path.join(cfg.out, split.name)
            done = os.path.join(out, "result.json")
            if cfg.resume and os.path.exists(done):
                with open(done) as f:
                    saved = json.load(f)
                results.append(FoldResult(**{k: saved[k] for k in FoldResult.__dataclass_fields__}))
                continue
            datasets = make_split_datasets(cfg, samples, classes, split)
            if dist.is_main:
                print(f"[{split.name}] train {len(split.train)} / val {len(split.val)} / test {len(split.test)}")
            result = Trainer(cfg, classes, datasets, out, dist, model_factory, split.name).fit()
            if result is None:
                return None
            results.append(result)
        cm = sum(confusion_matrix(r.y_true, r.y_pred, len(classes)) for r in results)
        summary = {"dataset": cfg.dataset, "model": cfg.model, "protocol": cfg.protocol, "classes": list(classes),
                   "test": classification_metrics(cm), "confusion_matrix": cm.tolist(),
                   "folds": {r.name: {"best_epoch": r.best_epoch, "test_accuracy": r.metrics["accuracy"],
                                      "test_size": len(r.y_true)} for r in results},
                   "out": os.path.abspath(cfg.out)}
        if dist.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            with open(os.path.join(cfg.out, "results.json"), "w") as f:
                json.dump(summary, f, indent=2)
            if cfg.protocol == "loso" and available("matplotlib"):
                plot_confusion(cm, classes, os.path.join(cfg.out, "confusion_matrix.png"), "LOSO, pooled over folds")
        return summary
    finally:
        dist.close()

"""Trainer: schedule, checkpoints, exact resume, NaN stop, outputs, LOSO, DDP (gloo, 2 processes), CLI help."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from fixtures.optional import need

from meranet_fast.cli import COMMANDS, build_parser
from meranet_fast.train.checkpoint import load_checkpoint, save_checkpoint
from meranet_fast.train.config import make_config
from meranet_fast.train.models import build_model
from meranet_fast.train.schedule import make_scheduler, untuned_warmup_steps, warmup_cosine
from meranet_fast.train.trainer import TrainingDiverged, prepare_data, run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(out, **kw):
    """A run of a few seconds on CPU: MERANet-10 on 18 synthetic 4×32×32 clips, 2 epochs."""
    base = dict(dataset="synthetic", synth_subjects=3, synth_per_class=2, synth_frames=6, clip_len=4, size=32,
                model="meranet10", backend="eager", epochs=2, batch_size=4, workers=0, cache_dir="", progress=False,
                out=str(out), device="cpu", warmup_steps=2)
    base.update(kw)
    return make_config("paper", **base)


# ---------------------------------------------------------------- schedule

def test_untuned_warmup_period():
    assert untuned_warmup_steps(0.999) == 2000
    assert untuned_warmup_steps(0.95) == 40


def test_warmup_cosine_values():
    # τ = 20, T = 100: multiplier of step t+1 = min(1, (t+1)/20) · ½(1 + cos(π t / 100))
    assert warmup_cosine(0, 100, 20) == pytest.approx(1 / 20)
    assert warmup_cosine(9, 100, 20) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert warmup_cosine(19, 100, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.19)))
    assert warmup_cosine(50, 100, 20) == pytest.approx(0.5)
    assert warmup_cosine(99, 100, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert warmup_cosine(100, 100, 20) == pytest.approx(0.0, abs=1e-12)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.1)
    sched = make_scheduler(opt, total_steps=100, warmup_steps=20)
    seen = []
    for _ in range(60):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1 / 20) and seen[50] == pytest.approx(0.05)
    assert max(seen) == pytest.approx(seen[19])        # peak at the end of warmup


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]          # no temporary file left behind


def test_model_factory_names():
    assert build_model("resnet3d10", 3, "eager").fc.out_features == 3
    assert build_model("meranet10", 3).backend == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        build_model("meranet10", 3, "fused")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("meranet19", 3)


# ---------------------------------------------------------------- runs

def _history(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def test_resume_is_exact_and_outputs_written(tmp_path):
    need("matplotlib")  # curves.png, confusion_matrix.png
    full = run_training(tiny(tmp_path / "full"))
    for name in ("last.pt", "best.pt", "metrics.csv", "curves.png", "confusion_matrix.png", "result.json",
                 "results.json", "config.json"):
        assert os.path.getsize(tmp_path / "full" / name) > 0, name
    assert len(_history(tmp_path / "full")) == 2

    assert run_training(tiny(tmp_path / "split", stop_after_epochs=1)) is None
    assert load_checkpoint(str(tmp_path / "split" / "last.pt"))["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(tiny(tmp_path / "split"))
    resumed = run_training(tiny(tmp_path / "split", resume=True))

    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _history(tmp_path / "full") == _history(tmp_path / "split")
    assert full["test"] == resumed["test"]
    with open(tmp_path / "full" / "result.json") as f, open(tmp_path / "split" / "result.json") as g:
        assert json.load(f)["probs"] == json.load(g)["probs"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=3)
    _, _, splits = prepare_data(cfg, verbose=False)
    steps_per_epoch = math.ceil(len(splits[0].train) / cfg.batch_size)

    def poisoned(num_classes):
        model = build_model("meranet10", num_classes, "eager")
        calls = {"train": 0}

        def hook(module, inputs, output):
            if module.training:
                calls["train"] += 1
                if calls["train"] > steps_per_epoch:      # from the second epoch on
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2.*last\.pt \(epoch 1\)"):
        run_training(cfg, model_factory=poisoned)
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _nan_gradients_on(calls_to_poison):
    """A model factory whose fc weight gradient is NaN on the given (1-based) backward passes."""
    def factory(num_classes):
        model = build_model("meranet10", num_classes, "eager")
        calls = {"n": 0}

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] in calls_to_poison else grad

        model.fc.weight.register_hook(hook)
        return model
    return factory


def test_bf16_skips_steps_with_non_finite_gradients(tmp_path, native_cpu_conv):
    cfg = tiny(tmp_path, amp="bf16")
    run_training(cfg, model_factory=_nan_gradients_on({2, 4}))
    rows = _history(tmp_path)
    assert [int(r["skipped_steps"]) for r in rows] == [1, 1]  # 2 steps per epoch (9 clips, batches of 4)
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    adam = state["optimizer"]["state"]
    assert all(torch.isfinite(s["exp_avg"]).all() and torch.isfinite(s["exp_avg_sq"]).all() for s in adam.values())


def test_bf16_stops_when_most_steps_have_non_finite_gradients(tmp_path, native_cpu_conv):
    cfg = tiny(tmp_path, amp="bf16")
    with pytest.raises(TrainingDiverged, match=r"NaN/inf in 2 of 2 steps of epoch 2.*last\.pt \(epoch 1\)"):
        run_training(cfg, model_factory=_nan_gradients_on({3, 4}))


def test_loso_pools_folds(tmp_path):
    need("matplotlib")  # the pooled confusion_matrix.png
    cfg = tiny(tmp_path, protocol="loso", synth_subjects=2, epochs=1, model="resnet3d10")
    summary = run_training(cfg)
    assert sorted(summary["folds"]) == ["loso-sub01", "loso-sub02"]
    assert sum(f["test_size"] for f in summary["folds"].values()) == 12
    assert sum(map(sum, summary["confusion_matrix"])) == 12
    assert os.path.exists(tmp_path / "confusion_matrix.png")
    for fold in summary["folds"]:
        with open(tmp_path / fold / "result.json") as f:
            uids = json.load(f)["uids"]
        assert {u.split("/")[1] for u in uids} == {fold.removeprefix("loso-")}


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "tests", "fixtures", "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert os.path.exists(tmp_path / "run" / "best.pt") and os.path.exists(tmp_path / "run" / "results.json")
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["world_size"] == 2


# ---------------------------------------------------------------- CLI

@pytest.mark.parametrize("command", ["train", "eval", "predict", "saliency", "synth"])
def test_cli_help(command, capsys):
    assert command in COMMANDS
    with pytest.raises(SystemExit) as e:
        build_parser(command).parse_args([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: meranet-fast " + command in text
    # every option has help text
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert all(a.help for a in sub._actions), [a.dest for a in sub._actions if not a.help]


def test_cli_train_eval_synth_roundtrip(tmp_path):
    need("openpyxl")  # synth writes a CASME II-style spreadsheet
    from meranet_fast.cli import main

    assert main(["synth", "--out", str(tmp_path / "rel"), "--subjects", "2", "--per-class", "2", "--frames", "6",
                 "--size", "32"]) == 0
    args = ["train", "--dataset", "casme2", "--data-root", str(tmp_path / "rel"), "--min-frames", "0",
            "--model", "resnet3d10", "--clip-len", "4", "--size", "32", "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "ev"),
                 "--workers", "0"]) == 0
    with open(tmp_path / "ev" / "eval.json") as f:
        ev = json.load(f)
    with open(tmp_path / "run" / "result.json") as f:
        assert ev["y_pred"] == json.load(f)["y_pred"]

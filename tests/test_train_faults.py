"""Training and data faults: damaged checkpoints, --resume with a changed configuration, damaged frames.

A checkpoint truncated or corrupted on disk is reported by name and ``--resume`` continues from the
previous one (exactly); a resume with another model or dataset configuration is refused with the
differences listed; a truncated JPEG or a gap in a frame folder names the file and the sample.
"""
import os
import re

import pytest
import torch
from fixtures import releases as fx
from test_train import _history, tiny

from meranet_fast.cli import main as cli_main
from meranet_fast.data import ClipDataset, FrameError
from meranet_fast.data.releases import load_casme2, load_smic
from meranet_fast.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_checkpoint_or_previous,
    previous_path,
    save_checkpoint,
)
from meranet_fast.train.resume import MAY_CHANGE, ResumeMismatch, config_differences, data_differences
from meranet_fast.train.trainer import run_training


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _corrupt(path):
    """Flip bytes in the middle of the file (inside the tensor data of a checkpoint)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(16)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


# ---------------------------------------------------------------- checkpoint files

@pytest.mark.parametrize("damage", ["truncated", "corrupted", "empty"])
def test_damaged_checkpoint_error_names_the_file(tmp_path, damage):
    path = str(tmp_path / "last.pt")
    state = {"model": {"w": torch.randn(256, 256)}, "epoch": 3}
    save_checkpoint(state, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])
    if damage == "truncated":
        _truncate(path)
    elif damage == "corrupted":
        _corrupt(path)  # torch.load alone would return the damaged tensor without a word
    else:
        _truncate(path, keep=0)
    with pytest.raises(CheckpointError, match=re.escape(path) + " is (truncated|corrupted)"):
        load_checkpoint(path)


def test_missing_checkpoint_and_foreign_file_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"not found: {tmp_path / 'nope.pt'}")):
        load_checkpoint(str(tmp_path / "nope.pt"))
    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + " is truncated, corrupted or not a checkpoint"):
        load_checkpoint(str(foreign))


def test_save_keeps_the_previous_version(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"epoch": 1}, path, keep_previous=True)
    assert not os.path.exists(previous_path(path))
    save_checkpoint({"epoch": 2}, path, keep_previous=True)
    assert previous_path(path) == str(tmp_path / "last.prev.pt")
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(previous_path(path))["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.prev.pt", "last.pt"]  # no temporary file left behind
    _corrupt(path)
    logged = []
    state, used = load_checkpoint_or_previous(path, log=logged.append)
    assert (state["epoch"], used) == (1, previous_path(path))
    assert len(logged) == 1 and path in logged[0] and "previous checkpoint" in logged[0]
    _truncate(previous_path(path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_or_previous(path, log=logged.append)
    assert path in str(e.value) and previous_path(path) in str(e.value) and "start the run again" in str(e.value)


# ---------------------------------------------------------------- --resume

def test_resume_falls_back_to_the_previous_checkpoint_exactly(tmp_path, capsys):
    full = run_training(tiny(tmp_path / "full", epochs=3))
    assert run_training(tiny(tmp_path / "split", epochs=3, stop_after_epochs=2)) is None
    last = tmp_path / "split" / "last.pt"
    assert load_checkpoint(str(previous_path(str(last))))["epoch"] == 1
    _corrupt(str(last))
    capsys.readouterr()
    resumed = run_training(tiny(tmp_path / "split", epochs=3, resume=True))
    out = capsys.readouterr().out
    assert re.search(re.escape(str(last)) + " is (truncated or )?corrupted", out), out
    assert "using the previous checkpoint" in out
    assert "at epoch 1/3" in out
    a, b = load_checkpoint(str(tmp_path / "full" / "last.pt")), load_checkpoint(str(last))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _history(tmp_path / "full") == _history(tmp_path / "split")
    assert full["test"] == resumed["test"]


def test_resume_with_both_checkpoints_damaged_says_how_to_go_on(tmp_path, capsys):
    assert run_training(tiny(tmp_path, epochs=3, stop_after_epochs=2)) is None
    _truncate(str(tmp_path / "last.pt"))
    _corrupt(str(tmp_path / "last.prev.pt"))
    with pytest.raises(CheckpointError, match="last.pt is truncated.*last.prev.pt is corrupted.*start the run again"):
        run_training(tiny(tmp_path, epochs=3, resume=True))
    args = ["train", "--dataset", "synthetic", "--synth-subjects", "3", "--synth-per-class", "2", "--synth-frames",
            "6", "--clip-len", "4", "--size", "32", "--model", "meranet10", "--backend", "eager", "--epochs", "3",
            "--batch-size", "4", "--workers", "0", "--cache-dir", "", "--no-progress", "--device", "cpu",
            "--warmup-steps", "2", "--out", str(tmp_path), "--resume"]
    capsys.readouterr()
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "last.pt") in err


def test_resume_with_another_configuration_is_refused(tmp_path, capsys):
    assert run_training(tiny(tmp_path, stop_after_epochs=1)) is None
    with pytest.raises(ResumeMismatch) as e:
        run_training(tiny(tmp_path, resume=True, model="resnet3d10", st_kernel_size=3, lr=0.01))
    text = str(e.value)
    assert str(tmp_path / "last.pt") in text
    assert "model: 'meranet10' in the checkpoint, 'resnet3d10' now" in text
    assert "st_kernel_size: 5 in the checkpoint, 3 now" in text and "lr: 0.001 in the checkpoint, 0.01 now" in text
    with pytest.raises(ResumeMismatch) as e:  # another dataset: the settings and the samples it gives
        run_training(tiny(tmp_path, resume=True, synth_subjects=4))
    text = str(e.value)
    assert "synth_subjects: 3 in the checkpoint, 4 now" in text
    assert re.search(r"(train|val|test) samples: \d+ not in the checkpoint's \(synthetic/sub0", text), text
    assert load_checkpoint(str(tmp_path / "last.pt"))["epoch"] == 1  # nothing was overwritten
    # settings that only say where and how the same run executes may change
    resumed = run_training(tiny(tmp_path, resume=True, workers=1, progress=True, cache_dir=str(tmp_path / "c")))
    assert resumed is not None and load_checkpoint(str(tmp_path / "last.pt"))["epoch"] == 2


def test_config_and_data_differences_are_listed():
    saved = {"model": "meranet18", "classes": ("a", "b"), "workers": 2, "out": "x", "lr": 1e-3}
    now = {"model": "meranet18", "classes": ["a", "b"], "workers": 0, "out": "y", "lr": 1e-3}
    assert config_differences(saved, now) == []  # tuple vs list is the same value; workers and out may change
    assert {"workers", "out", "device", "resume"} <= MAY_CHANGE and "model" not in MAY_CHANGE
    # A checkpoint from before the attention backend was called "backend" ("impl": "fused") resumes.
    assert config_differences({**saved, "impl": "fused"}, {**now, "backend": "cpp"}) == []
    now["classes"] = ["a"]
    assert config_differences(saved, now) == ["classes: ['a', 'b'] in the checkpoint, ['a'] now"]
    old = {"classes": ["a", "b"], "train": {"d/s1/x": "a", "d/s1/y": "b"}, "test": {"d/s2/z": "a"}}
    new = {"classes": ["a", "b"], "train": {"d/s1/x": "b", "d/s1/w": "a"}, "test": {"d/s2/z": "a"}}
    lines = data_differences(old, new)
    assert lines == ["train samples: 1 of the checkpoint's are not in the data now (d/s1/y)",
                     "train samples: 1 not in the checkpoint's (d/s1/w)",
                     "train samples: 1 with another label now (d/s1/x: a -> b)"]


# ---------------------------------------------------------------- frames

def test_truncated_jpeg_names_the_file_and_the_sample(tmp_path):
    info = fx.make_casme2(str(tmp_path))
    index = load_casme2(str(tmp_path))
    sample = next(s for s in index.samples if s.name == "EP03_02")
    ds = ClipDataset([sample], ("disgust",), 4, (16, 16))
    frame = os.path.join(info["base"], "sub01", "EP03_02", "img14.jpg")  # the apex: inside every clip
    assert frame in sample.frames
    ds[0]
    _truncate(frame)
    with pytest.raises(FrameError) as e:
        ds[0]
    text = str(e.value)
    assert frame in text and "sample casme2/sub01/EP03_02" in text and "truncated" in text.lower(), text


def test_frame_folder_gap_names_the_file_and_the_sample(tmp_path):
    info = fx.make_casme2(str(tmp_path / "casme2"))
    os.remove(os.path.join(info["base"], "sub02", "EP09_05", "img12.jpg"))
    with pytest.raises(FrameError, match=r"sample casme2/sub02/EP09_05: missing frame .*img12\.jpg.*gap"):
        load_casme2(str(tmp_path / "casme2"))
    fx.make_smic(str(tmp_path / "smic"))
    folder = os.path.join(tmp_path, "smic", "SMIC_all_cropped", "HS", "s2", "micro", "surprise", "s2_sur_01")
    os.remove(os.path.join(folder, "reg_image505.bmp"))
    with pytest.raises(FrameError, match=r"sample smic/s2/s2_sur_01: missing frame .*reg_image505\.bmp"):
        load_smic(str(tmp_path / "smic"))

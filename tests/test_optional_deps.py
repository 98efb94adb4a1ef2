"""Optional dependencies (fvcore, openpyxl, matplotlib): the package imports and works without them, and
the features that need one say which package is missing and how to install it. Their absence is simulated
by blocking the import (a None entry in sys.modules), so these run whether or not they are installed."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import meranet_fast
from meranet_fast import _optional


@pytest.fixture
def block(monkeypatch):
    """block(name): make ``import name`` (and its submodules) raise ImportError for the test."""

    def _block(name):
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, key)
        monkeypatch.setitem(sys.modules, name, None)

    return _block


def test_every_module_imports_without_the_optional_packages():
    """In a fresh interpreter where fvcore, openpyxl and matplotlib cannot be imported, every module of the
    package imports."""
    names = [m.name for m in pkgutil.walk_packages(meranet_fast.__path__, "meranet_fast.")]
    code = ("import sys, importlib\n"
            f"for blocked in {list(_optional.OPTIONAL)!r}: sys.modules[blocked] = None\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print('imported', len(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(names) > 30  # the walk found the package's modules


@pytest.mark.parametrize("module", sorted(_optional.OPTIONAL))
def test_require_names_the_package_and_the_extra(module, block):
    block(module)
    assert not _optional.available(module)
    extra = _optional.OPTIONAL[module][1]
    with pytest.raises(ImportError, match=rf"need {module}, .*pip install {module}.*\[{extra}\] extra"):
        _optional.require(module)


def test_flop_count_without_fvcore_says_so(block):
    from meranet_fast.analysis import flop_count_analysis

    block("fvcore")
    with pytest.raises(ImportError, match="FLOP counts .* need fvcore"):
        flop_count_analysis(torch.nn.Conv3d(1, 1, 1), torch.zeros(1, 1, 1, 1, 1))


def test_spreadsheets_without_openpyxl_say_so(block, tmp_path):
    from meranet_fast.data import load_dataset, make_synthetic, write_casme2_style

    block("openpyxl")
    with pytest.raises(ImportError, match="spreadsheets .* need openpyxl"):
        write_casme2_style(make_synthetic(num_subjects=1, per_class=1, num_frames=4), str(tmp_path), (8, 8))
    (tmp_path / "CASME2-coding-20140508.xlsx").write_bytes(b"")
    with pytest.raises(ImportError, match="need openpyxl"):
        load_dataset("casme2", str(tmp_path))


def test_plots_without_matplotlib_say_so(block, tmp_path):
    from meranet_fast.train.plots import plot_confusion

    block("matplotlib")
    with pytest.raises(ImportError, match="PNG plots .* need matplotlib"):
        plot_confusion(np.eye(2, dtype=int), ("a", "b"), str(tmp_path / "cm.png"))


def test_trainer_writes_no_plots_without_matplotlib(monkeypatch, tmp_path, capsys):
    """A run without matplotlib finishes and writes its metrics and results, and says why there is no PNG."""
    from meranet_fast.train import trainer
    from meranet_fast.train.config import make_config
    from meranet_fast.train.plots import NO_PLOTS

    monkeypatch.setattr(trainer, "available", lambda module: module != "matplotlib")
    cfg = make_config("paper", dataset="synthetic", synth_subjects=3, synth_per_class=2, synth_frames=6, clip_len=4,
                      size=32, model="resnet3d10", backend="eager", epochs=1, batch_size=4, workers=0, cache_dir="",
                      progress=False, out=str(tmp_path), device="cpu", warmup_steps=1)
    trainer.run_training(cfg)
    assert (tmp_path / "result.json").exists() and (tmp_path / "metrics.csv").exists()
    assert not list(tmp_path.glob("*.png"))
    assert NO_PLOTS in capsys.readouterr().out


def test_required_optional_packages_fail_the_run_when_missing(block, monkeypatch):
    """MERANET_REQUIRE_OPTIONAL=1 (set by `make test`) turns a missing optional package into a failed run."""
    import conftest

    block("openpyxl")
    monkeypatch.setenv("MERANET_REQUIRE_OPTIONAL", "1")
    message = "MERANET_REQUIRE_OPTIONAL=1 but (.*, )?openpyxl(, .*)? cannot be found"
    with pytest.raises(pytest.UsageError, match=message):
        conftest.pytest_configure(None)

"""Shared pytest configuration: every test starts from the same random state.

Markers (``cuda``, ``triton``, ``slow``) are declared in pyproject.toml.
MERANET_REQUIRE_OPTIONAL=1 (set by `make test`): the run fails at once if an optional dependency is
missing, so none of the tests that need one (tests/fixtures/optional.py) can skip in that run.
"""
import os
import random

import numpy as np
import pytest
import torch

from meranet_fast import _extension
from meranet_fast._optional import OPTIONAL, available

#: Skip marker of the tests that need the compiled extension meranet_fast._C (the reason: why it did not load).
#: Test modules import it (`from conftest import needs_cpp`); the Triton tests use the triton_device fixture.
needs_cpp = pytest.mark.skipif(not _extension.is_loaded(), reason=f"meranet_fast._C not built: {_extension.LOAD_ERROR}")


def pytest_configure(config):
    if os.environ.get("MERANET_REQUIRE_OPTIONAL") == "1":
        missing = [m for m in OPTIONAL if not available(m)]
        if missing:
            raise pytest.UsageError(f"MERANET_REQUIRE_OPTIONAL=1 but {', '.join(missing)} cannot be found: install the "
                                    "[full] extra (`make test` does), or unset the variable to let their tests skip")


def _triton_test_device():
    """(device the Triton tests run on, why): CPU tensors under the interpreter (TRITON_INTERPRET=1),
    CUDA tensors on a GPU otherwise, None when neither can run."""
    from meranet_fast.ops import triton as triton_backend

    error = triton_backend.load_error()
    if error is not None:
        return None, error
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu", "the Triton CPU interpreter"
    if torch.cuda.is_available():
        return "cuda", "a CUDA device"
    return None, "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"


@pytest.fixture
def triton_device():
    """The torch.device for a Triton test's tensors; skips the test (with the reason) where Triton cannot run."""
    device, why = _triton_test_device()
    if device is None:
        pytest.skip(f"Triton backend unavailable: {why}")
    return torch.device(device)
# Hypothesis profiles of the property tests (tests/test_properties.py): "ci", the default, draws the same
# examples every run (derandomized) within a bounded budget; HYPOTHESIS_PROFILE=long explores many more,
# with random seeds, keeping failures in .hypothesis/ to replay them.
try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # a dev dependency; test_properties.py skips with the reason without it
    pass
else:
    _hypothesis_settings.register_profile(
        "ci", derandomize=True, database=None, max_examples=60, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hypothesis_settings.register_profile(
        "long", max_examples=1000, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def native_cpu_conv():
    """Run torch's CPU convolutions without oneDNN for the test.

    With torch 2.14.1, oneDNN's bf16 conv3d weight gradient on CPU is non-finite in about 5 % of
    backward passes over identical inputs (200 tries of Conv3d(64, 64, 3) on a 2x64x2x8x8 input under
    CPU bf16 autocast: 10 non-finite with oneDNN, 0 without). Tests that check the gradients of a whole
    model under CPU bf16 autocast use torch's native convolution so they test our ops, not that bug.
    """
    was_enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was_enabled

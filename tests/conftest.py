"""Shared pytest configuration: every test starts from the same random state.

Markers (``cuda``, ``triton``, ``slow``) are declared in pyproject.toml.
"""
import random

import numpy as np
import pytest
import torch


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

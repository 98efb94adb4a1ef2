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

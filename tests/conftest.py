"""Shared fixtures: a fresh param store and a fixed seed per test; slow/cuda markers."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch

logging.getLogger("pyro").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    # Tests may use the global store (as a user's script would); start each clean.
    pyro.clear_param_store()
    torch.manual_seed(1234)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

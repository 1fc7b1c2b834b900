"""Shared fixtures: a fresh param store and a fixed seed per test; slow/cuda markers."""

from __future__ import annotations

import logging
import os

import pyro
import pytest
import torch
from saved_models import resign

logging.getLogger("pyro").setLevel(logging.WARNING)

# Under pytest-xdist (`make test` runs one worker per core), each worker gets its share of the
# cores, and so do the CLI and tutorial subprocesses it starts (they inherit OMP_NUM_THREADS):
# torch's default of one thread per core in every worker would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    # Tests may use the global store (as a user's script would); start each clean.
    pyro.clear_param_store()
    torch.manual_seed(1234)
    yield
    pyro.clear_param_store()


def _make_older(folder, *, settings=(), extra=(), tensors=()) -> None:
    """Edit a saved model folder into one without these hyperparameters, fitted entries and tensors
    (a file from before they existed, which the loaders still read)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    for key in settings:
        del meta["hyperparameters"][key]
    for key in extra:
        del meta["extra"][key]
    (folder / "meta.json").write_text(json.dumps(meta))
    if tensors:
        saved = torch.load(folder / "tensors.pt", weights_only=True)
        for key in tensors:
            del saved[key]
        torch.save(saved, folder / "tensors.pt")
        resign(folder)  # the checksum goes with the tensors


@pytest.fixture
def make_older():
    """``make_older(folder, settings=..., extra=..., tensors=...)``: a saved model without those entries."""
    return _make_older


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

"""Tier 4 smoke: every tutorial runs as a script in fast mode, and converts to a notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(path):
    env = {**os.environ, "BAYESGEN_SMOKE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_a_valid_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    prose = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert len(code) >= 4 and len(prose) >= 4


def test_every_model_has_a_tutorial():
    names = {p.stem for p in TUTORIALS}
    assert {"ab_test", "arviz_bridge", "gaussian_generator", "vae", "topic_model", "anomaly", "diagnostics"} <= names

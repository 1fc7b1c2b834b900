"""Tier 4 smoke: every tutorial runs as a script in fast mode, and converts to a notebook."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


OUTPUTS: dict[str, str] = {}


def run_smoke(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BAYESGEN_SMOKE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(path):
    proc = run_smoke(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    OUTPUTS[path.stem] = proc.stdout


@pytest.mark.parametrize("name", ["arviz_bridge", "vae"])
def test_tutorial_prints_the_same_numbers_on_a_second_run(name):
    path = ROOT / "tutorials" / f"{name}.py"

    # Timings ("0.50 s per epoch") measure the machine, not the model: masked.
    def numbers(text: str) -> str:
        return re.sub(r"\d+(\.\d+)? s\b", "<t> s", text)

    first = numbers(OUTPUTS.get(name) or run_smoke(path).stdout)
    second = numbers(run_smoke(path).stdout)
    assert re.search(r"\d\.\d\d", first), "the tutorial prints no numbers to compare"
    assert second == first


# The bridge and your-model tutorials are about a user's own model: data and seed are in the tutorial itself.
USER_MODEL_TUTORIALS = {"arviz_bridge", "your_model"}


@pytest.mark.parametrize(
    "path",
    [p for p in TUTORIALS if p.stem not in USER_MODEL_TUTORIALS],
    ids=[p.stem for p in TUTORIALS if p.stem not in USER_MODEL_TUTORIALS],
)
def test_tutorial_is_pinned_to_a_spec_and_its_seed(path):
    import tomllib

    match = re.search(r"Pinned to `(models/[\w.]+\.toml)` \(seed (\d+)\)", path.read_text())
    assert match, "the header must say which spec and seed it reproduces"
    spec = tomllib.loads((ROOT / match.group(1)).read_text())
    assert spec["run"]["seed"] == int(match.group(2))
    assert match.group(1).split("/")[1] in path.read_text().replace('" / "', "/")


def test_a_tutorial_runs_as_a_notebook(monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("BAYESGEN_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(ROOT / "tutorials" / "arviz_bridge.py")
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "tutorials")}}
    )
    client.execute()
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors and "mu" in text


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_a_valid_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    prose = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert len(code) >= 4 and len(prose) >= 4


def test_every_model_has_a_tutorial():
    from bayesgen.registry import MODELS

    names = {p.stem for p in TUTORIALS}
    assert {entry.tutorial for entry in MODELS.values()} | {"arviz_bridge", "diagnostics", "your_model"} <= names

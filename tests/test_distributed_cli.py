"""``bayesgen fit --nproc 2``: the command line under torchrun (2 gloo ranks), one run folder written by rank 0."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]


def short_vae_spec(tmp_path: Path) -> Path:
    spec = tomllib.loads((ROOT / "models" / "vae_digits.toml").read_text())
    spec["inference"].update({"num_epochs": 2, "batch_size": 32, "device": "cpu"})
    spec["report"].update({"iwae_samples": 10, "iwae_rows": 20, "arviz_samples": 5})
    path = tmp_path / "vae_short.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def test_fit_under_torchrun_runs_two_ranks_and_writes_one_run_folder(tmp_path: Path) -> None:
    spec = short_vae_spec(tmp_path)
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, "-m", "bayesgen", "fit", str(spec), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 reports; rank 1 stays silent
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2
    assert info["global_batch_size"] == 64
    assert (out / "model").exists() and (out / "summary.csv").is_file()
    assert not list(tmp_path.glob(".run*"))  # no staging folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "vae_short.toml"]


def test_nproc_with_a_counts_spec_says_what_to_do(tmp_path: Path) -> None:
    spec = tomllib.loads((ROOT / "models" / "ab_resume_callbacks.toml").read_text())
    path = tmp_path / "ab.toml"
    path.write_text(tomli_w.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "bayesgen", "fit", str(path), "--nproc", "2", "--out", str(tmp_path / "ab")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "bayesgen: error (rank 0):" in proc.stderr and "bayesgen: error (rank 1):" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "fit_events" in proc.stderr
    assert not (tmp_path / "ab").exists()

"""The tour (smoke mode), its HTML report read by a headless browser, and `bayesgen reproduce`."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesgen.tour import TOUR_SPECS

ROOT = Path(__file__).resolve().parents[1]


def bayesgen(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayesgen", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    proc = bayesgen("tour", "--smoke", "--quiet", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_tour_fits_every_model_and_writes_run_folders(tour):
    out, proc = tour
    for i, name in enumerate(TOUR_SPECS):
        assert f"[{i + 1}/{len(TOUR_SPECS)}] {name}" in proc.stdout
        folder = out / name
        for f in ("spec.toml", "run.json", "versions.json", "summary.csv", "posterior.nc", "diagnostics.json",
                  "plots/loss.png"):
            assert (folder / f).is_file(), f"{name}: {f} missing"
        run = json.loads((folder / "run.json").read_text())
        assert run["name"] == name and run["data_checksum"].startswith("sha256:") and run["seed"] == 0
        assert len(pd.read_csv(folder / "summary.csv", index_col=0)) > 0
    anomaly = pd.read_csv(out / "anomaly_breast_cancer" / "report.csv", index_col=0)["value"]
    share = anomaly["labelled_anomaly_share"]  # 212 malignant of 569
    assert share == pytest.approx(212 / 569)
    assert anomaly["brier_constant_baseline"] == pytest.approx(share * (1 - share))
    record = json.loads((out / "tour.json").read_text())
    assert record["errors"] == {} and set(record["folders"]) == set(TOUR_SPECS) and record["smoke"] is True


def test_report_is_self_contained_with_a_section_per_model(tour):
    out, _ = tour
    page = (out / "report.html").read_text()
    assert page.count('<section class="model"') == len(TOUR_SPECS)
    for title in ("Beta-Binomial A/B(/n) test", "Gaussian class-conditional generator", "Variational autoencoder",
                  "Neural topic model (ProdLDA)", "Mixture anomaly detector"):
        assert title in page
    for heading in ("Data", "Loss curve", "ArviZ summary", "Pictures", "Model graph", "Posterior predictive check"):
        assert page.count(f"<h3>{heading}</h3>") == len(TOUR_SPECS), heading
    sources = re.findall(r'<img src="([^"]+)"', page)
    graphs = page.count("<figcaption>pyro.render_model of the model")
    # Each model's graph is a picture with Graphviz and a text rendering without it (optional system tool).
    assert graphs + page.count("<pre>") == len(TOUR_SPECS)
    assert graphs == (len(TOUR_SPECS) if shutil.which("dot") else 0)
    assert "latent" in page and "observed" in page
    assert page.count("SVI vs exact posterior of") >= 2  # the A/B rates and the generator's class weights
    assert re.search(r"memorization_passed</th>\s*<td>(passed|failed)</td>", page)
    assert len(sources) >= 3 * len(TOUR_SPECS) + graphs
    assert all(s.startswith("data:image/") for s in sources)  # nothing to fetch: it opens offline, mailed or archived
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)


@functools.cache
def _chromium() -> str | None:
    """A headless Chromium that starts (a half-installed one skips the browser tests rather than failing them)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return None
    try:
        probe = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--dump-dom", "about:blank"], capture_output=True, text=True, timeout=120)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return exe if probe.returncode == 0 and "<html" in probe.stdout else None


def _headless(*args: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("no working headless Chromium (Debian: apt-get install chromium)")
    # --disable-dev-shm-usage: containers give /dev/shm 64 MB, too little for a page of inlined pictures.
    command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
               *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("headless Chromium did not finish within 180 s")
    assert proc.returncode == 0, f"Chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.mark.browser
def test_report_renders_every_section_and_picture_in_a_browser(tour):
    out, _ = tour
    page = out / "report.html"
    # The page's own script counts, after load, the sections and the pictures that decoded.
    proc = _headless("--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    n_img = page.read_text().count("<img ")
    assert attrs == {"images": str(n_img), "broken-images": "0", "sections": str(len(TOUR_SPECS))}


@pytest.mark.browser
def test_report_screenshot_shows_the_header_and_the_first_loss_curve(tour, tmp_path):
    from PIL import Image

    out, _ = tour
    shot = tmp_path / "shot.png"
    proc = _headless("--window-size=1280,1600", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    # The header band is the report's navy (#1f3b5c) across the page's top.
    band = pixels[5:60, :, :]
    assert (np.abs(band - [0x1F, 0x3B, 0x5C]).sum(axis=2) < 20).mean() > 0.8
    # The first section's loss curve decoded and was drawn: its moving average, matplotlib's orange
    # (#ff7f0e), appears in the first screen (no other element of the page is orange), and the page is not blank.
    orange = (np.abs(pixels - [0xFF, 0x7F, 0x0E]).sum(axis=2) < 40).sum()
    assert orange > 200
    assert (pixels.sum(axis=2) < 600).mean() > 0.05


def test_reproduce_matches_a_run_and_catches_a_changed_one(tour, tmp_path, capsys):
    out, _ = tour
    original = tmp_path / "ab"
    shutil.copytree(out / "ab_resume_callbacks", original)
    proc = bayesgen("reproduce", str(original), "--quiet", "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REPRODUCED" in proc.stdout and "data checksum matches" in proc.stdout
    table = pd.read_csv(tmp_path / "again" / "reproduce.csv", index_col=0)
    assert "rate[white] mean" in table.index and table["ok"].all()
    assert "report: white prob_best" in table.index  # the model's own figures are compared too
    # Shift one posterior mean by a posterior sd, as a different result would: caught, exit status 1.
    summary = pd.read_csv(original / "summary.csv", index_col=0)
    summary.iloc[0, summary.columns.get_loc("mean")] += summary["sd"].iloc[0]
    summary.to_csv(original / "summary.csv")
    run = json.loads((original / "run.json").read_text())
    run["data_checksum"] = "sha256:0000"
    (original / "run.json").write_text(json.dumps(run))
    proc = bayesgen("reproduce", str(original), "--quiet", "--out", str(tmp_path / "third"))
    assert proc.returncode == 1
    assert "NOT REPRODUCED" in proc.stdout and "DIFFERS" in proc.stdout and "rate[white] mean" in proc.stdout
    bad = bayesgen("reproduce", str(tmp_path))
    assert bad.returncode == 2 and "not a complete run folder" in bad.stderr
    onto_itself = bayesgen("reproduce", str(original), "--out", str(original))
    assert onto_itself.returncode == 2 and "own folder" in onto_itself.stderr
    from bayesgen.cli import main  # these fail before any work: in this process, without a subprocess's imports

    for option, value in (("--tolerance", "-1"), ("--rtol", "nan")):
        status = main(["reproduce", str(original), option, value, "--out", str(tmp_path / "never")])
        assert status == 2 and f"{option[2:]} must be a finite number >= 0" in capsys.readouterr().err
    status = main(["diagnose", str(original), "--num-samples", "0"])
    assert status == 2 and "--num-samples must be an integer >= 2" in capsys.readouterr().err


def test_reproduce_a_neural_run_on_the_cpu(tour, tmp_path):
    out, _ = tour
    from bayesgen.specs import reproduce

    result = reproduce(out / "vae_digits", tmp_path / "vae")
    assert result.match, result.table[~result.table["ok"]]
    assert result.data_match and len(result.table) > 100


def test_tour_refuses_an_unavailable_device_up_front(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = bayesgen("tour", "--smoke", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 2 and "cuda" in proc.stderr.lower() and "[1/5]" not in proc.stdout


def test_tour_names_an_unknown_spec_up_front(tmp_path, capsys):
    from bayesgen.cli import main

    status = main(["tour", "--smoke", "--only", "nope", "--out", str(tmp_path)])
    stderr = capsys.readouterr().err
    assert status == 2 and "no spec named ['nope']" in stderr and "ab_resume_callbacks" in stderr


@pytest.mark.cuda
def test_tour_runs_on_the_gpu(tmp_path):
    proc = bayesgen("tour", "--smoke", "--quiet", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in TOUR_SPECS:
        assert json.loads((tmp_path / name / "run.json").read_text())["device"].startswith("cuda")


def test_every_smoke_spec_is_a_valid_spec(tmp_path):
    # A run folder's spec.toml is read back by `bayesgen reproduce`: the tour's cuts must pass load_spec
    # (session 14: the VAE's report keys, added to every spec, made the others' run folders unreadable).
    import tomli_w

    from bayesgen.specs import load_spec
    from bayesgen.tour import smoke_spec, specs_dir

    for name in TOUR_SPECS:
        spec = smoke_spec(load_spec(specs_dir() / f"{name}.toml"))
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps({k: v for k, v in spec.items() if not k.startswith("_")}))
        again = load_spec(path)
        assert again["report"] == spec["report"] and again["run"]["model"] == spec["run"]["model"]

"""Files are written whole or not at all: full disks, failed fits, reused --out, concurrent writers,
run names, model checksums and resumable fits."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayesgen.models._base as base
from bayesgen.cli import main
from bayesgen.io import WriteError, atomic_path, lock_path, staged_folder, staging_path, write_json, write_text
from bayesgen.models import BayesianEstimator, ModelFileError
from bayesgen.runs.folder import run_spec
from bayesgen.runs.spec import load_spec

SPEC = """
[run]
name = "ab"
model = "ab_test"
seed = 0
[data]
source = "bundled:resume_callbacks.csv"
[inference]
method = "{method}"
num_steps = 60
learning_rate = 0.3
num_samples = 200
device = "cpu"
[report]
arviz_samples = 50
diagnostic_samples = 100
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "ab.toml"
    path.write_text(SPEC.format(method="exact"))
    return path


@pytest.fixture
def svi_spec(tmp_path):
    path = tmp_path / "ab_svi.toml"
    path.write_text(SPEC.format(method="svi"))
    return path


def fit(spec, out, *extra):
    return main(["fit", str(spec), "--out", str(out), "--quiet", *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("bayesgen: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders, temporary files and locks left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def full_disk(written: bytes = b"1,2.5"):
    """A writer that writes some bytes to its file, then finds the disk full."""

    def write(self, path, *args, **kwargs):
        Path(path).write_bytes(written)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


# ------------------------------------------------------------------ helpers
def test_atomic_path_keeps_the_target_on_a_full_disk(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(WriteError, match=r"no space left on device writing .*table.csv; nothing was written"):
        with atomic_path(target) as tmp:
            tmp.write_text("1,2.")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="already exists"):
        write_text(target, "x", overwrite=False)


def test_a_netcdf_runtime_error_is_one_clear_write_error(tmp_path):
    with pytest.raises(WriteError, match=r"could not write .*posterior.nc: NetCDF: HDF error; nothing was written"):
        with atomic_path(tmp_path / "posterior.nc") as tmp:
            tmp.write_bytes(b"\x89HDF")
            raise RuntimeError("NetCDF: HDF error")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="a plotting bug"):  # a writer's own RuntimeError is not an I/O error
        with atomic_path(tmp_path / "x.png"):
            raise RuntimeError("a plotting bug")


def test_staged_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyError):
        with staged_folder(target) as staging:
            (staging / "half.txt").write_text("half")
            raise KeyError("boom")
    assert not target.exists() and leftovers(tmp_path) == []
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("new")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "new" and leftovers(tmp_path) == []


# ------------------------------------------------------- run folders, --out
def test_a_failed_fit_leaves_no_run_folder(spec, tmp_path, monkeypatch, capsys):
    import bayesgen.models.ab_test as ab_test

    def broken(*args):
        raise ValueError("the data broke")

    monkeypatch.setattr(ab_test, "fit_ab_test_spec", broken)
    assert fit(spec, tmp_path / "run") == 2
    assert "the data broke" in error_line(capsys)
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ab_test, "fit_ab_test_spec", interrupted)
    assert fit(spec, tmp_path / "run") == 130
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["netcdf", "netcdf_enospc", "png"])
def test_a_full_disk_during_fit_keeps_the_earlier_run(spec, tmp_path, monkeypatch, capsys, where):
    import matplotlib.figure
    import xarray as xr

    out = tmp_path / "run"
    assert fit(spec, out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    if where == "netcdf":

        def hdf_error(self, path, *args, **kwargs):
            Path(path).write_bytes(b"\x89HDF\r\n")
            raise RuntimeError("NetCDF: HDF error")

        monkeypatch.setattr(xr.DataTree, "to_netcdf", hdf_error)
        expected = r"could not write .*posterior.nc: NetCDF: HDF error; nothing was written"
    elif where == "netcdf_enospc":
        monkeypatch.setattr(xr.DataTree, "to_netcdf", full_disk())
        expected = r"no space left on device writing .*posterior.nc; nothing was written"
    else:
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk(b""))
        expected = r"no space left on device writing .*\.png; nothing was written"
    assert fit(spec, out, "--overwrite") == 2
    assert __import__("re").search(expected, error_line(capsys))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and leftovers(tmp_path) == []


def test_a_new_fit_into_a_fresh_folder_on_a_full_disk_leaves_nothing(spec, tmp_path, monkeypatch, capsys):
    import xarray as xr

    monkeypatch.setattr(xr.DataTree, "to_netcdf", full_disk())
    assert fit(spec, tmp_path / "run") == 2
    assert "no space left on device" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "ab.toml"]


def test_out_is_refused_when_it_holds_something_and_replaced_whole_with_overwrite(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(spec, out) == 0
    (out / "plots" / "stale.png").write_bytes(b"an earlier run's picture")
    run = (out / "run.json").read_text()
    capsys.readouterr()
    assert fit(spec, out) == 2
    line = error_line(capsys)
    assert "not empty" in line and "--overwrite" in line
    assert (out / "plots" / "stale.png").is_file() and (out / "run.json").read_text() == run
    assert fit(spec, out, "--overwrite") == 0
    assert not (out / "plots" / "stale.png").exists() and (out / "run.json").is_file()
    assert leftovers(tmp_path) == []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        run_spec(spec, a_file)
    (tmp_path / "empty").mkdir()  # an empty folder is no loss
    assert run_spec(spec, tmp_path / "empty").folder == tmp_path / "empty"


def test_a_writer_holding_the_lock_refuses_a_second_one(spec, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(lock_path(out))!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.mkdir({str(staging_path(out))!r})
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert fit(spec, out) == 2
        assert "another process is writing" in error_line(capsys)
        assert staging_path(out).is_dir() and not out.exists()  # the live writer's work is left alone
    finally:
        holder.kill()
        holder.wait()
    # The writer died: its staging folder is stale (the lock is free) and is cleared.
    (staging_path(out) / "half.nc").write_bytes(b"half")
    assert fit(spec, out) == 0
    assert not (out / "half.nc").exists() and (out / "run.json").is_file() and leftovers(tmp_path) == []


def test_a_lock_held_in_this_process_refuses_the_api_too(spec, tmp_path):
    out = tmp_path / "run"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="another process is writing"):
            run_spec(spec, out)
    finally:
        os.close(fd)
    assert not out.exists()


@pytest.mark.parametrize(
    "name", ["../../../outside", "a/b", "a\\b", "/abs/olute", "", " ", ".", "..", ".hidden", "tab\there"]
)
def test_a_run_name_never_chooses_a_path(tmp_path, name):
    path = tmp_path / "s.toml"
    path.write_text(SPEC.format(method="exact").replace('name = "ab"', f"name = {json.dumps(name)}"))
    with pytest.raises(ValueError, match="not a plain folder name"):
        load_spec(path)


def test_a_plain_run_name_goes_under_runs(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_spec(spec)
    assert out.folder.parent == Path("runs") and out.folder.name.startswith("ab-") and out.folder.is_dir()


def test_every_file_of_a_run_folder_comes_from_write_run_folder(spec, tmp_path, monkeypatch):
    import bayesgen.runs.folder as folder

    written = []

    def only_run_json(staging, spec, fitted, **kwargs):
        written.append((staging, kwargs))
        (staging / "run.json").write_text("{}")
        return pd.DataFrame()

    monkeypatch.setattr(folder, "write_run_folder", only_run_json)
    out = run_spec(spec, tmp_path / "run", num_samples=7)
    assert sorted(p.name for p in out.folder.iterdir()) == ["run.json"]
    ((staging, kwargs),) = written
    assert staging != out.folder and not staging.exists()  # written in the staging folder, then renamed
    assert kwargs["num_samples"] == 7 and kwargs["fit_seconds"] >= 0 and len(kwargs["created"]) == 16


# --------------------------------------------------------- model checksums
def test_a_flipped_bit_in_a_model_file_is_refused_and_diagnose_keeps_its_report(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(spec, out) == 0
    tensors = out / "model" / "tensors.pt"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0x01
    tensors.write_bytes(bytes(data))
    with pytest.raises(
        ModelFileError,
        match=r"tensors.pt does not match its checksum: the file was changed or "
        r"damaged; not loaded",
    ) as info:
        BayesianEstimator.load(out / "model")
    assert "\n" not in str(info.value)
    report = (out / "diagnostics.json").read_bytes()
    capsys.readouterr()
    assert main(["diagnose", str(out), "--num-samples", "100"]) == 2
    assert "does not match its checksum" in error_line(capsys)
    assert (out / "diagnostics.json").read_bytes() == report


def test_save_is_whole_or_nothing_and_refuses_an_existing_folder(tmp_path, monkeypatch, caplog):
    import torch

    from bayesgen.models.ab_test import BetaBinomialTest

    est = BetaBinomialTest(method="exact").fit([5, 3], [10, 10])
    folder = est.save(tmp_path / "m")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format_version"] == 2 and len(meta["tensors_sha256"]) == 64
    with pytest.raises(ValueError, match="not empty"):
        est.save(folder)
    est.save(folder, overwrite=True)
    monkeypatch.setattr(torch, "save", full_disk())
    with pytest.raises(WriteError, match="no space left on device"):
        est.save(folder, overwrite=True)
    with pytest.raises(WriteError):
        est.save(tmp_path / "new")
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    assert BetaBinomialTest.load(folder).prob_best().shape == (2,)  # the earlier save is intact
    # A model saved before models carried a checksum loads, with a warning that it cannot be checked.
    del meta["tensors_sha256"]
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    with caplog.at_level("WARNING"):
        BetaBinomialTest.load(folder)
    assert "no checksum" in caplog.text
    (folder / "meta.json").write_text(json.dumps(meta))  # version 2 without one: an edited file
    with pytest.raises(ModelFileError, match="no checksum"):
        BetaBinomialTest.load(folder)


# -------------------------------------------------------- CSVs and plots
@pytest.fixture
def table_csv(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["y"] = np.repeat([0, 1], 30)
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    return path


def _augment(csv, out, *extra):
    return main(
        [
            "augment",
            "--csv",
            str(csv),
            "--label",
            "y",
            "--num-per-class",
            "5",
            "--out",
            str(out),
            "--covariance",
            "diag",
            "--method",
            "exact",
            "--quiet",
            *extra,
        ]
    )


def _anomaly(csv, out, *extra):
    return main(
        [
            "anomaly",
            "--csv",
            str(csv),
            "--columns",
            "a,b,c",
            "--out",
            str(out),
            "--num-steps",
            "20",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )


@pytest.mark.parametrize("command", [_augment, _anomaly], ids=["augment", "anomaly"])
def test_csv_outputs_on_a_full_disk_and_onto_their_input(command, table_csv, tmp_path, monkeypatch, capsys):
    original = table_csv.read_bytes()
    assert command(table_csv, table_csv) == 2
    assert "is the input" in error_line(capsys) and table_csv.read_bytes() == original
    assert command(table_csv, tmp_path / "." / "in.csv", "--overwrite") == 2  # the same file, spelt otherwise
    assert "is the input" in error_line(capsys) and table_csv.read_bytes() == original
    out = tmp_path / "out.csv"
    out.write_text("earlier output\n")
    assert command(table_csv, out) == 2
    assert "already exists" in error_line(capsys) and out.read_text() == "earlier output\n"
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk(b"a,b\n1.23"))
    assert command(table_csv, out, "--overwrite") == 2
    assert "no space left on device writing" in error_line(capsys) and out.read_text() == "earlier output\n"
    assert command(table_csv, tmp_path / "new.csv") == 2
    error_line(capsys)
    assert not (tmp_path / "new.csv").exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert command(table_csv, out, "--overwrite") == 0
    assert "synthetic" in pd.read_csv(out).columns or "anomaly" in pd.read_csv(out).columns


def test_abtest_plot_needs_overwrite_and_survives_a_full_disk(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    plot = tmp_path / "ab.png"
    plot.write_bytes(b"earlier plot")
    args = ["abtest", "5/10", "3/10", "--method", "exact", "--quiet", "--plot", str(plot)]
    assert main(args) == 2
    assert "already exists" in error_line(capsys) and plot.read_bytes() == b"earlier plot"
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk(b""))
    assert main([*args, "--overwrite"]) == 2
    assert "no space left on device" in error_line(capsys) and plot.read_bytes() == b"earlier plot"
    monkeypatch.undo()
    assert main([*args, "--overwrite"]) == 0 and plot.read_bytes()[:4] == b"\x89PNG"


def test_report_needs_overwrite_and_is_written_whole(spec, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert fit(spec, run) == 0
    page = tmp_path / "report.html"
    page.write_text("earlier report")
    assert main(["report", str(run), "--out", str(page)]) == 2
    assert "already exists" in error_line(capsys) and page.read_text() == "earlier report"
    assert main(["report", str(run), "--out", str(page), "--overwrite"]) == 0
    assert "<html" in page.read_text()


def test_the_tour_folder_is_whole_or_not_at_all(tmp_path, monkeypatch):
    import bayesgen.report
    from bayesgen.tour import run_tour

    out = tmp_path / "tour"
    run_tour(out, device="cpu", names=[], progress=False)
    assert (out / "report.html").is_file() and (out / "tour.json").is_file()
    with pytest.raises(ValueError, match="not empty"):
        run_tour(out, device="cpu", names=[], progress=False)
    (out / "old_run").mkdir()

    def full(*args, **kwargs):
        raise WriteError("no space left on device writing report.html; nothing was written")

    monkeypatch.setattr(bayesgen.report, "write_report", full)
    with pytest.raises(WriteError):
        run_tour(out, device="cpu", names=[], progress=False, overwrite=True)
    assert (out / "old_run").is_dir() and leftovers(tmp_path) == []
    monkeypatch.undo()
    run_tour(out, device="cpu", names=[], progress=False, overwrite=True)
    assert not (out / "old_run").exists() and (out / "report.html").is_file()


# ------------------------------------------------------------- resumable fits
def _interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C before SVI step ``step`` of the next fit (once)."""
    real = base.run_svi
    fired = []

    def run_svi(*args, **kwargs):
        def before_step(i):
            if i == step and not fired:
                fired.append(i)
                raise KeyboardInterrupt

        return real(*args, before_step=before_step, **kwargs)

    monkeypatch.setattr(base, "run_svi", run_svi)


def test_fit_resumes_after_ctrl_c_to_the_uninterrupted_result(svi_spec, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert fit(svi_spec, whole) == 0
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 37)
    capsys.readouterr()
    assert fit(svi_spec, out, "--checkpoint-every", "10") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    command = err[0].split("continue it with ", 1)[1]
    assert command == f"bayesgen fit {svi_spec} --out {out} --resume --checkpoint-every 10"
    assert not out.exists() and (staging_path(out) / "checkpoint.pt").is_file()
    assert fit(svi_spec, out) == 2  # a fresh fit would lose the interrupted one: say how to go on
    assert "--resume" in error_line(capsys)
    monkeypatch.undo()
    steps = []
    real = base.run_svi
    monkeypatch.setattr(base, "run_svi", lambda *a, **k: real(*a, before_step=steps.append, **k))
    assert fit(svi_spec, out, "--resume", "--checkpoint-every", "10") == 0
    assert steps[0] == 37 and len(steps) == 60 - 37  # continued where Ctrl-C stopped it, not fitted again
    assert leftovers(tmp_path) == [] and not (out / "checkpoint.pt").exists()
    assert (out / "losses.csv").read_text() == (whole / "losses.csv").read_text()
    assert (out / "summary.csv").read_text() == (whole / "summary.csv").read_text()


def test_resume_needs_out_and_something_to_resume(svi_spec, tmp_path, capsys):
    assert main(["fit", str(svi_spec), "--resume", "--quiet"]) == 2
    assert "--resume needs --out" in error_line(capsys)
    assert fit(svi_spec, tmp_path / "never", "--resume") == 2
    assert "nothing to resume" in error_line(capsys)
    assert fit(svi_spec, tmp_path / "never", "--checkpoint-every", "0") == 2
    assert "checkpoint_every" in error_line(capsys)
    assert not (tmp_path / "never").exists()


def test_write_datatree_is_lossless_and_compressed(tmp_path):
    import xarray as xr
    from arviz_base import from_dict

    from bayesgen.io import write_datatree

    rng = np.random.default_rng(0)
    counts = rng.poisson(0.05, size=(2, 50, 40, 300)).astype(np.int64)  # replicated word counts: mostly zeros
    tree = from_dict(
        {
            "posterior": {"rate": rng.normal(size=(2, 50, 3)).astype(np.float32)},
            "posterior_predictive": {"words": counts},
            "observed_data": {"words": counts[0, 0]},
        },
        dims={"rate": ["variant"]},
        coords={"variant": ["a", "b", "c"]},
    )
    path = write_datatree(tmp_path / "posterior.nc", tree)
    back = xr.open_datatree(path, engine="netcdf4").load()
    for group in ("posterior", "posterior_predictive", "observed_data"):
        for name, var in tree[group].data_vars.items():
            assert back[group][name].dtype == var.dtype
            np.testing.assert_array_equal(back[group][name].values, var.values)
    assert list(back["posterior"]["variant"].values) == ["a", "b", "c"]
    assert path.stat().st_size < counts.nbytes / 10
    with pytest.raises(ValueError, match="already exists"):
        write_datatree(path, tree, overwrite=False)

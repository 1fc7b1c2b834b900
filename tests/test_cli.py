"""Tier 4 smoke: every CLI command as a subprocess, as a user runs it; argument and input errors, and a command's
further cases after that first run, through :func:`bayesgen.cli.main` in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]


def bayesgen(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bayesgen", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args)``: ``bayesgen *args`` through :func:`bayesgen.cli.main` in this process, from the repository
    root; returns a finished process (its exit status, stdout and stderr) as :func:`bayesgen` does."""
    from bayesgen.cli import main

    monkeypatch.chdir(ROOT)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["bayesgen", *args], status, out, err)

    return run


#: Modules a help text or an argument error has no use for: each takes from a tenth of a second to seconds to import.
HEAVY = ("torch", "pyro", "arviz", "xarray", "pandas", "scipy", "matplotlib")

_ARGUMENT_ERRORS = r"""
import contextlib, io, json, sys
from bayesgen.cli import main

cases = [["--help"], ["abtest", "--help"], ["abtest", "--ci", "2", "1/10", "2/10"], ["abtest", "5/x", "1/2"],
         ["abtest", "5/3", "1/2"], ["abtest", "5/10"], ["abtest", "1/10", "2/10", "--names", "a,a"],
         ["abtest", "--prior", "0,1", "1/10", "2/10"], ["abtest", "--seed", "-1", "1/10", "2/10"], ["abtest"],
         ["fit", "spec.toml", "--resume"], ["diagnose", "no/such/run"], ["report", "no/such/run"],
         ["anomaly", "--csv", "a.csv", "--out", "a.csv"],
         ["augment", "--csv", "a.csv", "--label", "y", "--out", "b.csv", "--clip", "0"]]
report = []
for argv in cases:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    report.append([argv, status, err.getvalue()])
report.append(sorted(name for name in HEAVY if name in sys.modules))
print(json.dumps(report))
"""


def test_help_and_argument_errors_import_no_torch():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bayesgen", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0 and "usage: bayesgen" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "bayesgen.cli" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))

    proc = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + _ARGUMENT_ERRORS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    *runs, heavy = json.loads(proc.stdout)
    for argv, status, stderr in runs:
        if "--help" in argv:
            assert status == 0, argv
        else:
            assert status == 2 and stderr.startswith("bayesgen: error: "), (argv, stderr)
    assert heavy == [], f"argument checks imported {heavy}"


def test_abtest_counts_prints_table_and_writes_plot(tmp_path):
    plot = tmp_path / "ab.png"
    proc = bayesgen(
        "abtest",
        "235/2435",
        "157/2435",
        "--names",
        "white,black",
        "--num-steps",
        "1500",
        "--quiet",
        "--plot",
        str(plot),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "P(best)" in out and "expected loss" in out and "lift vs control" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("white", "black"))}
    assert "235/2435" in lines["white"] and "control" in lines["white"]
    assert "SVI vs exact posterior" in out
    assert plot.stat().st_size > 5000


def test_abtest_exact_with_prior_and_control():
    proc = bayesgen(
        "abtest",
        "50/1000",
        "65/1000",
        "58/1000",
        "--names",
        "a,b,c",
        "--prior",
        "2,20",
        "--control",
        "b",
        "--method",
        "exact",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Beta(2, 20)" in proc.stdout
    assert "control" in [line.split()[-1] for line in proc.stdout.splitlines() if line.strip().startswith("b ")]


def test_abtest_from_csv_of_events(tmp_path):
    csv = tmp_path / "events.csv"
    rows = ["arm,clicked"] + [f"{'A' if i % 2 else 'B'},{int(i % 7 == 0)}" for i in range(2000)]
    csv.write_text("\n".join(rows))
    proc = bayesgen(
        "abtest", "--csv", str(csv), "--variant-col", "arm", "--outcome-col", "clicked", "--method", "exact", "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    assert "/1000" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["abtest", "300/200", "1/2"], "more successes"),
        (["abtest", "--", "-3/200", "1/2"], "negative"),  # "--": a leading "-" is not an option
        (["abtest", "3/0", "1/2"], "zero trials"),
        (["abtest", "nan/10", "1/2"], "NaN"),
        (["abtest", "3/10"], "at least two variants"),
        (["abtest", "3-10", "1/2"], "SUCCESSES/TRIALS"),
        (["abtest", "3/10", "1/2", "--prior", "0,1"], "prior"),
        (["abtest", "3/10", "1/2", "--names", "a"], "names"),
        (["abtest", "--csv", "missing.csv", "--variant-col", "v", "--outcome-col", "y"], "no such data file"),
        (["fit", "no/such/spec.toml"], "no spec file"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(cli, args, message):
    proc = cli(args[0], "--quiet", *args[1:]) if args[0] == "abtest" else cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_abtest_csv_unknown_column_and_bad_outcomes(cli, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("arm,clicked\nA,1\nB,0\nA,3\n")
    proc = cli("abtest", "--csv", str(csv), "--variant-col", "group", "--outcome-col", "clicked")
    assert proc.returncode == 2 and "variant_col='group' is not a column" in proc.stderr
    proc = cli("abtest", "--csv", str(csv), "--variant-col", "arm", "--outcome-col", "clicked")
    assert proc.returncode == 2 and "only 0/1" in proc.stderr


def test_fit_spec_writes_a_complete_run_folder(cli, tmp_path):
    # The shipped spec with a fifth of its steps (`bayesgen tour` fits it in full), fitted twice.
    text = (ROOT / "models" / "ab_resume_callbacks.toml").read_text()
    assert "num_steps = 3000" in text and "average_last = 500" in text
    spec = tmp_path / "ab.toml"
    spec.write_text(
        text.replace("num_steps = 3000", "num_steps = 600").replace("average_last = 500", "average_last = 100")
    )
    out = tmp_path / "run"
    proc = bayesgen("fit", str(spec), "--out", str(out), "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for name in (
        "spec.toml",
        "versions.json",
        "run.json",
        "losses.csv",
        "posterior.nc",
        "summary.csv",
        "report.csv",
        "plots/loss.png",
        "plots/posterior.png",
        "model/meta.json",
        "model/tensors.pt",
    ):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["data_checksum"].startswith("sha256:") and run["num_steps"] == 600
    versions = json.loads((out / "versions.json").read_text())
    assert {"python", "torch", "pyro", "arviz"} <= set(versions)
    tree = xr.open_datatree(out / "posterior.nc")
    assert list(tree.posterior["variant"].values) == ["white", "black"]
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(tree.children)
    # the resolved spec is itself a runnable spec that reproduces the fit
    again = tmp_path / "again"
    proc = cli("fit", str(out / "spec.toml"), "--out", str(again), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (again / "losses.csv").read_text() == (out / "losses.csv").read_text()


def test_fit_rejects_bad_specs(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[run]\nmodel = 'ab_test'\n[data]\nsource = 'bundled:resume_callbacks.csv'\n[inference]\nnum_stepz = 10\n"
    )
    proc = cli("fit", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown settings ['num_stepz']" in proc.stderr
    bad.write_text("[run\nmodel=")
    proc = cli("fit", str(bad))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr
    bad.write_text("[run]\nmodel = 'nope'\n[data]\n")
    proc = cli("fit", str(bad))
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr


def test_augment_writes_real_and_synthetic_rows(cli, tmp_path):
    from bayesgen.datasets import load_digits

    X, y = load_digits()
    csv = tmp_path / "digits.csv"
    frame = __import__("pandas").DataFrame(X[:400], columns=[f"p{i}" for i in range(64)])
    frame["digit"] = y[:400]
    frame.to_csv(csv, index=False)
    out = tmp_path / "augmented.csv"
    proc = bayesgen(
        "augment",
        "--csv",
        str(csv),
        "--label",
        "digit",
        "--num-per-class",
        "20",
        "--out",
        str(out),
        "--covariance",
        "diag",
        "--method",
        "exact",
        "--keep-constant",
        "--clip",
        "0,1",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    result = __import__("pandas").read_csv(out)
    assert len(result) == 400 + 200 and result["synthetic"].sum() == 200
    assert result.loc[result["synthetic"] == 1, "p20"].between(0, 1).all()
    proc = cli(
        "augment",
        "--csv",
        str(csv),
        "--label",
        "digit",
        "--num-per-class",
        "5",
        "--out",
        str(tmp_path / "x.csv"),
        "--method",
        "exact",
        "--covariance",
        "diag",
        "--quiet",
    )
    assert proc.returncode == 2 and "constant" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("augment", "--csv", str(csv), "--label", "nope", "--out", str(tmp_path / "y.csv"))
    assert proc.returncode == 2 and "label column 'nope'" in proc.stderr
    # In a principal subspace: residual noise reaches every modelled pixel, clipped to the bounds.
    proc = cli(
        "augment",
        "--csv",
        str(csv),
        "--label",
        "digit",
        "--num-per-class",
        "30",
        "--out",
        str(tmp_path / "s.csv"),
        "--covariance",
        "full",
        "--method",
        "exact",
        "--subspace",
        "10",
        "--keep-constant",
        "--clip",
        "0,1",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    synthetic = __import__("pandas").read_csv(tmp_path / "s.csv").query("synthetic == 1")
    assert len(synthetic) == 300 and synthetic["p20"].between(0, 1).all() and synthetic["p20"].std() > 0
    proc = cli(
        "augment",
        "--csv",
        str(csv),
        "--label",
        "digit",
        "--out",
        str(tmp_path / "z.csv"),
        "--covariance",
        "full",
        "--method",
        "exact",
        "--subspace",
        "100",
        "--keep-constant",
        "--quiet",
    )
    assert proc.returncode == 2 and "subspace=100" in proc.stderr and "Traceback" not in proc.stderr


def test_augment_learns_from_rows_without_a_label(tmp_path, capsys):
    import pandas as pd

    from bayesgen.cli import main
    from bayesgen.datasets import load_digits

    X, y = load_digits()
    frame = pd.DataFrame(X[:600], columns=[f"p{i}" for i in range(64)])
    frame["digit"] = y[:600]
    frame.loc[50:, "digit"] = None  # 50 labelled rows (5 per class or so), 550 without a label
    csv, out = tmp_path / "partly.csv", tmp_path / "augmented.csv"
    frame.to_csv(csv, index=False)
    common = [
        "augment",
        "--csv",
        str(csv),
        "--label",
        "digit",
        "--num-per-class",
        "10",
        "--out",
        str(out),
        "--covariance",
        "full",
        "--keep-constant",
        "--clip",
        "0,1",
        "--quiet",
    ]
    assert main(common + ["--method", "exact"]) == 2
    assert "550 rows have no label in column 'digit'; pass --unlabelled" in capsys.readouterr().err
    assert main(common + ["--unlabelled"]) == 2  # SVI by default
    assert "--unlabelled needs --method exact" in capsys.readouterr().err
    assert main(common + ["--method", "exact", "--unlabelled"]) == 0
    assert "also learnt from 550 unlabelled rows" in capsys.readouterr().out
    result = pd.read_csv(out)
    labelled = frame.iloc[:50]
    assert len(result) == 50 + 10 * labelled["digit"].nunique() and result["synthetic"].sum() == len(result) - 50
    assert result["digit"].dtype.kind == "i"  # integer labels stay integers beside blank cells
    # The unlabelled rows changed the generator: its samples differ from a labelled-only fit's.
    alone = tmp_path / "alone.csv"
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    assert (
        main([*common[:2], str(tmp_path / "labelled.csv"), *common[3:8], str(alone), *common[9:], "--method", "exact"])
        == 0
    )
    assert not np.allclose(
        pd.read_csv(alone).query("synthetic == 1").iloc[:, :64], result.query("synthetic == 1").iloc[:, :64]
    )


def test_fit_gaussian_digits_spec(tmp_path):
    out = tmp_path / "gen"
    spec = tmp_path / "spec.toml"
    text = (ROOT / "models" / "gaussian_digits.toml").read_text()
    assert "num_steps = 500" in text  # the shortening below must apply
    spec.write_text(text.replace("num_steps = 500", "num_steps = 100"))
    proc = bayesgen("fit", str(spec), "--out", str(out), "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = __import__("pandas").read_csv(out / "report.csv", index_col=0)["value"]
    assert report["tstr_accuracy"] > report["trtr_accuracy"] - 0.15
    assert report["memorization_passed"] == 1
    assert (out / "plots" / "samples.png").stat().st_size > 10_000


def test_fit_names_typos_and_malformed_sections(tmp_path, capsys):
    from bayesgen.cli import main  # in this process: each case fails before any fit, so a subprocess is mostly imports

    bad = tmp_path / "bad.toml"
    head = "[run]\nmodel = 'ab_test'\n"
    src = "[data]\nsource = 'bundled:resume_callbacks.csv'\n"
    digits = "[run]\nmodel = 'gaussian_generator'\n[data]\nsource = 'sklearn:digits'\n[report]\n"
    cases = {
        head + src + "variant_coll = 'x'\n": "unknown keys ['variant_coll'] in [data]",
        head + src + "[report]\ncontroll = 'white'\n": "unknown keys ['controll'] in [report]",
        head + "sead = 1\n" + src: "unknown keys ['sead'] in [run]",
        "data = 'x.csv'\n" + head: "'data' must be a section",
        "[run]\nmodel = ['ab_test']\n[data]\nsource = 'x'\n": "unknown model ['ab_test']",
        head + "seed = 'abc'\n" + src: "seed must be an integer",
        head + "[data]\nformat = 'counts'\n": "[data] needs source",
        # [report] values are checked before the fit too, not when the report is written after it.
        head + src + "[report]\narviz_samples = 'lots'\n": "[report] arviz_samples must be an integer >= 1, got 'lots'",
        head + src + "[report]\nnuts = 'yes'\n": "[report] nuts must be true or false",
        head
        + src
        + "[report]\nimage_shape = [8, 8]\n": "[report] image_shape is read by model 'gaussian_generator' only",
        head + src + "[report]\ncontrol = 'whte'\n": "[report] control 'whte' is not a variant",
        head + src + "[report]\ncontrol = 9\n": "[report] control 9 is not a variant",
        digits + "image_shape = [8, 9]\n": "image_shape [8, 9] holds 72 pixels, but the data have 64 features",
        digits + "image_shape = [8]\n": "image_shape must be [rows, columns]",
    }
    for text, message in cases.items():
        bad.write_text(text)
        status = main(["fit", str(bad), "--out", str(tmp_path / "o")])
        stderr = capsys.readouterr().err
        assert status == 2 and message in stderr, (text, stderr)
        assert not (tmp_path / "o" / "model").exists()  # nothing was fitted


def test_anomaly_command_rejects_a_threshold_outside_zero_one(cli, tmp_path):
    csv = tmp_path / "data.csv"
    pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"]).to_csv(csv, index=False)
    proc = cli("anomaly", "--csv", str(csv), "--out", str(tmp_path / "s.csv"), "--threshold", "2")
    assert proc.returncode == 2 and "--threshold must be a number in (0, 1)" in proc.stderr
    proc = cli("anomaly", "--csv", str(csv), "--columns", "a,a,b", "--out", str(tmp_path / "s.csv"))
    assert proc.returncode == 2 and "more than once" in proc.stderr


def test_anomaly_spec_whose_anomaly_value_matches_no_row_is_an_error(cli, tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60), "kind": "benign"}).to_csv(
        tmp_path / "t.csv", index=False
    )
    spec = tmp_path / "an.toml"
    spec.write_text(
        "[run]\nmodel = 'anomaly'\n[data]\nsource = 't.csv'\nlabel = 'kind'\n"
        "anomaly_value = 'malignant'\n[inference]\nnum_steps = 20\n"
    )
    proc = cli("fit", str(spec), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "matches no row of column 'kind'" in proc.stderr, proc.stderr


def test_anomaly_components_takes_a_positive_integer_or_auto() -> None:
    from bayesgen.cli import build_parser

    parser = build_parser()
    base = ["anomaly", "--csv", "rows.csv", "--out", "scores.csv"]
    assert parser.parse_args([*base, "--components", "auto"]).components == "auto"
    assert parser.parse_args([*base, "--components", "3"]).components == 3
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--components", bad])

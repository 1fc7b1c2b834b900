"""Hostile and malformed inputs: nothing executes, and every refusal is one clear line with exit status 2.

The table lists the hostile inputs (files that would run code, values at
and past the edges of what an option means); the functions after it check
what the table cannot: that a payload's side effect never happens, and the
API's errors.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import pickle
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from saved_models import resign

from bayesgen import cli

CSV_DUPLICATE_HEADER = "arm,arm,clicked\na,b,1\na,b,0\n"


class Payload:
    """Pickled, it calls ``Path.touch(marker)`` when unpickled by a loader that runs code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``bayesgen ARGV`` in-process: (exit status, stderr); ``cli.main`` returns the status of argparse's errors too."""
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    assert lines[0].startswith("bayesgen: error:"), err
    assert fragment in lines[0], err


def write_evil_pickle(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    with gzip.open(path, "wb") as fh:
        pickle.dump(((Payload(marker), np.zeros(2)), (np.zeros(2), np.zeros(2)), (np.zeros(2), np.zeros(2))), fh)
    return path


def write_vae_spec(path: pathlib.Path, source: str) -> pathlib.Path:
    path.write_text(f'[run]\nmodel = "vae"\nname = "evil"\n[data]\nsource = "{source}"\n')
    return path


# ------------------------------------------------------------------ code execution
# A spec or an edited run folder naming a malicious pickle: rows of CLI_ROWS below.
def test_array_pickles_load_and_anything_else_is_refused(tmp_path):
    from bayesgen.datasets import load_mnist, read_array_pickle

    rng = np.random.default_rng(0)
    splits = tuple((rng.random((4, 784)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(3))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # every protocol names different NumPy helpers
        path = tmp_path / f"mnist{protocol}.pkl.gz"
        with gzip.open(path, "wb") as fh:
            pickle.dump(splits, fh, protocol=protocol)
        X_train, y_train, X_test, y_test = load_mnist(path)
        np.testing.assert_array_equal(X_test, splits[2][0])
        assert X_train.shape == (8, 784) and y_train.dtype == np.int64
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([np.arange(3), ("a", 1.5)]))
    assert read_array_pickle(plain)[1] == ("a", 1.5)

    marker = tmp_path / "marker"
    for payload in (Payload(marker), {"a": Fraction(1, 3)}, [torch.zeros(1)]):
        plain.write_bytes(pickle.dumps(payload))
        with pytest.raises(ValueError, match="which bayesgen will not load") as info:
            read_array_pickle(plain)
        assert "\n" not in str(info.value)
    assert not marker.exists()
    for data, fragment in (
        (b"\x1f\x8b" + b"\0" * 20, "not a readable pickle"),
        (b"garbage", "not a readable pickle"),
        (pickle.dumps([1, 2]), "not an MNIST pickle"),
    ):
        plain.write_bytes(data)
        with pytest.raises(ValueError, match=fragment):
            load_mnist(plain)


def _plant_payload(folder: pathlib.Path, marker: pathlib.Path) -> None:
    """Replace a saved model's tensors.pt with a payload, and its recorded checksum with the payload's, as an
    attacker who edits both files would (a changed tensors.pt alone fails the checksum before it is read)."""
    torch.save({"params": {"rate": Payload(marker)}, "losses": torch.zeros(1)}, folder / "tensors.pt")
    resign(folder)


def test_a_model_file_holding_objects_is_refused_in_one_line(tmp_path, capsys):
    from bayesgen.infer import CheckpointError, load_checkpoint
    from bayesgen.models import BayesianEstimator, ModelFileError
    from bayesgen.models.ab_test import BetaBinomialTest

    marker = tmp_path / "marker"
    folder = BetaBinomialTest(method="exact").fit([5, 3], [10, 10]).save(tmp_path / "run" / "model")
    _plant_payload(folder, marker)
    with pytest.raises(ModelFileError) as info:
        BayesianEstimator.load(folder)
    message = str(info.value)
    assert message == (
        f"{folder / 'tensors.pt'} is not a bayesgen model file (it holds objects other than tensors); it was not loaded"
    )
    code, err = run_cli(["diagnose", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "is not a bayesgen model file (it holds objects other than tensors)")

    checkpoint = tmp_path / "svi.ckpt"
    torch.save({"format": "bayesgen-svi-checkpoint", "state": Payload(marker)}, checkpoint)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as info:
        load_checkpoint(checkpoint)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------ one clear line, exit status 2
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The files the table's commands read: a run folder, CSVs, specs and pickles, some of them hostile."""
    from sklearn.datasets import load_digits

    from bayesgen.models.ab_test import BetaBinomialTest

    root = tmp_path_factory.mktemp("hostile")
    run = root / "run"
    BetaBinomialTest(method="exact").fit([5, 3], [10, 10]).save(run / "model")
    evil_run = root / "evil_run"
    folder = BetaBinomialTest(method="exact").fit([5, 3], [10, 10]).save(evil_run / "model")
    _plant_payload(folder, root / "marker")
    shared = root / "shared_run"
    shared.mkdir()
    write_evil_pickle(shared / "evil.pkl.gz", root / "marker")
    write_vae_spec(shared / "spec.toml", "mnist:evil.pkl.gz")
    (shared / "run.json").write_text(json.dumps({"device": "cpu"}))
    (shared / "summary.csv").write_text(",mean,sd\nz,0.0,1.0\n")
    write_evil_pickle(root / "evil.pkl.gz", root / "marker")
    (root / "dup.csv").write_text(CSV_DUPLICATE_HEADER)
    X, y = load_digits(return_X_y=True)
    digits = root / "digits.csv"
    np.savetxt(
        digits,
        np.c_[X, y],
        delimiter=",",
        fmt="%g",
        comments="",
        header=",".join([f"p{j}" for j in range(64)] + ["digit"]),
    )
    (root / "small.csv").write_text("a,b,label\n" + "".join(f"{i % 7},{i % 5},{i % 2}\n" for i in range(20)))
    deep = 100_000
    (root / "deep.toml").write_text(
        '[run]\nmodel = "ab_test"\n[data]\nsource = "bundled:resume_callbacks.csv"\n'
        f"[model]\nprior = {'[' * deep}{']' * deep}\n"
    )
    ab_spec = (
        '[run]\nname = "{name}"\nmodel = "ab_test"\n[data]\nsource = "bundled:resume_callbacks.csv"\n'
        'format = "counts"\nvariant_col = "variant"\nsuccesses_col = "successes"\ntrials_col = "trials"\n'
        '[inference]\nmethod = "exact"\n'
    )
    (root / "ab.toml").write_text(ab_spec.format(name="ab"))
    (root / "outside.toml").write_text(ab_spec.format(name="../../../outside"))
    (root / "absolute.toml").write_text(ab_spec.format(name=str(root / "abs")))
    (root / "taken.csv").write_text("already here\n")
    small_spec = '[run]\nmodel = "gaussian_generator"\n[data]\nsource = "{source}"\nlabel = "label"\n{extra}'
    for name, extra in (
        ("tf_zero", "test_fraction = 0.0"),
        ("tf_text", 'test_fraction = "x"'),
        ("tf_bool", "test_fraction = true"),
        ("tf_big", "test_fraction = 0.99"),
    ):
        (root / f"{name}.toml").write_text(small_spec.format(source=root / "small.csv", extra=extra + "\n"))
    (root / "source_int.toml").write_text('[run]\nmodel = "ab_test"\n[data]\nsource = 5\n')
    damaged = root / "damaged_run"
    BetaBinomialTest(method="exact").fit([5, 3], [10, 10]).save(damaged / "model")
    (damaged / "run.json").write_text("{")
    return {
        "root": root,
        "run": run,
        "evil_run": evil_run,
        "shared": shared,
        "digits": digits,
        "small": root / "small.csv",
        "dup": root / "dup.csv",
        "deep": root / "deep.toml",
        "evil_spec": write_vae_spec(root / "evil.toml", "mnist:evil.pkl.gz"),
    }


AB = ["abtest", "5/10", "3/10", "--quiet", "--method", "exact"]
AUGMENT = ["augment", "--csv", "{small}", "--label", "label", "--out", "{root}/never.csv", "--quiet"]
ANOMALY = ["anomaly", "--csv", "{small}", "--out", "{root}/never.csv", "--quiet"]
DIAGNOSE = ["diagnose", "{run}"]
REPRODUCE = ["reproduce", "{run}", "--out", "{root}/never"]
HUGE_SEED = "99999999999999999999999"

CLI_ROWS = [
    # code execution
    (
        ["fit", "{evil_spec}", "--out", "{root}/never", "--quiet"],
        "holds a pickled pathlib.Path.touch, which bayesgen "
        "will not load: only NumPy arrays, tuples and lists are read from pickles",
    ),
    (["reproduce", "{shared}", "--out", "{root}/never", "--quiet"], "which bayesgen will not load"),
    (["diagnose", "{evil_run}"], "is not a bayesgen model file (it holds objects other than tensors)"),
    # nothing lost or half-written (the full-disk, concurrent-writer and interrupt cases are in test_io.py)
    (["fit", "{root}/ab.toml", "--out", "{run}", "--quiet"], "is a folder that is not empty"),
    ([*AB, "--plot", "{root}/taken.csv"], "already exists; choose another or pass --overwrite"),
    (["augment", "--csv", "{small}", "--label", "label", "--out", "{small}", "--quiet"], "is the input"),
    (["anomaly", "--csv", "{small}", "--out", "{small}", "--quiet", "--overwrite"], "is the input"),
    (["fit", "{root}/outside.toml", "--quiet"], "is not a plain folder name"),
    (["fit", "{root}/absolute.toml", "--quiet"], "is not a plain folder name"),
    (["fit", "{root}/ab.toml", "--resume", "--quiet"], "--resume"),
    # one clear line
    (["fit", "{deep}", "--out", "{root}/never"], "nested too deeply"),
    (
        ["fit", "{root}/tf_zero.toml", "--out", "{root}/never"],
        "[data] test_fraction must be a number in (0, 1), got 0.0",
    ),
    (
        ["fit", "{root}/tf_text.toml", "--out", "{root}/never"],
        "[data] test_fraction must be a number in (0, 1), got 'x'",
    ),
    (
        ["fit", "{root}/tf_bool.toml", "--out", "{root}/never"],
        "[data] test_fraction must be a number in (0, 1), got True",
    ),
    (
        ["fit", "{root}/tf_big.toml", "--out", "{root}/never"],
        "[data] test_fraction = 0.99 cannot split 20 rows of 2 classes",
    ),
    (["fit", "{root}/source_int.toml", "--out", "{root}/never"], "[data] source must be a non-empty string, got 5"),
    (["report", "{root}/damaged_run", "--out", "{root}/never.html"], "run.json is not valid JSON"),
    ([*AB, "--prior", "1e-300,1e-300"], "prior parameters must be in [0.001, 1e+06]"),
    ([*DIAGNOSE, "--device", "meta"], "device='meta' is not supported"),
    pytest.param(
        [*DIAGNOSE, "--device", "cuda"],
        "no CUDA GPU is available",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available here"),
    ),
    ([*AB, "--seed", HUGE_SEED], "--seed must be an integer in [0, 4294967295]"),
    ([*AUGMENT, "--seed", HUGE_SEED], "--seed must be an integer in [0, 4294967295]"),
    ([*ANOMALY, "--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    ([*DIAGNOSE, "--seed", HUGE_SEED], "--seed must be an integer in [0, 4294967295]"),
    ([*AB, "--names", ",b"], "variant names must not be blank"),
    ([*AB, "--names", "a,a"], "variant names must be unique"),
    (
        ["abtest", "--csv", "{dup}", "--variant-col", "arm", "--outcome-col", "clicked", "--quiet"],
        "names columns more than once in its header: ['arm']",
    ),
    (["anomaly", "--csv", "{dup}", "--out", "{root}/never.csv"], "names columns more than once"),
    ([*DIAGNOSE, "--sbc", "-1"], "--sbc must be an integer >= 0"),
    ([*DIAGNOSE, "--nuts-samples", "0"], "--nuts-samples must be an integer >= 2"),
    ([*DIAGNOSE, "--nuts-warmup", "-1"], "--nuts-warmup must be an integer >= 0"),
    ([*DIAGNOSE, "--num-samples", "1"], "--num-samples must be an integer >= 2"),
    ([*DIAGNOSE, "--sbc-steps", "0"], "--sbc-steps must be an integer >= 1"),
    ([*AB, "--num-steps", "0"], "--num-steps must be an integer >= 1"),
    ([*AB, "--batch-size", "2.5"], "--batch-size must be an integer >= 1"),
    ([*AB, "--ci", "1"], "--ci must be a number in (0, 1)"),
    ([*AB, "--ci", "nan"], "--ci must be a number in (0, 1)"),
    ([*AUGMENT, "--num-per-class", "-1"], "--num-per-class must be an integer >= 0"),
    ([*AUGMENT, "--rank", "0"], "--rank must be an integer >= 1"),
    ([*AUGMENT, "--subspace", "0"], "--subspace must be an integer >= 1"),
    ([*AUGMENT, "--num-steps", "-5"], "--num-steps must be an integer >= 1"),
    ([*ANOMALY, "--components", "0"], "--components must be an integer >= 1"),
    ([*ANOMALY, "--threshold", "1"], "--threshold must be a number in (0, 1)"),
    ([*ANOMALY, "--num-steps", "x"], "--num-steps must be an integer >= 1"),
    ([*REPRODUCE, "--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
    ([*REPRODUCE, "--rtol", "inf"], "--rtol must be a finite number >= 0"),
    (["abtest", "--method", "nope"], "invalid choice: 'nope'"),
    (
        [
            "augment",
            "--csv",
            "{digits}",
            "--label",
            "digit",
            "--out",
            "{root}/never.csv",
            "--num-per-class",
            "1000000000",
            "--quiet",
        ],
        "--num-per-class 1000000000 asks for 10 classes × 1e+09 rows × 64 columns",
    ),
]


@pytest.mark.parametrize(("argv", "fragment"), CLI_ROWS)
def test_hostile_command_lines_get_one_clear_line(argv, fragment, files, capsys):
    code, err = run_cli([a.format(**files) for a in argv], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (files["root"] / "marker").exists()
    assert not (files["root"] / "never.csv").exists()
    assert not (files["root"] / "never.html").exists() and not (files["root"] / "never").exists()


def _nan_initial_parameter() -> None:
    import pyro
    import pyro.distributions as dist

    from bayesgen.infer import run_svi

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def guide(y):
        pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(float("nan"))), 1.0))

    run_svi(model, guide, torch.zeros(5), num_steps=3)


def _zero_scale_initial_parameter() -> None:
    import pyro
    import pyro.distributions as dist

    from bayesgen.infer import run_svi

    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    def guide():
        scale = pyro.param("scale", torch.tensor(0.0), constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(0.0, scale + 1.0))

    run_svi(model, guide, num_steps=3)


def _load_on(device: str):
    def load(files: dict[str, pathlib.Path]) -> None:
        from bayesgen.models import BayesianEstimator

        BayesianEstimator.load(files["run"] / "model", device=device)

    return load


def _ab(**settings):
    def fit(files: dict[str, pathlib.Path]) -> None:
        from bayesgen.models.ab_test import BetaBinomialTest

        names = settings.pop("names", None)
        BetaBinomialTest(method="exact", **settings).fit([5, 3], [10, 10], names=names)

    return fit


def _augment_huge(files: dict[str, pathlib.Path]) -> None:
    from bayesgen.augment import augment
    from bayesgen.models import GaussianGenerator

    X = np.random.default_rng(0).normal(size=(20, 3))
    augment(X, np.arange(20) % 2, GaussianGenerator(covariance="diag", method="exact"), num_per_class=10**12)


def _site_named_chain(files: dict[str, pathlib.Path]) -> None:
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    from bayesgen.arviz import to_datatree

    def model(y):
        mu = pyro.sample("chain", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    pyro.clear_param_store()
    to_datatree(model, AutoNormal(model), torch.zeros(4), num_samples=4)


API_ROWS = [
    (_site_named_chain, ValueError, "the model has a site named 'chain', which is also the name of a sample dimension"),
    (
        lambda files: __import__("bayesgen.text").text.build_corpus("apple banana"),
        TypeError,
        "docs must be a list of documents (strings), not one string",
    ),
    (lambda files: _nan_initial_parameter(), ValueError, "initial values of parameters ['loc'] are NaN or infinite"),
    (lambda files: _zero_scale_initial_parameter(), ValueError, "parameters ['scale']"),
    (_load_on("meta"), ValueError, "device='meta' is not supported"),
    (_ab(prior=(1e-300, 1e-300)), ValueError, "prior parameters must be in"),
    (_ab(prior=(1.0, float("nan"))), ValueError, "prior parameters must be in"),
    (_ab(seed=10**23), ValueError, "seed must be an integer in [0, 4294967295]"),
    (_ab(names=[" ", "b"]), ValueError, "variant names must not be blank"),
    (_augment_huge, MemoryError, "num_per_class=1000000000000 asks for 2 classes"),
    (
        lambda files: __import__("bayesgen.datasets").datasets.read_csv(files["dup"]),
        ValueError,
        "names columns more than once",
    ),
    (
        lambda files: __import__("bayesgen.runs.spec").runs.spec.load_spec(files["deep"]),
        ValueError,
        "nested too deeply",
    ),
]


@pytest.mark.parametrize(("call", "error", "fragment"), API_ROWS)
def test_hostile_api_calls_raise_a_clear_error(call, error, fragment, files):
    from bayesgen.models import ModelFileError

    with pytest.raises(error) as info:
        call(files)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, ModelFileError)  # an intact model file is never blamed


def test_the_command_line_seed_limit_is_the_library_one(capsys):
    from bayesgen._runtime import MAX_SEED, check_seed

    assert check_seed(MAX_SEED) == MAX_SEED
    assert cli.main(["abtest", "--seed", str(MAX_SEED + 1), "1/2", "1/2"]) == 2
    assert f"--seed must be an integer in [0, {MAX_SEED}]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"sbc_simulations": -1}, "sbc_simulations must be an integer >= 0"),
        ({"nuts_samples": 0}, "nuts_samples must be an integer >= 2"),
        ({"sbc_steps": 0}, "sbc_steps must be an integer >= 1"),
    ],
)
def test_write_diagnostics_refuses_bad_counts_before_writing(setting, fragment, files, tmp_path):
    from bayesgen.diagnostics import write_diagnostics
    from bayesgen.models import BayesianEstimator

    est = BayesianEstimator.load(files["run"] / "model")
    with pytest.raises(ValueError, match=fragment):
        write_diagnostics(est, tmp_path / "out", **setting)
    assert not (tmp_path / "out").exists()


def test_command_line_warnings_are_one_line_each_and_a_saved_index_is_named(tmp_path, capsys):
    rows = [f"{'ab'[i % 2]},{(i * 7) % 3 == 0:d}" for i in range(40)]
    (tmp_path / "indexed.csv").write_text(",variant,clicked\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    code = cli.main(["abtest", "--csv", str(tmp_path / "indexed.csv"), "--variant-col", "variant",
                     "--outcome-col", "clicked", "--method", "exact", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    warning = [line for line in err.splitlines() if "saved pandas index" in line]
    assert len(warning) == 1 and warning[0].startswith("bayesgen: warning: "), err
    assert "'Unnamed: 0'" in warning[0] and "UserWarning" not in err and ".py:" not in err
    # A first column that is data (not 0, 1, 2, …), or that has a name, is read without the warning.
    from bayesgen.datasets import read_csv

    (tmp_path / "plain.csv").write_text(",variant,clicked\n" + "".join(f"{2 * i},{r}\n" for i, r in enumerate(rows)))
    (tmp_path / "named.csv").write_text("id,variant,clicked\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_csv(tmp_path / "plain.csv").shape == (40, 3)
        assert read_csv(tmp_path / "named.csv").shape == (40, 3)
    with pytest.warns(UserWarning, match="saved pandas index"):
        read_csv(tmp_path / "indexed.csv")

"""Hostile and malformed inputs: nothing executes, and every refusal is one clear line with exit status 2.

The table keeps the inputs of issue 26 (files that would run code, values at
and past the edges of what an option means); the functions after it check
what the table cannot: that a payload's side effect never happens, and the
API's errors.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch

from bayesgen import cli

CSV_DUPLICATE_HEADER = "arm,arm,clicked\na,b,1\na,b,0\n"


class Payload:
    """Pickled, it calls ``Path.touch(marker)`` when unpickled by a loader that runs code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``bayesgen ARGV`` in-process: (exit status, stderr). argparse's own errors exit through SystemExit."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
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
def test_a_spec_naming_a_malicious_pickle_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    write_evil_pickle(tmp_path / "evil.pkl.gz", marker)
    spec = write_vae_spec(tmp_path / "evil.toml", "mnist:evil.pkl.gz")
    code, err = run_cli(["fit", spec, "--out", tmp_path / "run", "--quiet"], capsys)
    assert_one_line_error(code, err, "holds a pickled pathlib")
    assert "only NumPy arrays, tuples and lists are read from pickles" in err
    assert not marker.exists()


def test_reproduce_of_an_edited_run_folder_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "shared_run"
    run_dir.mkdir()
    write_evil_pickle(run_dir / "evil.pkl.gz", marker)
    write_vae_spec(run_dir / "spec.toml", "mnist:evil.pkl.gz")
    (run_dir / "run.json").write_text(json.dumps({"device": "cpu"}))
    (run_dir / "summary.csv").write_text(",mean,sd\nz,0.0,1.0\n")
    code, err = run_cli(["reproduce", run_dir, "--out", tmp_path / "rerun", "--quiet"], capsys)
    assert_one_line_error(code, err, "which bayesgen will not load")
    assert not marker.exists()


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
    for data, fragment in ((b"\x1f\x8b" + b"\0" * 20, "not a readable pickle"), (b"garbage", "not a readable pickle"),
                           (pickle.dumps([1, 2]), "not an MNIST pickle")):
        plain.write_bytes(data)
        with pytest.raises(ValueError, match=fragment):
            load_mnist(plain)


def test_a_model_file_holding_objects_is_refused_in_one_line(tmp_path, capsys):
    from bayesgen.infer import CheckpointError, load_checkpoint
    from bayesgen.models import BayesianEstimator, ModelFileError
    from bayesgen.models.ab_test import BetaBinomialTest

    marker = tmp_path / "marker"
    folder = BetaBinomialTest(method="exact").fit([5, 3], [10, 10]).save(tmp_path / "run" / "model")
    torch.save({"params": {"rate": Payload(marker)}, "losses": torch.zeros(1)}, folder / "tensors.pt")
    with pytest.raises(ModelFileError) as info:
        BayesianEstimator.load(folder)
    message = str(info.value)
    assert message == (f"{folder / 'tensors.pt'} is not a bayesgen model file (it holds objects other than "
                       "tensors); it was not loaded")
    code, err = run_cli(["diagnose", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "is not a bayesgen model file (it holds objects other than tensors)")

    checkpoint = tmp_path / "svi.ckpt"
    torch.save({"format": "bayesgen-svi-checkpoint", "state": Payload(marker)}, checkpoint)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as info:
        load_checkpoint(checkpoint)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    assert not marker.exists()

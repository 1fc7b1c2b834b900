"""Tier 2: the estimator contract, run over every bayesgen model.

Each entry in ESTIMATORS is (name, make estimator, fit it on small real data,
a bad-input case). Adding a model means adding one entry here.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from saved_models import resign

from bayesgen import (
    VAE,
    BayesianEstimator,
    BetaBinomialTest,
    GaussianGenerator,
    MixtureAnomalyDetector,
    ModelFileError,
    NotEnoughMemoryError,
    NotFittedError,
    ProdLDA,
)
from bayesgen._runtime import TorchOutOfMemoryError
from bayesgen.datasets import load_digits


def _ab_fit(est):
    return est.fit([235, 157], [2435, 2435], names=["white", "black"])


def _ab_bad(est):
    return est.fit([235, 3000], [2435, 2435])


def _gen_fit(est):
    X, y = load_digits()
    return est.fit(X[:600], y[:600])


def _gen_bad(est):
    X, y = load_digits()
    X = X[:100].copy()
    X[3, 7] = np.nan
    return est.fit(X, y[:100])


def _vae_fit(est):
    X, y = load_digits()
    return est.fit(X[:512], y[:512])


def _vae_bad(est):
    X, y = load_digits()
    return est.fit(X[:100] * 16, y[:100])  # raw 0..16 pixels under a Bernoulli likelihood


def _topic_fit(est):
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(1.0, 1.0, size=(1, 40)), size=(120, 40))
    return est.fit(counts)


def _topic_bad(est):
    return est.fit(np.array([[1, 2, -3], [0, 1, 1]]))


def _anomaly_fit(est):
    from sklearn.datasets import load_breast_cancer

    return est.fit(load_breast_cancer().data[:, :5])


def _anomaly_bad(est):
    X = np.random.default_rng(0).normal(size=(50, 3))
    X[4, 1] = np.nan
    return est.fit(X)


ESTIMATORS = [
    pytest.param(
        lambda seed=0: BetaBinomialTest(num_steps=300, seed=seed, average_last=50),
        _ab_fit,
        _ab_bad,
        {"rate": ("variant",)},
        id="ab_test",
    ),
    pytest.param(
        lambda seed=0: GaussianGenerator(
            covariance="lowrank",
            rank=3,
            num_steps=60,
            batch_size=128,
            average_last=10,
            constant_features="keep",
            seed=seed,
        ),
        _gen_fit,
        _gen_bad,
        {"loc": ("class", "feature"), "cov_factor": ("class", "feature", "factor")},
        id="gaussian_generator",
    ),
    pytest.param(
        lambda seed=0: VAE(latent_dim=3, hidden_dims=(32,), conditional=True, num_epochs=2, batch_size=64, seed=seed),
        _vae_fit,
        _vae_bad,
        {"z": ("row", "latent")},
        id="vae",
    ),
    pytest.param(
        lambda seed=0: ProdLDA(num_topics=3, hidden_dim=16, num_epochs=2, batch_size=20, seed=seed),
        _topic_fit,
        _topic_bad,
        {"logtheta": ("document", "topic"), "theta": ("document", "topic")},
        id="topic",
    ),
    pytest.param(
        lambda seed=0: MixtureAnomalyDetector(num_steps=60, average_last=10, seed=seed),
        _anomaly_fit,
        _anomaly_bad,
        {"loc": ("component", "feature"), "scale": ("component", "feature")},
        id="anomaly",
    ),
]


def assert_same_draws(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(autouse=True)
def _quiet_approximation_warnings():
    # The short fits here are for the API contract, not accuracy.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize(("make", "fit", "bad", "dims"), ESTIMATORS)
class TestEstimatorContract:
    def test_init_does_no_work_and_fit_returns_self(self, make, fit, bad, dims):
        est = make()
        assert not hasattr(est, "losses_")
        assert fit(est) is est
        assert hasattr(est, "losses_") and est.n_steps_ == len(est.losses_)

    def test_methods_before_fit_raise_not_fitted(self, make, fit, bad, dims):
        est = make()
        for call in (lambda: est.posterior(10), lambda: est.to_arviz(10), lambda: est.save("x")):
            with pytest.raises(NotFittedError, match="not fitted"):
                call()

    def test_same_seed_same_result(self, make, fit, bad, dims):
        a, b, c = fit(make(seed=1)), fit(make(seed=1)), fit(make(seed=2))
        np.testing.assert_array_equal(a.losses_, b.losses_)
        draws = a.posterior(200)
        assert_same_draws(draws, b.posterior(200))
        assert not np.array_equal(a.losses_, c.losses_)
        # one posterior() contract: a dict of arrays, draws on the first axis, named as the model's sites
        assert isinstance(draws, dict) and draws
        assert all(isinstance(v, np.ndarray) and v.shape[0] == 200 for v in draws.values()), draws.keys()
        other = a.posterior(200, seed=a.seed + 1)
        assert any(not np.array_equal(draws[k], other[k]) for k in draws)

    def test_posterior_signature_is_shared(self, make, fit, bad, dims):
        params = list(inspect.signature(type(make()).posterior).parameters.values())
        assert [p.name for p in params[:2]] == ["self", "num_samples"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
        assert "seed" in [p.name for p in params[2:]]

    def test_seed_none_fits_with_fresh_randomness(self, make, fit, bad, dims):
        a, b = fit(make(seed=None)), fit(make(seed=None))
        assert not np.array_equal(a.losses_, b.losses_)
        with pytest.raises(ValueError, match="seed must be an integer"):
            fit(make(seed=1.0))
        # A method's own seed is checked the same way, not handed to torch/NumPy to fail there.
        for bad_seed in (-1, 1.5, "0"):
            with pytest.raises(ValueError, match="seed must be an integer"):
                a.posterior(10, seed=bad_seed)

    def test_global_param_store_untouched_and_fits_coexist(self, make, fit, bad, dims):
        pyro.param("mine", torch.zeros(1))
        a, b = fit(make(seed=1)), fit(make(seed=2))
        assert list(pyro.get_param_store().keys()) == ["mine"]
        assert a.params_.keys() == b.params_.keys()
        assert any(not np.array_equal(a.params_[k], b.params_[k]) for k in a.params_)

    def test_save_load_round_trip(self, make, fit, bad, dims, tmp_path):
        est = fit(make())
        est.save(tmp_path / "model")
        meta = json.loads((tmp_path / "model" / "meta.json").read_text())
        assert meta["class"] == type(est).__name__
        # Seeded draws repeat exactly on the same kind of device (CPU and CUDA have different random streams).
        loaded = BayesianEstimator.load(tmp_path / "model", device=est.device_)
        assert type(loaded) is type(est) and loaded.get_params() == {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in est.get_params().items()
        } | {"device": est.get_params()["device"]}
        np.testing.assert_array_equal(loaded.losses_, est.losses_)
        assert_same_draws(loaded.posterior(500, seed=4), est.posterior(500, seed=4))
        a, b = est.to_arviz(300, seed=2), loaded.to_arviz(300, seed=2)
        for group in ("posterior", "posterior_predictive", "log_likelihood"):
            for name in a[group].data_vars:
                np.testing.assert_array_equal(a[group][name].values, b[group][name].values)
        # A GPU fit loads on a machine without one: the same parameters, on the CPU.
        on_cpu = BayesianEstimator.load(tmp_path / "model", device="cpu")
        assert on_cpu.device_.type == "cpu" and on_cpu.params_.keys() == est.params_.keys()
        for name in est.params_:
            np.testing.assert_allclose(on_cpu.params_[name], est.params_[name], rtol=1e-6, atol=1e-7)

    def test_corrupt_or_foreign_files_give_clear_errors(self, make, fit, bad, dims, tmp_path):
        est = fit(make())
        folder = est.save(tmp_path / "model")
        (folder / "tensors.pt").write_bytes(b"garbage")
        with pytest.raises(ModelFileError, match="does not match its checksum"):
            type(est).load(folder)
        resign(folder)
        with pytest.raises(ModelFileError, match="corrupt"):
            type(est).load(folder)
        (folder / "meta.json").write_text("{not json")
        with pytest.raises(ModelFileError, match="corrupt"):
            type(est).load(folder)
        with pytest.raises(ModelFileError, match="not a saved bayesgen model"):
            type(est).load(tmp_path / "nowhere")
        (folder / "meta.json").write_text(json.dumps({"format": "something-else"}))
        with pytest.raises(ModelFileError, match="not bayesgen model metadata"):
            type(est).load(folder)

    def test_edited_or_damaged_files_give_clear_errors(self, make, fit, bad, dims, tmp_path):
        folder = fit(make()).save(tmp_path / "model")
        meta, tensors = json.loads((folder / "meta.json").read_text()), torch.load(folder / "tensors.pt")
        cls = type(make())

        def write(m, t):
            torch.save(t, folder / "tensors.pt")
            (folder / "meta.json").write_text(json.dumps(m))
            resign(folder)

        write({k: v for k, v in meta.items() if k != "hyperparameters"}, tensors)
        with pytest.raises(ModelFileError, match="missing entry 'hyperparameters'"):
            cls.load(folder)
        write(meta, {k: v for k, v in tensors.items() if k != "losses"})
        with pytest.raises(ModelFileError, match="missing entry 'losses'"):
            cls.load(folder)
        write(meta, {**tensors, "params": {k: v * float("nan") for k, v in tensors["params"].items()}})
        with pytest.raises(ModelFileError, match="non-finite values in parameters"):
            cls.load(folder)
        write({**meta, "hyperparameters": {**meta["hyperparameters"], "seed": "zero"}}, tensors)
        with pytest.raises(ModelFileError, match="seed must be an integer"):
            cls.load(folder)
        if meta["extra"]:  # every estimator-specific entry replaced by a string: refused when loading, not later
            write({**meta, "extra": {k: "zz" for k in meta["extra"]}}, tensors)
            with pytest.raises(ModelFileError, match="does not match"):
                cls.load(folder)
        # Fitted on a GPU, loaded on a machine without one: the saved device is not checked, `device` decides.
        write({**meta, "hyperparameters": {**meta["hyperparameters"], "device": "cuda:7"}}, tensors)
        assert cls.load(folder, device="cpu").device_.type == "cpu"
        write(meta, tensors)
        assert cls.load(folder).params_.keys() == fit(make()).params_.keys()

    def test_loading_never_unpickles_code(self, make, fit, bad, dims, tmp_path):
        est = fit(make())
        folder = est.save(tmp_path / "model")

        class Evil:
            def __reduce__(self):
                return (exec, ("raise SystemExit('code ran')",))

        torch.save({"params": {}, "payload": Evil()}, folder / "tensors.pt")
        with pytest.raises(ModelFileError):
            type(est).load(folder)
        resign(folder)  # with a matching checksum, torch's weights_only loader refuses it
        with pytest.raises(ModelFileError):
            type(est).load(folder)

    def test_to_arviz_has_groups_and_named_dims(self, make, fit, bad, dims):
        tree = fit(make()).to_arviz(200)
        assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(tree.children)
        for name, expected in dims.items():
            assert tree.posterior[name].dims == ("chain", "draw", *expected)
        assert tree.posterior.sizes["chain"] * tree.posterior.sizes["draw"] == 200

    def test_bad_input_is_a_clear_error(self, make, fit, bad, dims):
        with pytest.raises((ValueError, TypeError)) as info:
            bad(make())
        assert "Traceback" not in str(info.value) and len(str(info.value)) > 10

    @pytest.mark.parametrize("wrong", ["oops", object(), float("nan")], ids=["string", "object", "nan"])
    def test_every_setting_of_a_wrong_kind_is_named(self, make, fit, bad, dims, wrong):
        # Each constructor setting in turn gets a value of the wrong kind; fit must refuse it
        # before any work, with a ValueError/TypeError that names the setting (not float()'s
        # "could not convert string to float", nor a failure deep inside torch).
        for name in make().get_params():
            est = make()
            setattr(est, name, wrong)
            with pytest.raises((ValueError, TypeError), match=name):
                fit(est)

    def test_unknown_device_is_a_clear_error(self, make, fit, bad, dims):
        est = make()
        est.device = "tpu:7"
        with pytest.raises(ValueError, match="device"):
            fit(est)


@pytest.mark.parametrize("make, fit, bad, dims", ESTIMATORS)
def test_running_out_of_memory_names_the_method_not_the_allocator(make, fit, bad, dims, monkeypatch, tmp_path):
    """A GPU's (or NumPy's) out-of-memory error inside any public method becomes NotEnoughMemoryError."""
    est = make()

    def no_memory(*args, **kwargs):
        raise TorchOutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"
        )

    monkeypatch.setattr(est, "_run_svi", no_memory)
    with pytest.raises(
        NotEnoughMemoryError,
        match=rf"{type(est).__name__}\.fit: not enough memory on .*"
        r"\(CUDA out of memory\. Tried to allocate 20\.00 GiB.*Ask for less at once",
    ) as info:
        fit(est)
    assert isinstance(info.value, MemoryError) and isinstance(info.value.__cause__, TorchOutOfMemoryError)

    def other(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(est, "_run_svi", other)
    with pytest.raises(RuntimeError, match="some other failure"):  # not every RuntimeError is about memory
        fit(est)
    monkeypatch.undo()
    fit(est)
    est.save(tmp_path / "model")
    # Inherited methods name the estimator's own class; load is covered, and is not a "damaged file".
    monkeypatch.setattr(est, "_model_args", no_memory)
    with pytest.raises(NotEnoughMemoryError, match=rf"^{type(est).__name__}\.to_arviz: not enough memory"):
        est.to_arviz(10)
    monkeypatch.setattr(type(est), "_rebuild_param_state", no_memory)
    with pytest.raises(NotEnoughMemoryError, match=rf"^{type(est).__name__}\.load: not enough memory on cpu"):
        type(est).load(tmp_path / "model", device="cpu")


def test_an_absurd_request_is_a_clear_memory_error():
    """An allocator refusing a request (here NumPy's, for the classes of 10**12 rows) is named, with the size."""
    import inspect

    X, y = load_digits()
    gen = GaussianGenerator(covariance="diag", method="exact", constant_features="keep").fit(X[:300], y[:300])
    with pytest.raises(
        NotEnoughMemoryError,
        match=r"GaussianGenerator\.sample: not enough memory on cpu "
        r"\(it asked for [\d,]+\.\d GiB\)",
    ):
        gen.sample(10**12)
    assert list(inspect.signature(GaussianGenerator.sample).parameters)[:2] == ["self", "num_samples"]  # same API
    X_new, y_new = gen.sample(5, seed=0)  # and still works
    assert X_new.shape == (5, X.shape[1])


def test_the_size_an_allocator_asked_for_is_read_from_numpy_and_torch():
    from bayesgen.models._base import _allocation

    with pytest.raises(MemoryError) as numpy_error:
        np.empty(2**50)  # 8 PiB
    assert _allocation(numpy_error.value) == f"it asked for {2**53 / 2**30:,.1f} GiB"
    torch_cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 3221225472 bytes."
    )
    assert _allocation(torch_cpu) == "it asked for 3.0 GiB"


def test_every_plate_whose_index_is_used_names_its_device():
    # pyro.plate makes its index on the CPU unless told otherwise; with the data on a GPU,
    # x.index_select(0, idx) then fails (every full-data pass of a model that indexes by a plate).
    import ast
    from pathlib import Path

    checked = []
    for path in sorted((Path(__file__).resolve().parents[1] / "bayesgen" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.With):
                continue
            for item in node.items:
                call = item.context_expr
                if (
                    item.optional_vars is not None
                    and isinstance(call, ast.Call)
                    and getattr(call.func, "attr", "") == "plate"
                ):
                    checked.append(f"{path.name}:{call.lineno}")
                    assert any(k.arg == "device" for k in call.keywords), f"{checked[-1]}: plate without device="
    assert len(checked) >= 6, checked


def test_shared_feature_matrix_check():
    # One check for the generator, the anomaly detector and the augmentation helpers.
    from bayesgen._runtime import as_feature_matrix

    arr, names = as_feature_matrix(pd.DataFrame({"a": [1, 2], "flag": [True, False]}))
    np.testing.assert_array_equal(arr, [[1.0, 1.0], [2.0, 0.0]])
    assert names == ["a", "flag"]
    with pytest.raises(ValueError, match=r"1 NaN or infinite values \(first at row 1, column 'n'\)"):
        as_feature_matrix(pd.DataFrame({"a": [1.0, 2.0], "n": pd.array([3, None], dtype="Int64")}))
    with pytest.raises(TypeError, match=r"X_test has non-numeric columns \['s'\]"):
        as_feature_matrix(pd.DataFrame({"s": ["x", "y"]}), "X_test")
    with pytest.raises(TypeError, match="real-valued numeric, got dtype complex128"):
        as_feature_matrix(np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match="has 3 feature columns, expected 2"):
        as_feature_matrix(np.ones((2, 3)), n_features=2)
    with pytest.raises(ValueError, match="no rows"):
        as_feature_matrix(np.ones((0, 3)))


def test_seed_none_means_fresh_randomness_not_a_crash():
    """seed=None is accepted by every estimator; the paths that draw with the estimator's seed take a fresh one."""
    from bayesgen.models.gaussian_generator import GaussianGenerator
    from bayesgen.models.topic import ProdLDA

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (30, 3)), rng.normal(3, 1, (30, 3))])
    y = np.repeat([0, 1], 30)
    gen = GaussianGenerator(method="exact", covariance="full", seed=None).fit(X[::2], y[::2], unlabelled=X[1::2])
    assert gen.predict(X).shape == (60,)
    counts = rng.poisson(2.0, size=(80, 30))
    lda = ProdLDA(num_topics=2, hidden_dim=8, num_epochs=2, batch_size=40, seed=None).fit(counts)
    tree = lda.to_arviz(num_samples=5)
    assert "posterior" in tree.children


#: Sizes read off data that helpers take to check it (``n_rows`` rows, ``n_features`` columns).
_DATA_SIZES = {"n_rows", "n_features", "n_classes", "n_columns"}


def test_counts_a_user_asks_for_are_named_num():
    """Pyro's vocabulary for a count you choose (num_samples, num_steps, num_per_class); n_* is a size of
    the data (n_rows) or a fitted count (n_steps_)."""
    import importlib
    import pkgutil

    import bayesgen

    offenders = []
    for info in pkgutil.walk_packages(bayesgen.__path__, "bayesgen."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            members = [obj]
            if inspect.isclass(obj):
                members = [obj.__init__] + [v for k, v in vars(obj).items() if not k.startswith("_") and callable(v)]
            for member in members:
                try:
                    params = inspect.signature(member).parameters
                except (TypeError, ValueError):
                    continue
                offenders += [f"{info.name}.{name}({p})" for p in params if p.startswith("n_") and p not in _DATA_SIZES]
    assert not offenders, f"counts the user chooses are num_*: {sorted(set(offenders))}"

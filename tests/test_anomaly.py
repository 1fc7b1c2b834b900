"""Mixture anomaly detector: planted anomalies, enumerated vs marginalised paths, errors, CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.poutine.util import site_is_subsample

from bayesgen.models.anomaly import MixtureAnomalyDetector, guide, model, platt_scaling


def planted(seed=0, n_normal=600, n_anomalies=30, d=4):
    """Two Gaussian clusters in raw units of very different scales, plus uniform anomalies."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    normal = np.vstack(
        [
            rng.multivariate_normal(np.zeros(d), A @ A.T + np.eye(d), n_normal // 2),
            rng.multivariate_normal(np.full(d, 6.0), np.eye(d), n_normal - n_normal // 2),
        ]
    )
    anomalies = rng.uniform(-15, 20, size=(n_anomalies, d))
    X = np.vstack([normal, anomalies]) * np.array([1, 10, 100, 0.1])[:d] + np.array([5, 0, -3, 2])[:d]
    y = np.r_[np.zeros(len(normal)), np.ones(n_anomalies)].astype(bool)
    return X, y


# What a detector saved before the inflated anomaly component lacks.
PRE_INFLATED = {"settings": ["anomaly"], "tensors": ["hyper.excess_center", "hyper.excess_sd"]}


@pytest.fixture(scope="module")
def fitted():
    X, y = planted()
    return MixtureAnomalyDetector(num_steps=800, seed=0).fit(X), X, y


def test_finds_planted_anomalies_and_covers_the_true_fraction(fitted):
    det, X, y = fitted
    flags = det.predict(X).astype(bool)
    recall, precision = flags[y].mean(), y[flags].mean()
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    frac = det.anomaly_fraction()
    assert frac["low"] <= y.mean() <= frac["high"]
    table = det.predict_proba(X[:10], ci_prob=0.9)
    assert list(table.columns) == ["probability", "low", "high"]
    assert np.all(table["low"] <= table["probability"] + 1e-9) and np.all(table["probability"] <= table["high"] + 1e-9)


def test_score_samples_is_a_raw_scale_density(fitted):
    det, X, y = fitted
    s = det.score_samples(X)
    assert s[~y].mean() > s[y].mean() + 5
    # Rescaling the raw data by c changes the log density by -d log c (the Jacobian is applied).
    det2 = MixtureAnomalyDetector(num_steps=800, seed=0).fit(X * 10.0)
    np.testing.assert_allclose(det2.score_samples(X * 10.0), s - X.shape[1] * np.log(10.0), atol=0.2)


@pytest.mark.parametrize("covariance", ["diag", "full", "lowrank"])
@pytest.mark.parametrize(("anomaly", "num_components"), [("inflated", 1), ("inflated", 2), ("student_t", 2)])
def test_enumerated_and_marginalised_elbos_are_equal(covariance, anomaly, num_components):
    X, _ = planted(n_normal=100, n_anomalies=5)
    det = MixtureAnomalyDetector(
        covariance=covariance, anomaly=anomaly, num_components=num_components, num_steps=5, seed=0
    ).fit(X)
    kwargs = det._kwargs(marginal=True)
    x = det._x
    guide = det._model_and_guide()[1]  # the guide with the fit's starting point
    from bayesgen.infer import param_scope

    with param_scope(det._param_state):
        torch.manual_seed(3)
        marg = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            model, guide, x, **kwargs
        )
        torch.manual_seed(3)
        enum = TraceEnum_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
            config_enumerate(model), guide, x, **{**kwargs, "marginal": False}
        )
    assert enum == pytest.approx(marg, rel=1e-5)


def test_enumerated_fit_matches_the_marginalised_fit():
    X, y = planted(n_normal=200, n_anomalies=10)
    a = MixtureAnomalyDetector(num_steps=300, seed=0).fit(X)
    b = MixtureAnomalyDetector(num_steps=300, seed=0, enumerate=True).fit(X)
    # Same ELBO (tested exactly above), different random streams: the fits agree statistically.
    assert abs(np.mean(a.losses_[-50:]) - np.mean(b.losses_[-50:])) < 0.01 * abs(np.mean(a.losses_[-50:]))
    assert np.abs(a.predict_proba(X) - b.predict_proba(X)).max() < 0.05
    assert abs(a.anomaly_fraction()["mean"] - b.anomaly_fraction()["mean"]) < 0.01
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.parametrize(
    ("settings", "extra"),
    [
        ({"num_components": 2}, {"weights", "anomaly_loc", "anomaly_excess"}),
        ({"num_components": 1}, {"anomaly_loc", "anomaly_excess"}),
        ({"num_components": 2, "anomaly": "student_t"}, {"weights"}),
    ],
)
def test_model_and_guide_share_sites(settings, extra):
    X, _ = planted(n_normal=60, n_anomalies=3)
    det = MixtureAnomalyDetector(num_steps=2, seed=0, **settings).fit(X)
    from bayesgen.infer import param_scope

    with param_scope(det._param_state):
        g = poutine.trace(guide).get_trace(det._x, **det._kwargs())
        m = poutine.trace(poutine.replay(model, trace=g)).get_trace(det._x, **det._kwargs())

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    assert latent(m) == latent(g) == {"anomaly_fraction", "loc", "scale", "corr_tril"} | extra
    assert torch.isfinite(m.log_prob_sum())


@pytest.mark.parametrize("covariance", ["diag", "full", "lowrank"])
@pytest.mark.parametrize("K", [1, 3])
def test_inflated_component_is_the_normal_part_moment_matched_and_inflated(covariance, K):
    """Its covariance is (1 + excess) × the covariance of the normal mixture, by the law of total variance."""
    from bayesgen.models.anomaly import anomaly_distribution

    rng = np.random.default_rng(1)
    d, r = 4, 2
    params = {"loc": torch.tensor(rng.normal(size=(K, d))), "scale": torch.tensor(rng.uniform(0.5, 2, (K, d)))}
    covs = np.stack([np.diag(s**2) for s in params["scale"].numpy()])
    if covariance == "full":
        a = rng.normal(size=(K, d, d))
        cov = np.einsum("kij,klj->kil", a, a) + np.eye(d)
        sd = np.sqrt(np.einsum("kii->ki", cov))
        corr = cov / sd[:, :, None] / sd[:, None, :]
        params["corr_tril"] = torch.linalg.cholesky(torch.tensor(corr))
        s = params["scale"].numpy()
        covs = corr * s[:, :, None] * s[:, None, :]
    elif covariance == "lowrank":
        params["cov_factor"] = torch.tensor(rng.normal(size=(K, d, r)))
        covs = covs + np.einsum("kir,kjr->kij", params["cov_factor"].numpy(), params["cov_factor"].numpy())
    w = rng.dirichlet(np.ones(K))
    mu = params["loc"].numpy()
    mean = w @ mu
    total = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", mu, mu)) - np.outer(mean, mean)
    centre, excess = torch.tensor(rng.normal(size=d)), torch.tensor(2.5, dtype=torch.float64)
    broad = anomaly_distribution("inflated", {}, params, torch.tensor(w), covariance, centre, excess)
    np.testing.assert_allclose(broad.covariance_matrix.numpy(), 3.5 * total, rtol=1e-10)
    np.testing.assert_allclose(broad.mean.numpy(), centre.numpy())
    # A batch of draws (S, 1) as the estimator's _tables and the vectorised model give them.
    batched = anomaly_distribution(
        "inflated",
        {},
        {k: v.expand(5, *v.shape) for k, v in params.items()},
        torch.tensor(w).expand(5, 1, K),
        covariance,
        centre.expand(5, 1, d),
        excess.expand(5, 1),
    )
    x = torch.tensor(rng.normal(size=(7, d)))
    np.testing.assert_allclose(batched.log_prob(x).numpy(), broad.log_prob(x).expand(5, 7).numpy(), rtol=1e-10)


@pytest.mark.parametrize("batch", [(), (4,), (3, 1)])
def test_component_table_equals_scipy_densities(batch):
    """The table of log densities (one factor shared by both components) equals scipy's normal densities."""
    from scipy import stats

    from bayesgen.models.anomaly import anomaly_distribution, component_table

    rng = np.random.default_rng(2)
    d, n = 6, 9
    size = int(np.prod(batch))
    covs = []
    for _ in range(size):
        a = rng.normal(size=(d, d))
        covs.append(a @ a.T + 0.5 * np.eye(d))
    covs = np.stack(covs)
    sd = np.sqrt(np.einsum("sii->si", covs))
    corr = covs / sd[:, :, None] / sd[:, None, :]
    params = {
        "loc": torch.tensor(rng.normal(size=(size, 1, d))).reshape(*batch, 1, d),
        "scale": torch.tensor(sd).reshape(*batch, 1, d),
        "corr_tril": torch.linalg.cholesky(torch.tensor(corr)).reshape(*batch, 1, d, d),
    }
    centre = torch.tensor(rng.normal(size=(size, d))).reshape(*batch, d)
    excess = torch.tensor(rng.uniform(0.5, 4.0, size)).reshape(batch)
    # Draws come with the row plate's dim as size 1, as the estimator's draws and the vectorised model give them.
    centre_in, excess_in = (centre, excess) if not batch else (centre.unsqueeze(-2), excess.unsqueeze(-1))
    weights = torch.ones(*batch, 1, 1) if batch else torch.ones(1)
    x = torch.tensor(rng.normal(scale=3.0, size=(n, d)))
    broad = anomaly_distribution("inflated", {}, params, weights, "full", centre_in, excess_in)
    table = component_table(x, params, "full", broad, centre_in, excess_in).numpy()
    assert table.shape == (*batch, n, 2)
    mu, c, e = params["loc"].reshape(size, d).numpy(), centre.reshape(size, d).numpy(), excess.reshape(size).numpy()
    for s, index in enumerate(np.ndindex(*batch) if batch else [()]):
        normal = stats.multivariate_normal(mu[s], covs[s]).logpdf(x.numpy())
        anomalous = stats.multivariate_normal(c[s], (1 + e[s]) * covs[s]).logpdf(x.numpy())
        np.testing.assert_allclose(table[index][:, 0], normal, rtol=1e-10)
        np.testing.assert_allclose(table[index][:, 1], anomalous, rtol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full", "lowrank"])
def test_rounding_floor_adds_the_rounding_variance_to_every_component(covariance):
    """With ``scale_floor`` every normal component's covariance is its own plus diag(floor²), in the densities
    of each covariance structure and in the inflated anomaly component built from them (against scipy)."""
    from scipy import stats

    from bayesgen.models.anomaly import anomaly_distribution, component_table

    rng = np.random.default_rng(4)
    K, d, n = 2, 4, 7
    a = rng.normal(size=(K, d, d))
    corr_cov = a @ np.swapaxes(a, -1, -2) + 0.3 * np.eye(d)
    sd0 = np.sqrt(np.einsum("kii->ki", corr_cov))
    params = {"loc": torch.tensor(rng.normal(size=(K, d))), "scale": torch.tensor(rng.uniform(0.01, 1.0, (K, d)))}
    own = np.stack([np.diag(params["scale"][k].numpy() ** 2) for k in range(K)])
    if covariance == "full":
        corr = corr_cov / sd0[:, :, None] / sd0[:, None, :]
        params["corr_tril"] = torch.linalg.cholesky(torch.tensor(corr))
        s = params["scale"].numpy()
        own = s[:, :, None] * corr * s[:, None, :]
    elif covariance == "lowrank":
        params["cov_factor"] = torch.tensor(rng.normal(size=(K, d, 2)))
        own = own + params["cov_factor"].numpy() @ np.swapaxes(params["cov_factor"].numpy(), -1, -2)
    floor = np.array([0.3, 0.0, 0.1, 0.5])
    params["scale_floor"] = torch.tensor(floor)
    total = own + np.diag(floor**2)
    weights = torch.tensor([0.4, 0.6])
    centre, excess = torch.tensor(rng.normal(size=d)), torch.tensor(1.5)
    broad = anomaly_distribution("inflated", {}, params, weights, covariance, centre, excess)
    x = torch.tensor(rng.normal(size=(n, d)))
    table = component_table(x, params, covariance, broad, centre, excess).numpy()
    mu = params["loc"].numpy()
    for k in range(K):
        np.testing.assert_allclose(table[:, k], stats.multivariate_normal(mu[k], total[k]).logpdf(x), rtol=1e-8)
    w = weights.numpy()
    mixed = np.einsum("k,kij->ij", w, total) + np.cov(mu.T, aweights=w, bias=True)
    anomalous = stats.multivariate_normal(centre.numpy(), 2.5 * mixed).logpdf(x)
    np.testing.assert_allclose(table[:, K], anomalous, rtol=1e-6)


def test_resolution_floor_is_the_rounding_error_of_each_column():
    from bayesgen.models.anomaly import resolution_floor

    rng = np.random.default_rng(0)
    arr = np.column_stack([rng.integers(1, 11, 500), np.round(rng.normal(size=500), 2), rng.normal(size=500)])
    scale = np.array([2.0, 0.5, 1.0])
    floor = resolution_floor(arr, scale)
    np.testing.assert_allclose(floor[:2], [1 / (2.0 * np.sqrt(12)), 0.01 / (0.5 * np.sqrt(12))])
    assert floor[2] == 0.0  # full-precision measurements: no floor


def test_several_components_fit_rows_that_share_recorded_values():
    """Integer codes where most rows of one group are all ones (as in mlbench's BreastCancer): a component on
    those rows would shrink to zero spread; with the rounding floor the fit works and calls them normal."""
    rng = np.random.default_rng(0)
    benign = np.where(rng.uniform(size=(450, 9)) < 0.99, 1, rng.integers(2, 5, size=(450, 9)))
    other = rng.integers(1, 11, size=(240, 9))
    X = np.concatenate([benign, other]).astype(float)
    det = MixtureAnomalyDetector(num_components=2, num_steps=200, seed=0).fit(X)
    ones = (X == 1).all(axis=1)
    assert ones.sum() > 300
    assert det.predict_proba(X[ones]).max() < 0.01


def test_student_t_component_and_files_saved_before_the_inflated_one(tmp_path, make_older):
    X, y = planted(n_normal=300, n_anomalies=15)
    det = MixtureAnomalyDetector(anomaly="student_t", num_components=2, num_steps=400, seed=0).fit(X)
    flags = det.predict(X).astype(bool)
    assert flags[y].mean() >= 0.8 and y[flags].mean() >= 0.8
    # A file from before the setting existed: no "anomaly" setting, no excess hyperparameters.
    make_older(det.save(tmp_path / "old"), **PRE_INFLATED)
    back = MixtureAnomalyDetector.load(tmp_path / "old", device=det.device_)
    assert back.anomaly == "student_t"
    np.testing.assert_allclose(back.predict_proba(X[:20]), det.predict_proba(X[:20]), atol=1e-6)
    with pytest.raises(ValueError, match="anomaly must be 'inflated' or 'student_t'"):
        MixtureAnomalyDetector(anomaly="uniform", num_steps=5).fit(X)


def test_to_arviz_log_likelihood_per_row_and_loo(fitted):
    import arviz_stats

    det, X, _ = fitted
    tree = det.to_arviz(200)
    ll = tree.log_likelihood["x"]
    assert ll.sizes["chain"] * ll.sizes["draw"] == 200 and ll.shape[-1] == len(X)
    loo = arviz_stats.loo(tree)
    assert np.isfinite(loo.elpd)


def test_dataframe_input_and_bad_input_are_clear():
    X, _ = planted(n_normal=100, n_anomalies=5)
    frame = pd.DataFrame(X, columns=list("abcd"))
    det = MixtureAnomalyDetector(num_steps=50, seed=0).fit(frame)
    assert det.feature_names_ == list("abcd")
    with pytest.raises(TypeError, match=r"non-numeric columns \['label'\]"):
        MixtureAnomalyDetector(num_steps=5).fit(frame.assign(label="x"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        MixtureAnomalyDetector(num_steps=5).fit(np.where(np.arange(4) == 2, np.inf, X))
    with pytest.raises(ValueError, match="more rows than features"):
        MixtureAnomalyDetector(num_steps=5).fit(X[:3])
    with pytest.raises(ValueError, match=r"constant"):
        MixtureAnomalyDetector(num_steps=5).fit(np.column_stack([X, np.ones(len(X))]))
    with pytest.raises(ValueError, match="3 columns; the detector was fitted on 4"):
        det.predict_proba(X[:, :3])
    with pytest.raises(ValueError, match="threshold"):
        det.predict(X, threshold=1.5)


def test_dataframe_columns_are_matched_by_name_and_bad_settings_are_clear():
    X, _ = planted(n_normal=100, n_anomalies=5)
    frame = pd.DataFrame(X, columns=list("abcd"))
    det = MixtureAnomalyDetector(num_steps=50, seed=0).fit(frame)
    # Columns of very different scales: a reordered frame must give the same answer, not a shuffled one.
    np.testing.assert_allclose(det.predict_proba(frame[list("dcba")]), det.predict_proba(frame))
    np.testing.assert_allclose(det.score_samples(frame[list("dcba")]), det.score_samples(frame))
    # Real column names that look like the invented ones (x0, x1, ...) are still matched by name.
    xnamed = MixtureAnomalyDetector(num_steps=50, seed=0).fit(frame.set_axis([f"x{j}" for j in range(4)], axis=1))
    assert xnamed.fitted_on_frame_
    reordered = frame.set_axis([f"x{j}" for j in range(4)], axis=1)[["x3", "x2", "x1", "x0"]]
    np.testing.assert_allclose(xnamed.predict_proba(reordered), xnamed.predict_proba(X))
    # Fitted on an array: columns are positions, whatever a frame calls them.
    plain = MixtureAnomalyDetector(num_steps=50, seed=0).fit(X)
    np.testing.assert_allclose(plain.predict_proba(frame), plain.predict_proba(X))
    with pytest.raises(ValueError, match=r"missing \['a'\], unexpected \['z'\]"):
        det.predict_proba(frame.rename(columns={"a": "z"}))
    with pytest.raises(ValueError, match=r"unexpected \['label'\]"):
        det.score_samples(frame.assign(label=1.0))
    with pytest.raises(ValueError, match="no rows"):
        det.predict_proba(X[:0])
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        det.predict_proba(X, num_samples=0)
    with pytest.raises(ValueError, match="ci_prob must be a number in"):
        det.predict_proba(X, ci_prob=1.5)
    with pytest.raises(ValueError, match="ci_prob must be a number in"):
        det.anomaly_fraction(-0.5)
    with pytest.raises(TypeError, match="real-valued"):
        MixtureAnomalyDetector(num_steps=5).fit(X.astype(complex))
    with pytest.raises(ValueError, match="needs at least 2 features"):
        MixtureAnomalyDetector(num_steps=5).fit(X[:, :1])
    with pytest.raises(ValueError, match="anomaly_scale"):
        MixtureAnomalyDetector(num_steps=5, anomaly_scale=float("inf")).fit(X)
    with pytest.raises(ValueError, match="anomaly_prior must be two positive numbers"):
        MixtureAnomalyDetector(num_steps=5, anomaly_prior=(1,)).fit(X)
    with pytest.raises(TypeError, match="enumerate must be True or False"):
        MixtureAnomalyDetector(num_steps=5, enumerate="yes").fit(X)
    with pytest.raises(ValueError, match="labels must have one entry per row"):
        det.plot(X, labels=[1, 0])
    with pytest.raises(ValueError, match="too large to standardise"), np.errstate(over="ignore"):
        MixtureAnomalyDetector(num_steps=5).fit(X * 1e200)


def test_save_load_round_trip(fitted, tmp_path):
    det, X, _ = fitted
    det.save(tmp_path / "det")
    back = MixtureAnomalyDetector.load(tmp_path / "det", device=det.device_)  # same device: same draws
    np.testing.assert_allclose(back.predict_proba(X[:20]), det.predict_proba(X[:20]), atol=1e-6)
    # On the CPU (a GPU fit on a machine without one): probabilities averaged over other posterior draws.
    on_cpu = MixtureAnomalyDetector.load(tmp_path / "det", device="cpu")
    np.testing.assert_allclose(on_cpu.predict_proba(X[:20]), det.predict_proba(X[:20]), atol=0.02)


def test_cli_writes_rows_with_probability_and_flag(tmp_path, capsys):
    import subprocess
    import sys

    X, y = planted(n_normal=200, n_anomalies=10)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(note="row")
    frame.to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "scores.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bayesgen",
            "anomaly",
            "--csv",
            str(tmp_path / "data.csv"),
            "--columns",
            "a,b,c,d",
            "--out",
            str(out),
            "--num-steps",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["a", "b", "c", "d", "note", "anomaly_probability", "anomaly"]
    assert scores["anomaly"].to_numpy()[y].mean() >= 0.8
    from bayesgen.cli import main  # the same command again, stopping before its fit: in this process

    capsys.readouterr()
    status = main(["anomaly", "--csv", str(tmp_path / "data.csv"), "--out", str(out), "--overwrite"])
    assert status == 2 and "non-numeric columns ['note']" in capsys.readouterr().err


def test_platt_scaling_recovers_a_known_link_and_stays_finite_on_separated_labels():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 20.0, size=5000)  # log-odds spanning hundreds, as a sharp posterior gives
    y = rng.random(5000) < 1 / (1 + np.exp(-(0.3 * z - 1.0)))
    slope, intercept = platt_scaling(z, y)
    assert abs(slope - 0.3) < 0.03 and abs(intercept + 1.0) < 0.15, (slope, intercept)
    # Perfectly separated labels: Platt's smoothed targets keep the fit finite and increasing.
    slope, intercept = platt_scaling(np.array([-5.0, -3.0, 2.0, 4.0]), np.array([0, 0, 1, 1]))
    assert 0 < slope < 100 and np.isfinite(intercept)


def test_calibrate_maps_the_probability_onto_labels(fitted, tmp_path):
    det, X, _ = fitted
    det.save(tmp_path / "det")
    det = MixtureAnomalyDetector.load(tmp_path / "det", device="cpu")  # a copy: the fixture stays uncalibrated
    raw = det.predict_proba(X)
    logit = det._mean_log_odds(det._log_odds(X, None, 0))  # exact where raw rounds to 0 or 1
    # Labels that follow the model's probability, but far less sharply (true link: slope 0.05, intercept -1).
    rng = np.random.default_rng(1)
    truth = 1 / (1 + np.exp(-(0.05 * logit - 1.0)))
    y = rng.random(len(X)) < truth
    assert det.calibration_ is None
    det.calibrate(X, y)
    cal = det.calibration_
    assert cal["rows"] == len(X) and cal["anomalies"] == int(y.sum())
    assert 0.035 < cal["slope"] < 0.07 and -1.4 < cal["intercept"] < -0.6, cal
    p = det.predict_proba(X)  # calibrated from now on
    brier, brier_raw, brier_truth = (np.mean((q - y) ** 2) for q in (p, raw, truth))
    assert brier < brier_raw - 0.02 and brier < brier_truth + 0.01, (brier, brier_raw, brier_truth)
    np.testing.assert_allclose(det.predict_proba(X, calibrated=False), raw)
    np.testing.assert_allclose(det.predict_proba(X, calibrated=np.False_), raw)  # a numpy flag too
    table = det.predict_proba(X[:20], ci_prob=0.9)
    np.testing.assert_allclose(table["probability"], p[:20])
    assert np.all(table["low"] <= table["probability"] + 1e-9) and np.all(table["probability"] <= table["high"] + 1e-9)
    assert np.array_equal(det.predict(X), (p > 0.5).astype(int))
    # Saved and loaded with the model; a refit drops it (the labels were for the old fit).
    det.save(tmp_path / "cal")
    assert MixtureAnomalyDetector.load(tmp_path / "cal", device="cpu").calibration_ == cal
    det.num_steps = 50
    det.fit(X)
    assert det.calibration_ is None
    with pytest.raises(ValueError, match="not calibrated; call calibrate"):
        det.predict_proba(X, calibrated=True)


def test_mean_log_odds_is_exact_where_the_probability_rounds_to_one():
    # Two draws of θ for three rows; row 0's probability is 1 - O(e^-40) in every draw.
    lo = np.array([[40.0, -40.0, 3.0], [42.0, -38.0, 1.0]])
    p = 1 / (1 + np.exp(-lo.astype(np.longdouble)))
    expected = np.log(p.mean(0)) - np.log((1 / (1 + np.exp(lo.astype(np.longdouble)))).mean(0))
    got = MixtureAnomalyDetector._mean_log_odds(lo)
    np.testing.assert_allclose(got, expected.astype(float), rtol=1e-9)
    assert 40 < got[0] < 42 and -40 < got[1] < -38  # float32's rounding to 1 would give inf here


def test_calibrate_rejects_bad_labels_and_warns_when_they_run_against_the_model(fitted):
    det, X, y = fitted
    bad = [
        (y[:-1], ValueError, "one label per row"),
        (np.where(y, 2, 0), ValueError, "1/True .* or 0/False"),
        (np.zeros(len(y)), ValueError, "only normal rows; calibrating needs both"),
        (np.where(y, "yes", "no"), ValueError, "1/True .* or 0/False"),
        (np.where(y, 1.0, np.nan), ValueError, "missing labels"),
    ]
    for labels, err, message in bad:
        with pytest.raises(err, match=message):
            det.calibrate(X, labels)
    assert det.calibration_ is None
    frame, series = pd.DataFrame(X), pd.Series(y)
    with pytest.raises(ValueError, match="y's index differs from X's"):
        det.calibrate(frame, series.iloc[::-1])
    try:
        # Object arrays of 0/1 or True/False (pandas reads a True/False column with blanks so) are labels too.
        for labels in (y.astype(int).astype(object), y.astype(object)):
            det.calibrate(X, labels)
            assert det.calibration_["anomalies"] == int(y.sum()) and det.calibration_["slope"] > 0
    finally:
        det.calibration_ = None
    with pytest.raises(TypeError, match="calibrated must be"):
        det.predict_proba(X, calibrated="yes")
    try:
        with pytest.warns(UserWarning, match="labels run against the anomaly probability"):
            det.calibrate(X, ~y)  # the planted anomalies labelled normal, and the rest anomalous
        assert det.calibration_["slope"] < 0
    finally:
        det.calibration_ = None


def test_cli_labels_column_calibrates_on_its_labelled_rows(tmp_path, capsys):
    import subprocess
    import sys

    X, y = planted(n_normal=200, n_anomalies=10)
    # Labels that are not the model's anomalies alone: the planted ones plus a random third of the rest.
    labels = np.where(y | (np.random.default_rng(0).random(len(y)) < 0.33), 1.0, 0.0)
    labels[1::3] = np.nan  # unknown for a third of the rows
    frame = pd.DataFrame(X, columns=list("abcd")).assign(incident=labels)
    frame.to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "scores.csv"
    args = [
        sys.executable,
        "-m",
        "bayesgen",
        "anomaly",
        "--csv",
        str(tmp_path / "data.csv"),
        "--out",
        str(out),
        "--num-steps",
        "300",
    ]
    proc = subprocess.run(args + ["--labels", "incident"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"calibrated on {int(np.isfinite(labels).sum())} labelled rows" in proc.stdout
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["a", "b", "c", "d", "incident", "anomaly_probability", "anomaly"]
    # Calibrated to the labelled rows: the mean probability there is near their share of 1s (about 0.36),
    # where the model's own probability averages about 0.05; the planted anomalies still rank first.
    known = np.isfinite(labels)
    assert labels[known].mean() > 0.25
    assert abs(scores["anomaly_probability"][known].mean() - labels[known].mean()) < 0.05
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, scores["anomaly_probability"]) > 0.95
    # The runs below (label errors, found before the fit, and a second column format) call the command's main()
    # in this process; they write (or refuse to write) the same --out.
    from bayesgen.cli import main

    argv = args[3:] + ["--overwrite"]

    def run(*extra: str, csv: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([*argv[:2], csv or argv[2], *argv[3:], *extra])
        out, err = capsys.readouterr()
        return status, out, err

    status, _, err = run("--labels", "nope")
    assert status == 2 and "no --labels column 'nope'" in err
    status, _, err = run("--labels", "incident", "--columns", "a,b,incident")
    assert status == 2 and "cannot also be a feature" in err
    # Label problems are found before the fit: no labelled rows, or one class only.
    for column, message in (
        (np.full(len(y), np.nan), "has no labelled rows"),
        (np.where(known, 0.0, np.nan), "has only normal rows"),
    ):
        frame.assign(incident=column).to_csv(tmp_path / "bad.csv", index=False)
        status, stdout, err = run("--labels", "incident", csv=str(tmp_path / "bad.csv"))
        assert status == 2 and message in err, err
        assert "calibrated on" not in stdout
    # A True/False column with blanks (object dtype in pandas) works.
    frame.assign(incident=np.where(known, np.where(labels == 1, "True", "False"), "")).to_csv(
        tmp_path / "tf.csv", index=False
    )
    status, stdout, err = run("--labels", "incident", csv=str(tmp_path / "tf.csv"))
    assert status == 0 and "calibrated on" in stdout, err


@pytest.mark.cuda
def test_fit_on_cuda():
    X, y = planted(n_normal=200, n_anomalies=10)
    det = MixtureAnomalyDetector(num_steps=200, device="cuda", seed=0).fit(X)
    assert det._x.device.type == "cuda" and det.predict(X).shape == (len(X),)


def test_probabilities_are_calibrated_when_the_inflated_model_holds():
    """Data drawn from the default model: the fitted P(anomaly) matches the true-parameter posterior."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(5)
    n, d, frac, inflation = 1500, 3, 0.12, 9.0
    A = rng.normal(size=(d, d))
    cov = A @ A.T + 0.5 * np.eye(d)
    centre = np.array([1.0, -1.0, 0.5])
    z = rng.random(n) < frac
    X = np.where(
        z[:, None], rng.multivariate_normal(centre, inflation * cov, n), rng.multivariate_normal(np.zeros(d), cov, n)
    )
    oracle_a = frac * multivariate_normal(centre, inflation * cov).pdf(X)
    oracle = oracle_a / (oracle_a + (1 - frac) * multivariate_normal(np.zeros(d), cov).pdf(X))
    units = np.array([0.01, 1.0, 100.0])  # raw columns of very different scales
    det = MixtureAnomalyDetector(seed=0).fit(X * units)
    p = det.predict_proba(X * units)
    brier, brier_oracle = np.mean((p - z) ** 2), np.mean((oracle - z) ** 2)
    # The bounds sit above this fit's figures (Brier 0.0297 against the oracle's 0.0292; 0.004; 0.001) and below
    # those of the fixed Student-t component (0.037; 0.039; 0.035), which fails them.
    assert brier <= brier_oracle + 0.003, (brier, brier_oracle)
    assert np.mean(np.abs(p - oracle)) < 0.015
    assert abs(p.mean() - z.mean()) < 0.015  # calibration in the large
    post = det.anomaly_fraction()
    assert post["low"] <= z.mean() <= post["high"]
    # The learnt breadth: (1 + excess) near the true inflation (LogNormal guide: its median).
    assert 0.6 * inflation < 1 + np.exp(float(det.params_["anomaly_excess_loc"])) < 1.5 * inflation
    assert "anomaly_excess_loc_offset" not in det.params_


def test_fit_warns_when_the_anomaly_component_takes_most_rows():
    """Multi-modal data (digits: 10 classes) with one normal component: the broad component takes whole modes."""
    from sklearn.datasets import load_digits

    X = load_digits().data[:600]
    X = X[:, X.std(0) > 1.0]
    with pytest.warns(UserWarning, match=r"the anomaly component took \d+% of the rows.*try more components"):
        det = MixtureAnomalyDetector(covariance="diag", init="kmeans", num_steps=300, seed=0).fit(X)
    assert det.anomaly_fraction()["mean"] > 0.5


def four_clusters(seed=0, n=2000, d=4, frac=0.05):
    """Four tight Gaussian clusters plus ``frac`` uniform anomalies over the data's box."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(4, d))
    n_anomalies = int(round(frac * n))
    normal = centres[rng.integers(0, 4, n - n_anomalies)] + rng.normal(scale=0.5, size=(n - n_anomalies, d))
    anomalies = rng.uniform(normal.min(0) - 2, normal.max(0) + 2, size=(n_anomalies, d))
    return np.vstack([normal, anomalies]), np.r_[np.zeros(n - n_anomalies), np.ones(n_anomalies)].astype(bool)


def clustered_anomalies(seed=1, n_normal=930, d=4):
    """One Gaussian cluster plus four tight clusters of anomalies far from it (7 % of the rows): extra normal
    components can take the anomaly clusters as modes of normal behaviour."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n_normal, d))
    size = n_normal // 50
    anomalies = np.vstack([rng.normal(rng.normal(scale=4.0, size=d), 0.3, size=(size, d)) for _ in range(4)])
    return np.vstack([normal, anomalies]), np.r_[np.zeros(n_normal), np.ones(len(anomalies))].astype(bool)


def test_auto_components_finds_four_clusters_and_the_anomaly_share():
    from sklearn.metrics import roc_auc_score

    X, y = four_clusters()
    det = MixtureAnomalyDetector(num_components="auto", num_steps=100, seed=0).fit(X)
    table = det.component_selection_
    assert list(table.index) == [1, 2, 3, 4, 5, 6]
    assert det.num_components_ == 4 and table["chosen"].sum() == 1 and bool(table.loc[4, "chosen"])
    assert abs(det.anomaly_fraction()["mean"] - y.mean()) < 0.02
    assert roc_auc_score(y, det.predict_proba(X)) > 0.98
    assert det.get_params()["num_components"] == "auto"


def test_auto_components_survive_save_and_load(tmp_path):
    X, _ = clustered_anomalies()
    det = MixtureAnomalyDetector(num_components="auto", num_steps=20, seed=0).fit(X)
    back = MixtureAnomalyDetector.load(det.save(tmp_path / "det"))
    assert back.num_components_ == det.num_components_ and back.num_components == "auto"
    np.testing.assert_allclose(back.predict_proba(X[:50]), det.predict_proba(X[:50]), atol=1e-6)


def test_fit_warns_when_extra_components_absorb_the_anomalies():
    from sklearn.metrics import roc_auc_score

    X, y = clustered_anomalies()
    with pytest.warns(UserWarning, match="extra normal components have absorbed the rows one component calls anomal"):
        det = MixtureAnomalyDetector(num_components=3, num_steps=100, seed=0).fit(X)
    # The warning is earned: three components hand the anomalies to normal components.
    assert det.anomaly_fraction()["mean"] < 0.5 * y.mean()
    assert roc_auc_score(y, det.predict_proba(X)) < 0.8


def test_auto_components_refuses_a_k_whose_anomaly_share_collapses():
    from sklearn.metrics import roc_auc_score

    X, y = clustered_anomalies()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        det = MixtureAnomalyDetector(num_components="auto", num_steps=100, seed=0).fit(X)
    table = det.component_selection_
    # BIC alone prefers more components; their anomaly share collapsed, so they are refused.
    assert table["bic"].idxmin() > 1 and table.loc[table["bic"].idxmin(), "collapsed"]
    assert not table.loc[det.num_components_, "collapsed"]
    frac = det.anomaly_fraction()
    assert frac["low"] <= y.mean() <= frac["high"]
    assert roc_auc_score(y, det.predict_proba(X)) > 0.98


def test_auto_components_tries_no_k_with_as_many_parameters_as_rows():
    # 120 rows of 10 features, full covariance: K = 1 has 77 free parameters, K = 2 already 143.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 10))
    det = MixtureAnomalyDetector(num_components="auto", num_steps=20, seed=0).fit(X)
    assert list(det.component_selection_.index) == [1] and det.num_components_ == 1
    assert (det.component_selection_["parameters"] < 120).all()


def test_fit_warns_when_the_anomaly_fraction_sits_below_its_prior():
    """A prior with 95 % of its mass above 13 % on data with 5 % anomalies: the posterior sits below it."""
    from scipy import stats

    X, y = planted()
    prior = (20.0, 80.0)
    with pytest.warns(UserWarning, match=r"lies below the 5% quantile .* of its prior"):
        det = MixtureAnomalyDetector(anomaly_prior=prior, num_steps=100, seed=0).fit(X)
    assert det.anomaly_fraction()["high"] < stats.beta.ppf(0.05, *prior)


def test_several_components_start_from_k_means_clusters(tmp_path):
    """K > 1: the guide starts at Lloyd's k-means centres and each cluster's spread (not at single rows
    with scale 0.7, from which scikit-learn's digits lost 99% of their rows to the anomaly component)."""
    from bayesgen.models.anomaly import _lloyd

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0], [6, 0, 0], [0, 6, 6]])
    sds = np.array([[0.5, 1.0, 1.5], [1.0, 0.3, 1.0], [2.0, 1.0, 0.5]])
    x = np.concatenate([rng.normal(c, s, size=(400, 3)) for c, s in zip(centres, sds, strict=True)])
    start = x[[5, 405, 805]] + 1.0  # one row of each cluster, off centre
    found, spread = _lloyd(x, start)
    np.testing.assert_allclose(found, centres, atol=0.15)
    np.testing.assert_allclose(spread, sds, rtol=0.1)
    # A cluster that empties keeps its centre and gets scale 1; tight clusters get the floor.
    found, spread = _lloyd(np.repeat(x[:2], 50, axis=0), np.array([x[0], x[1], [50.0, 50, 50]]))
    np.testing.assert_allclose(found[2], [50, 50, 50])
    np.testing.assert_allclose(spread, [[0.05] * 3, [0.05] * 3, [1.0] * 3])
    # Through fit: after one Adam step (learning rate 0.05) the centres and scales are still the clusters',
    # in the detector's standardised units.
    X = x * np.array([1.0, 10, 0.1]) + 3
    det = MixtureAnomalyDetector(num_components=3, num_steps=1, init="kmeans", seed=0).fit(X)
    shift, scale = np.median(X, axis=0), np.median(np.abs(X - np.median(X, axis=0)), axis=0) * 1.4826
    order = np.argsort(det.params_["loc_loc"][:, 0] * 10 + det.params_["loc_loc"][:, 2])
    want = (centres * np.array([1.0, 10, 0.1]) + 3 - shift) / scale
    np.testing.assert_allclose(det.params_["loc_loc"][order], want[np.argsort(want[:, 0] * 10 + want[:, 2])], atol=0.15)
    np.testing.assert_allclose(
        np.exp(det.params_["scale_loc"][order]),
        (sds * np.array([1.0, 10, 0.1]) / scale)[np.argsort(want[:, 0] * 10 + want[:, 2])],
        rtol=0.15,
    )
    # Saved with the model: a reloaded detector's refits (sbc_check) start where the fitted one's do.
    again = MixtureAnomalyDetector.load(det.save(tmp_path / "det"))
    assert again._init.keys() == det._init.keys()
    for name, value in det._init.items():
        torch.testing.assert_close(again._init[name], value)


@pytest.mark.slow
def test_three_components_on_digits_do_not_collapse_into_the_anomaly_component():
    """scikit-learn's digits with K = 3 full-covariance components: the normal components start from k-means
    clusters, and the anomaly component takes about 4% of the rows (benchmarks/RESULTS.md), not most of them."""
    from sklearn.datasets import load_digits

    X = load_digits().data
    X = X[:, X.std(0) > 0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the anomaly component took")
        det = MixtureAnomalyDetector(num_components=3, seed=0).fit(X)
    assert det.anomaly_fraction()["mean"] < 0.1
    assert np.mean(det.predict_proba(X) > 0.5) < 0.1


def test_reproducing_a_run_folder_from_before_the_anomaly_setting_refits_its_student_t(tmp_path, make_older):
    """An old folder's spec has no `anomaly`; the re-run must not silently switch to the new default."""
    from bayesgen.runs.folder import run_spec
    from bayesgen.runs.reproduce import reproduce

    X, _ = planted(n_normal=150, n_anomalies=8)
    pd.DataFrame(X, columns=list("abcd")).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "spec.toml").write_text(
        "[run]\nmodel = 'anomaly'\nseed = 0\n[data]\nsource = 'rows.csv'\n"
        "[model]\nanomaly = 'student_t'\nnum_components = 2\ncovariance = 'diag'\n"
        "[inference]\nnum_steps = 150\naverage_last = 20\n[report]\narviz_samples = 50\ndiagnostic_samples = 50\n"
    )
    run_spec(tmp_path / "spec.toml", tmp_path / "run")
    # Make it look like a folder written before the setting existed.
    spec_text = (tmp_path / "run" / "spec.toml").read_text()
    assert 'anomaly = "student_t"' in spec_text
    (tmp_path / "run" / "spec.toml").write_text(spec_text.replace('anomaly = "student_t"\n', ""))
    make_older(tmp_path / "run" / "model", **PRE_INFLATED)
    result = reproduce(tmp_path / "run", tmp_path / "again")
    assert result.match, result.table[~result.table["ok"]]
    assert 'anomaly = "student_t"' in (tmp_path / "again" / "spec.toml").read_text()


def test_em_start_recovers_the_simulated_parameters_and_the_spec_fit_ends_below_the_k_means_one():
    """em_start on rows drawn from the inflated model finds its parameters; from there (the structured guide) 300
    SVI steps on the shipped breast-cancer spec end hundreds of nats below the mean-field fit from k-means."""
    from sklearn.datasets import load_breast_cancer

    from bayesgen.diagnostics import convergence_report
    from bayesgen.models.anomaly import em_start

    rng = np.random.default_rng(1)
    n, d, frac, inflation = 4000, 4, 0.1, 6.0
    A = rng.normal(size=(d, d))
    cov = A @ A.T / d + 0.3 * np.eye(d)
    centre = np.array([1.0, -0.5, 0.0, 0.5])
    z = rng.random(n) < frac
    x = np.where(
        z[:, None], rng.multivariate_normal(centre, inflation * cov, n), rng.multivariate_normal(np.zeros(d), cov, n)
    )
    hyper = {"frac_a": 1.0, "frac_b": 19.0, "anomaly_df": 3.0, "anomaly_scale": 3.0}
    found = em_start(x, x[:1], hyper=hyper, covariance="full", rank=2, anomaly="inflated")
    a, b = float(found["anomaly_fraction_a"]), float(found["anomaly_fraction_b"])
    assert abs(a / (a + b) - frac) < 0.03
    np.testing.assert_allclose(found["loc_loc"][0], 0.0, atol=0.1)
    np.testing.assert_allclose(np.exp(found["scale_loc"][0]), np.sqrt(np.diag(cov)), rtol=0.08)
    np.testing.assert_allclose(found["anomaly_loc_loc"], centre, atol=0.6)
    assert 0.6 * inflation < 1 + np.exp(float(found["anomaly_excess_loc"])) < 1.5 * inflation
    # The responsibilities separate the planted rows.
    assert np.corrcoef(found["responsibility"][:, -1], z)[0, 1] > 0.6

    X = load_breast_cancer().data
    spec = {"num_components": 2, "covariance": "full", "num_steps": 300, "learning_rate": 0.05, "seed": 0}
    verdicts, final = {}, {}
    for init in ("em", "kmeans"):
        det = MixtureAnomalyDetector(init=init, **spec).fit(X)
        verdicts[init] = convergence_report(det.losses_, converged=det.converged_, max_steps=300)["verdict"]
        final[init] = float(np.mean(det.losses_[-100:]))
    assert final["em"] < final["kmeans"] - 200, final
    assert verdicts["kmeans"] == "still improving", verdicts


@pytest.mark.slow
def test_the_breast_cancer_spec_fit_converges_under_the_convergence_rule():
    """The shipped spec's settings end "converged" by the runner's one rule, and still rank malignant rows."""
    import tomllib
    from pathlib import Path

    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import roc_auc_score

    from bayesgen.diagnostics import convergence_report

    spec = tomllib.loads((Path(__file__).parents[1] / "models" / "anomaly_breast_cancer.toml").read_text())
    settings = {**spec["model"], **spec["inference"], "seed": spec["run"]["seed"], "device": "cpu"}
    settings["anomaly_prior"] = tuple(settings["anomaly_prior"])
    X, y = load_breast_cancer(return_X_y=True)
    det = MixtureAnomalyDetector(**settings).fit(X)
    report = convergence_report(det.losses_, converged=det.converged_, max_steps=settings["num_steps"])
    assert report["verdict"] == "converged", report["message"]
    assert roc_auc_score(y == 0, det.predict_proba(X)) > 0.8


def test_a_refit_checks_its_predictions_against_the_new_rows():
    """The predictive check's Mahalanobis reference (centre and covariance of the fitted rows) follows a refit."""
    from bayesgen.diagnostics import predictive_check

    X, _ = planted(n_normal=150, n_anomalies=5)
    det = MixtureAnomalyDetector(num_steps=50, seed=0).fit(X)
    predictive_check(det, num_samples=20, seed=0)
    det.fit(X * 3.0 + 10.0)  # same standardised rows, other raw units: the check must still pass
    det.fit(np.vstack([X[:80], X[:80] + 8.0]))  # two clusters now
    check = predictive_check(det, num_samples=20, seed=0)
    x = det._x.cpu().numpy().astype(float)
    np.testing.assert_allclose(det._ppc_reference[0], x.mean(axis=0))
    assert check.table.loc["mahalanobis²[median]", "observed"] == pytest.approx(
        np.median(
            (
                (
                    np.linalg.solve(
                        np.linalg.cholesky(np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])), (x - x.mean(0)).T
                    )
                )
                ** 2
            ).sum(0)
        )
    )


def test_posterior_matches_nuts_on_six_breast_cancer_columns():
    """Every scalar of every global site against NUTS (benchmarks/anomaly_nuts_reference.py, its stored summary):
    means within 0.25 NUTS sd and sds within 20 %. A mean-field guide's sds are 20-45 % short here."""
    from pathlib import Path

    from sklearn.datasets import load_breast_cancer

    table = pd.read_csv(Path(__file__).parents[1] / "benchmarks" / "results" / "anomaly_nuts_reference.csv")
    reference = table[(table["columns"] == "weakly correlated") & (table["rows"] == 569)].set_index("parameter")
    X = load_breast_cancer().data[:, [1, 4, 8, 9, 11, 14]]
    det = MixtureAnomalyDetector(num_components=1, covariance="full", seed=0).fit(X)
    draws = det.posterior(4000, seed=0)
    checked = 0
    for name, row in reference.iterrows():
        site, _, index = name.partition("[")
        value = draws[site][:, 0] if site.startswith("anomaly") else draws[site]  # (4000, 1, ...) outside the plate
        if index:
            value = value[(slice(None), *(int(i) for i in index.rstrip("]").split(", ")))]
        gap = (value.mean() - row["nuts_mean"]) / row["nuts_sd"]
        ratio = value.std() / row["nuts_sd"]
        assert abs(gap) <= 0.25 and abs(ratio - 1) <= 0.2, (name, gap, ratio)
        checked += 1
    assert checked == len(reference) >= 40

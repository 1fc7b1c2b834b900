"""Tier 3: user-style Pyro models through the general machinery, checked against exact posteriors and NUTS.

Each case of ``tests/user_models.py`` is fitted once with ``run_svi`` (module cache), converted with
``to_datatree``, scored with ``arviz_stats.loo`` and judged with ``vi_khat``; its posterior means and sds
are checked against closed forms (conjugate Beta-Binomial, Gaussian regression and local-level model, a
quadrature for eight schools) or the simulated parameters, and in the slow tier against NUTS.

Tolerances: a mean may differ from the exact one by an approximation allowance (in posterior sds, for
the guide's family and a few hundred optimisation steps) plus three Monte Carlo standard errors of the
guide draws' mean (sd / √S); an sd ratio by an allowance plus three standard errors of a sample sd
(≈ 1 / √(2S)).
"""

from __future__ import annotations

import logging
import math
import warnings

import arviz_stats
import numpy as np
import pytest
import torch
from user_models import LINREG_NOISE, LINREG_PRIOR_SCALE, UserCase, make_cases

from bayesgen.arviz import to_datatree
from bayesgen.diagnostics import nuts_compare, vi_khat
from bayesgen.infer import run_svi

CASES = make_cases()
POINT = [name for name, case in CASES.items() if case.point_estimate]
SPREAD = [name for name, case in CASES.items() if not case.point_estimate]
# Enumerated mixtures and the EasyGuide convert one draw at a time: fewer draws keep them quick.
NUM_DRAWS = {"mixture_delta": 200, "mixture_normal": 200, "local_level": 200}
KHAT_DRAWS = {"mixture_normal": 100, "local_level": 100}
PLATE = {
    "rats": "group",
    "rats_conjugate": "group",
    "schools": "school",
    "linreg_diag": "data",
    "linreg_mvn": "data",
    "logistic": "data",
    "logistic_minibatch": "data",
    "mixture_normal": "data",
    "mixture_delta": "data",
    "horseshoe": "data",
    "local_level": "time",
}
_FITTED: dict[str, tuple] = {}


def full_kwargs(case: UserCase) -> dict:
    """The model's keyword arguments with every row in (a subsampling model's minibatch switched off)."""
    return case.full_kwargs if case.full_kwargs is not None else case.kwargs


def fitted(name: str) -> tuple[UserCase, object, object, object]:
    """(case, guide, SVIResult, DataTree), fitted and converted once per session."""
    if name not in _FITTED:
        case = CASES[name]
        guide = case.make_guide()
        fit = run_svi(case.model, guide, *case.args, seed=0, **case.fit, **case.kwargs)
        tree = to_datatree(
            case.model,
            guide,
            *case.args,
            param_state=fit.param_state,
            seed=0,
            num_samples=NUM_DRAWS.get(name, 1000),
            dims=case.dims,
            **full_kwargs(case),
        )
        _FITTED[name] = case, guide, fit, tree
    return _FITTED[name]


def draws(tree, site: str) -> np.ndarray:
    """The posterior draws of ``site``, shape (num_draws, *site_shape), in float64."""
    values = tree.posterior[site].values
    return values.reshape(-1, *values.shape[2:]).astype(np.float64)


def assert_matches(values: np.ndarray, mean, sd, *, mean_tol: float, sd_tol: float, what: str) -> None:
    """Guide draws against an exact posterior mean and sd, within the allowances plus Monte Carlo error."""
    mean, sd = np.asarray(mean, dtype=np.float64), np.asarray(sd, dtype=np.float64)
    n = values.shape[0]
    got_mean, got_sd = values.mean(0), values.std(0, ddof=1)
    mean_err = np.abs(got_mean - mean) / sd
    mean_allowed = mean_tol + 3 * got_sd / sd / math.sqrt(n)
    assert np.all(mean_err <= mean_allowed), (
        f"{what}: means {got_mean.round(3)} vs exact {mean.round(3)}; |error| in sds {mean_err.round(2)} > "
        f"{np.round(mean_allowed, 2)}"
    )
    ratio = got_sd / sd
    ratio_allowed = sd_tol + 3 / math.sqrt(2 * n)
    assert np.all(np.abs(ratio - 1) <= ratio_allowed), (
        f"{what}: sds {got_sd.round(3)} vs exact {sd.round(3)}; ratio {ratio.round(2)} beyond 1 ± {ratio_allowed:.2f}"
    )


# ------------------------------------------------------------------ the pipeline, every case
@pytest.mark.parametrize("name", list(CASES))
def test_user_model_runs_through_fit_tree_loo_and_khat(name):
    case, guide, fit, tree = fitted(name)
    assert np.isfinite(fit.losses).all()
    assert fit.losses[-50:].mean() < fit.losses[:50].mean()
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(tree.children)
    num_rows = case.args[0].shape[0]
    assert tree.log_likelihood["y"].shape[-1] == num_rows
    assert np.isfinite(tree.log_likelihood["y"].values).all()
    for site in case.truth:
        if site in tree.posterior:
            assert np.isfinite(tree.posterior[site].values).all()
    if case.point_estimate:
        return  # LOO and k-hat of a point estimate: see the tests below
    loo = arviz_stats.loo(tree)
    assert np.isfinite(loo.elpd) and np.isfinite(loo.se)
    assert 0 < loo.p < 3 * sum(int(np.prod(v.shape[2:])) for v in tree.posterior.data_vars.values())
    num_samples = KHAT_DRAWS.get(name, 300)
    diag = vi_khat(
        case.model,
        guide,
        *case.args,
        param_state=fit.param_state,
        num_samples=num_samples,
        seed=0,
        warn=False,
        **full_kwargs(case),
    )
    assert diag.verdict in {"good", "usable", "unreliable"} and not math.isnan(diag.khat)
    assert diag.raw_log_weights.shape == (num_samples,) and np.isfinite(diag.raw_log_weights).all()


@pytest.mark.parametrize("name", SPREAD)
def test_log_likelihood_is_float64_for_loo(name):
    # float32 log-likelihoods lose the small differences between draws that PSIS's tail fit needs.
    _, _, _, tree = fitted(name)
    assert tree.log_likelihood["y"].dtype == np.float64


@pytest.mark.parametrize("name", ["rats_conjugate", "logistic"])
def test_count_observations_stay_integer(name):
    # Binomial successes and Bernoulli outcomes are counts: ArviZ's discrete plots and PPC statistics need ints.
    _, _, _, tree = fitted(name)
    assert np.issubdtype(tree.observed_data["y"].dtype, np.integer), tree.observed_data["y"].dtype
    assert np.issubdtype(tree.posterior_predictive["y"].dtype, np.integer), tree.posterior_predictive["y"].dtype
    np.testing.assert_array_equal(tree.observed_data["y"].values, CASES[name].args[1].numpy())


@pytest.mark.parametrize("name", ["rats_conjugate", "schools", "linreg_mvn", "local_level"])
def test_dims_are_named_after_the_plates_without_a_dims_table(name):
    case, guide, fit, _ = fitted(name)
    tree = to_datatree(
        case.model, guide, *case.args, param_state=fit.param_state, num_samples=50, seed=0, **full_kwargs(case)
    )
    assert tree.log_likelihood["y"].dims == ("chain", "draw", PLATE[name])
    assert tree.observed_data["y"].dims == (PLATE[name],)


# ------------------------------------------------------------------ against exact posteriors
def test_conjugate_beta_binomial_matches_the_exact_beta_posterior():
    case, _, _, tree = fitted("rats_conjugate")
    mean, sd = case.exact["theta"]
    # AutoNormal fits a logit-normal to each Beta(a + y, b + n − y): close, not exact.
    assert_matches(draws(tree, "theta"), mean, sd, mean_tol=0.15, sd_tol=0.15, what="theta")


def test_eight_schools_hand_written_guide_matches_the_quadrature():
    case, _, _, tree = fitted("schools")
    for site in ("mu", "theta"):
        mean, sd = case.exact[site]
        # Mean-field over (mu, log tau, eta) misses their funnel: a looser allowance than for a Gaussian.
        assert_matches(draws(tree, site), mean, sd, mean_tol=0.25, sd_tol=0.25, what=site)
    tau_mean, _ = case.exact["tau"]
    assert 0.5 * float(tau_mean) < draws(tree, "tau").mean() < 1.5 * float(tau_mean)


def test_linear_regression_multivariate_guide_matches_the_exact_posterior():
    case, _, _, tree = fitted("linreg_mvn")
    mean, sd = case.exact["w"]
    assert_matches(draws(tree, "w"), mean, sd, mean_tol=0.1, sd_tol=0.1, what="w")
    w, cov = draws(tree, "w"), np.linalg.inv(_precision(case).numpy())
    exact_corr = cov[1, 2] / math.sqrt(cov[1, 1] * cov[2, 2])
    assert abs(np.corrcoef(w[:, 1], w[:, 2])[0, 1] - exact_corr) < 0.1


def _precision(case: UserCase) -> torch.Tensor:
    """Posterior precision of the regression weights, Λ = I / 2² + XᵀX / 0.5²."""
    X = case.args[0].double()
    return torch.eye(X.shape[-1], dtype=torch.float64) / LINREG_PRIOR_SCALE**2 + X.T @ X / LINREG_NOISE**2


def test_linear_regression_diagonal_guide_has_the_mean_field_optimum():
    # For a Gaussian posterior N(m, Λ⁻¹), the mean-field Gaussian closest in KL(q‖p) has mean m and
    # variances 1 / Λ_ii: narrower than the marginals wherever the design correlates the weights.
    case, _, _, tree = fitted("linreg_diag")
    mean, _ = case.exact["w"]
    mean_field_sd = 1 / _precision(case).diagonal().sqrt()
    assert_matches(draws(tree, "w"), mean, mean_field_sd, mean_tol=0.1, sd_tol=0.1, what="w")


def test_khat_tells_the_too_narrow_diagonal_guide_from_the_full_rank_one():
    out = {}
    for name in ("linreg_diag", "linreg_mvn"):
        case, guide, fit, _ = fitted(name)
        out[name] = vi_khat(
            case.model, guide, *case.args, param_state=fit.param_state, num_samples=2000, seed=0, warn=False
        )
    assert out["linreg_mvn"].verdict == "good"
    assert out["linreg_diag"].khat > out["linreg_mvn"].khat + 0.2


def test_loo_compares_the_two_regression_guides():
    trees = {name: fitted(name)[3] for name in ("linreg_diag", "linreg_mvn")}
    table = arviz_stats.compare(trees)
    assert set(table.index) == set(trees)
    # The same model and data: the guides' elpd differ by far less than the elpd's own standard error.
    assert table["elpd_diff"].max() < table["se"].max()


def test_local_level_easyguide_matches_the_exact_gaussian_posterior():
    case, _, _, tree = fitted("local_level")
    for site in ("eps", "level"):
        mean, sd = case.exact[site]
        assert_matches(draws(tree, site), mean, sd, mean_tol=0.3, sd_tol=0.2, what=site)


# ------------------------------------------------------------------ against the simulated parameters
@pytest.mark.parametrize("name", ["logistic", "logistic_minibatch", "rats"])
def test_posterior_covers_the_simulated_parameters(name):
    case, _, _, tree = fitted(name)
    for site, value in case.truth.items():
        if site not in tree.posterior or site == "kappa":  # kappa: a dozen groups barely inform it
            continue
        d = draws(tree, site)
        z = np.abs(d.mean(0) - value.numpy()) / d.std(0, ddof=1)
        assert np.all(z < 3.5), (
            f"{site}: truth {value.numpy().round(2)}, posterior {d.mean(0).round(2)} ± {d.std(0).round(2)}"
        )


def test_minibatched_fit_matches_the_full_data_fit():
    # subsample_size scales each minibatch's log-likelihood by N / batch: the posterior is the full-data one.
    _, _, _, full = fitted("logistic")
    _, _, _, mini = fitted("logistic_minibatch")
    for site in ("b", "w"):
        full_draws, mini_draws = draws(full, site), draws(mini, site)
        assert_matches(mini_draws, full_draws.mean(0), full_draws.std(0, ddof=1), mean_tol=0.25, sd_tol=0.25, what=site)


@pytest.mark.parametrize("name", ["mixture_delta", "mixture_normal"])
def test_mixture_recovers_its_components_and_assignments(name):
    case, _, _, tree = fitted(name)
    loc = draws(tree, "loc").mean(0)
    assert np.all(np.abs(loc - case.truth["loc"].numpy()) < 0.3), loc
    assert np.all(np.abs(draws(tree, "weights").mean(0) - case.truth["weights"].numpy()) < 0.1)
    # z is drawn from p(z | y, θ): the two well-separated groups get their own component.
    z = draws(tree, "z").mean(0)
    labels = np.r_[np.zeros(60), np.ones(40)]
    assert np.mean(np.abs(z - labels) < 0.5) > 0.95


def test_horseshoe_map_keeps_the_signals_and_shrinks_the_noise():
    case, _, _, tree = fitted("horseshoe")
    w, truth = draws(tree, "w")[0], case.truth["w"].numpy()
    assert np.all(np.abs(w[:3] - truth[:3]) < 0.3), w
    assert np.all(np.abs(w[3:]) < 0.1), w
    assert abs(draws(tree, "sigma")[0] - 0.5) < 0.15


# ------------------------------------------------------------------ point estimates and minibatches
@pytest.mark.parametrize("name", POINT)
def test_point_estimate_guide_is_flagged_when_converted(name, caplog):
    case, guide, fit, _ = fitted(name)
    with caplog.at_level(logging.WARNING, logger="bayesgen.arviz"):
        tree = to_datatree(
            case.model, guide, *case.args, param_state=fit.param_state, num_samples=20, seed=0, dims=case.dims
        )
    # The warning says what the tree is and what LOO will do with it.
    assert "point mass" in caplog.text and "LOO" in caplog.text
    assert tree.attrs.get("point_estimate") == 1
    assert float(draws(tree, "loc" if "mixture" in name else "w").std(0).max()) == 0.0


@pytest.mark.parametrize("name", POINT)
def test_vi_khat_does_not_call_a_point_estimate_good(name):
    # An AutoDelta has no density: log q is 0 at its point and every importance ratio is the same, which
    # says nothing about the posterior. Either a clear refusal or a verdict that is not "good".
    case, guide, fit, _ = fitted(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            diag = vi_khat(case.model, guide, *case.args, param_state=fit.param_state, num_samples=100, seed=0)
    except ValueError as err:
        assert any(word in str(err).lower() for word in ("point", "delta")), err
    else:
        assert diag.verdict != "good", diag.message()
        assert any(word in diag.message().lower() for word in ("point", "delta")), diag.message()


def test_vi_khat_on_a_subsampling_plate_refuses_or_uses_every_row():
    case, guide, fit, _ = fitted("logistic_minibatch")
    try:
        sub = vi_khat(
            case.model,
            guide,
            *case.args,
            param_state=fit.param_state,
            num_samples=200,
            seed=0,
            warn=False,
            **case.kwargs,
        )
    except ValueError as err:
        assert "subsampl" in str(err).lower(), err
        return
    full = vi_khat(
        case.model,
        guide,
        *case.args,
        param_state=fit.param_state,
        num_samples=200,
        seed=0,
        warn=False,
        **full_kwargs(case),
    )
    np.testing.assert_allclose(sub.raw_log_weights, full.raw_log_weights, rtol=1e-4)


def test_to_datatree_refuses_a_subsampling_plate():
    case, guide, fit, _ = fitted("logistic_minibatch")
    with pytest.raises(ValueError, match="subsamples 50 of its 200 rows"):
        to_datatree(case.model, guide, *case.args, param_state=fit.param_state, num_samples=20, **case.kwargs)


# ------------------------------------------------------------------ NUTS
# The enumerated mixture is checked against its simulated parameters only: NUTS (two chains of 300 + 500)
# does not mix on it (R-hat 1.8, bulk ESS 3), so it is no reference there.
NUTS_TOLERANCE = {
    "rats": 0.25,
    "schools": 0.25,
    "linreg_mvn": 0.1,
    "logistic": 0.1,
    "logistic_minibatch": 0.15,
    "local_level": 0.2,
    "rats_conjugate": 0.15,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NUTS_TOLERANCE))
def test_guide_agrees_with_nuts(name):
    case, guide, fit, _ = fitted(name)
    result = nuts_compare(
        case.model,
        guide,
        *case.args,
        param_state=fit.param_state,
        num_warmup=300,
        num_samples=500,
        num_chains=2,
        svi_samples=2000,
        tolerance=NUTS_TOLERANCE[name],
        warn=False,
        **full_kwargs(case),
    )
    assert result.reliable, result.message()
    assert result.agree, result.message() + "\n" + result.table.round(3).to_string()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linreg_diag", *POINT])
def test_nuts_finds_a_guide_too_narrow(name):
    # The mean-field guide on correlated weights and the point estimates have sds below the posterior's.
    case, guide, fit, _ = fitted(name)
    result = nuts_compare(
        case.model,
        guide,
        *case.args,
        param_state=fit.param_state,
        num_warmup=300,
        num_samples=500,
        num_chains=2,
        svi_samples=2000,
        warn=False,
        **full_kwargs(case),
    )
    assert not result.agree, result.message()
    assert result.table["sd_ratio"].min() < 0.8

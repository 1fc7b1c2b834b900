"""A/B test: unit tests, closed forms, and SVI against the exact posterior."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import integrate, optimize, special, stats

from bayesgen.models.ab_test import (
    BetaBinomialTest,
    events_guide,
    events_model,
    expected_loss_exact,
    guide,
    model,
    prob_best_exact,
)

RESUME = dict(successes=[235, 157], trials=[2435, 2435], names=["white", "black"])


def evan_miller_prob_b_beats_a(a_a, b_a, a_b, b_b):
    """Independent closed form of P(p_B > p_A) for integer alpha_B (Evan Miller, 2015)."""
    total = 0.0
    for i in range(int(a_b)):
        total += math.exp(
            special.betaln(a_a + i, b_a + b_b)
            - math.log(b_b + i)
            - special.betaln(1 + i, b_b)
            - special.betaln(a_a, b_a)
        )
    return total


# ------------------------------------------------------------------ tier 1: unit
def test_model_and_guide_share_latent_sites_and_shapes():
    trials, successes = torch.tensor([100.0, 120.0, 90.0]), torch.tensor([10.0, 15.0, 5.0])
    gtr = poutine.trace(guide).get_trace(trials, successes)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(trials, successes)

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    latent_model, latent_guide = latent(mtr), latent(gtr)
    assert latent_model == latent_guide == {"rate"}
    assert mtr.nodes["rate"]["value"].shape == (3,)
    assert torch.isfinite(mtr.log_prob_sum())
    prior_draw = poutine.trace(model).get_trace(trials).nodes["successes"]["value"]
    assert prior_draw.shape == (3,) and bool((prior_draw <= trials).all())


def test_events_model_subsamples_and_scales():
    variant = torch.tensor([0, 1] * 50)
    outcome = torch.tensor([1.0, 0.0] * 50)
    idx = torch.arange(10)
    gtr = poutine.trace(events_guide).get_trace(variant, outcome, idx, num_variants=2)
    mtr = poutine.trace(poutine.replay(events_model, trace=gtr)).get_trace(variant, outcome, idx, num_variants=2)
    site = mtr.nodes["outcome"]
    assert site["value"].shape == (10,)
    assert site["scale"] == pytest.approx(10.0)  # 100 events / 10 per batch


# ---------------------------------------------------------- closed forms (truth)
@pytest.mark.parametrize("params", [(236, 2201, 158, 2279), (4, 47, 11, 50), (30, 70, 33, 68)])
def test_prob_best_matches_independent_closed_form(params):
    a_a, b_a, a_b, b_b = params
    ours = prob_best_exact(np.array([a_a, a_b]), np.array([b_a, b_b]))
    assert ours.sum() == pytest.approx(1.0, abs=1e-9)
    assert ours[1] == pytest.approx(evan_miller_prob_b_beats_a(a_a, b_a, a_b, b_b), abs=1e-7)


def test_exact_quantities_match_large_monte_carlo():
    alpha, beta = np.array([4.0, 11.0, 9.0]), np.array([47.0, 50.0, 40.0])
    rng = np.random.default_rng(0)
    draws = rng.beta(alpha, beta, size=(400_000, 3))
    mc_best = np.bincount(draws.argmax(1), minlength=3) / len(draws)
    mc_loss = (draws.max(1, keepdims=True) - draws).mean(0)
    se_best = np.sqrt(mc_best * (1 - mc_best) / len(draws))
    se_loss = (draws.max(1, keepdims=True) - draws).std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(prob_best_exact(alpha, beta) - mc_best) < 4 * se_best + 1e-9)
    assert np.all(np.abs(expected_loss_exact(alpha, beta) - mc_loss) < 4 * se_loss + 1e-9)


def test_exact_quadrature_handles_huge_and_far_apart_posteriors():
    alpha = np.array([1e6 * 0.10 + 1, 1e6 * 0.1005 + 1, 50.0])
    beta = np.array([1e6 * 0.90 + 1, 1e6 * 0.8995 + 1, 10.0])
    pb = prob_best_exact(alpha, beta)
    assert pb.sum() == pytest.approx(1.0, abs=1e-6)
    assert pb[2] == pytest.approx(1.0, abs=1e-6)  # the 0.83 variant dominates
    a2, b2 = alpha[:2], beta[:2]
    z = (a2[1] / (a2[1] + b2[1]) - a2[0] / (a2[0] + b2[0])) / np.sqrt(stats.beta.var(a2, b2).sum())
    assert prob_best_exact(a2, b2)[1] == pytest.approx(stats.norm.cdf(z), abs=1e-3)


@pytest.mark.parametrize(
    ("successes", "trials"), [([50_000, 1], [100_000, 10]), ([5_000_000, 4_950_000], [10**7, 10**7])]
)
def test_exact_prob_best_is_finite_when_the_posteriors_barely_overlap(successes, trials):
    # Where one posterior's CDF underflows to 0 on the grid, the others' product must still be finite.
    test = BetaBinomialTest(method="exact").fit(successes, trials)
    pb = test.exact_summary()["prob_best"].to_numpy()
    assert np.isfinite(pb).all() and pb.sum() == pytest.approx(1.0, abs=1e-6)
    # Two variants: P(B best) = P(rate_B > rate_A), here well approximated by one-dimensional integration.
    a, b = test.exact_alpha_, test.exact_beta_
    x = np.linspace(0, 1, 200_001)
    p_b = np.trapezoid(stats.beta.pdf(x, a[1], b[1]) * stats.beta.cdf(x, a[0], b[0]), x)
    assert pb[1] == pytest.approx(p_b, abs=1e-4)


def test_exact_prob_best_holds_at_a_trillion_trials():
    # Beta(2^40 + 1, 2^40 + 1) is a point mass at 0.5 to 3e-7, so P(first best) = P(Beta(5, 7) < 0.5); at these
    # counts log B(α, β) loses digits to cancellation, which must not move the probabilities.
    pb = prob_best_exact(np.array([2.0**40 + 1, 5.0]), np.array([2.0**40 + 1, 7.0]))
    assert pb[0] == pytest.approx(stats.beta.cdf(0.5, 5, 7), abs=1e-6)
    assert pb.sum() == pytest.approx(1.0, abs=1e-8)


# ------------------------------------------------- tier 3: SVI vs closed form
@pytest.mark.parametrize(
    "data",
    [
        RESUME,
        dict(successes=[48, 61, 39], trials=[1000, 1010, 990], names=None),
    ],
    ids=["resume-callbacks", "three-variants"],
)
def test_svi_matches_exact_posterior(data):
    # The guide starts at Beta(1, 1) (concentration 2), far from the posterior
    # (concentration ~ 2400): SVI must travel to the answer.
    test = BetaBinomialTest(seed=0).fit(data["successes"], data["trials"], names=data["names"])
    exact = test.exact_summary()
    a, b = test.posterior_alpha_, test.posterior_beta_
    np.testing.assert_allclose(stats.beta.mean(a, b), exact["mean"], rtol=0.01)
    np.testing.assert_allclose(stats.beta.std(a, b), exact["sd"], rtol=0.05)
    assert test.exact_gap_["max_sd_rel_error"] < 0.05


def test_svi_prob_b_beats_a_within_monte_carlo_error():
    data = dict(successes=[120, 138], trials=[2000, 2000], names=["A", "B"])  # a close race
    test = BetaBinomialTest(seed=0, num_samples=40_000).fit(**data)
    exact = prob_best_exact(test.exact_alpha_, test.exact_beta_)[1]
    svi = float(test.prob_best()["B"])
    se = math.sqrt(exact * (1 - exact) / test.num_samples)
    # Monte Carlo error of the draws, plus the SVI approximation error: the fitted
    # means sit within ~0.02 posterior sd of the exact ones, which moves P(B > A)
    # by at most ~0.005 in this close race.
    assert test.exact_gap_["max_mean_gap_sd"] < 0.05
    assert abs(svi - exact) < 4 * se + 0.005
    assert 0.8 < exact < 0.95  # the case really is uncertain


def test_exact_method_reproduces_closed_form_decisions():
    test = BetaBinomialTest(method="exact").fit(**RESUME)
    assert test.losses_.size == 0
    pb = test.prob_best()
    expected = evan_miller_prob_b_beats_a(158, 2279, 236, 2201)  # P(white > black)
    assert pb["white"] == pytest.approx(expected, abs=1e-7)
    # stored as float32 guide parameters
    np.testing.assert_allclose(test.posterior_alpha_, [236, 158], rtol=1e-5)
    np.testing.assert_allclose(test.posterior_beta_, [2201, 2279], rtol=1e-5)


def test_events_with_minibatches_agree_with_counts():
    rng = np.random.default_rng(1)
    n = 6000
    variant = rng.choice(["control", "treat"], size=n)
    outcome = (rng.random(n) < np.where(variant == "treat", 0.12, 0.10)).astype(int)
    events = pd.DataFrame({"arm": variant, "converted": outcome})
    test = BetaBinomialTest(seed=0, batch_size=1000, num_steps=3000).fit_events(
        events, variant_col="arm", outcome_col="converted"
    )
    assert test.names_ == ["control", "treat"]
    np.testing.assert_array_equal(test.trials_, [np.sum(variant == "control"), np.sum(variant == "treat")])
    exact = test.exact_summary()
    a, b = test.posterior_alpha_, test.posterior_beta_
    gap = np.abs(stats.beta.mean(a, b) - exact["mean"]) / exact["sd"]
    assert gap.max() < 0.25
    np.testing.assert_allclose(stats.beta.std(a, b), exact["sd"], rtol=0.10)


def test_lift_and_expected_loss_have_the_right_sign_and_units():
    test = BetaBinomialTest(method="exact").fit(**RESUME)
    lift = test.lift("white")
    true_rel = (158 / 2437) / (236 / 2437) - 1
    assert lift.loc["black", "mean"] == pytest.approx(true_rel, abs=0.01)
    assert lift.loc["black", "lower"] < true_rel < lift.loc["black", "upper"]
    assert lift.loc["black", "prob_positive"] < 0.001
    loss = test.expected_loss()
    assert loss["white"] < 1e-6 and loss["black"] == pytest.approx(236 / 2437 - 158 / 2437, rel=0.01)
    table = test.summary(control="white")
    assert list(table.index) == ["white", "black"] and table.loc["white", "lift_mean"] == 0.0


def test_posterior_predictive_sample_shapes_and_ranges():
    test = BetaBinomialTest(method="exact").fit(**RESUME)
    draws = test.sample(500, seed=1)
    assert draws.shape == (500, 2) and (draws.to_numpy() <= 2435).all()
    assert draws["white"].mean() == pytest.approx(236 / 2437 * 2435, rel=0.05)
    more = test.sample(200, trials=[10_000, 10_000], seed=1)
    assert more["white"].mean() == pytest.approx(236 / 2437 * 10_000, rel=0.05)


def test_warns_when_svi_is_far_from_exact():
    with pytest.warns(UserWarning, match="off the exact conjugate posterior"):
        BetaBinomialTest(num_steps=20, seed=0).fit(**RESUME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BetaBinomialTest(method="exact").fit(**RESUME)


# ----------------------------------------------------------- bad input errors
@pytest.mark.parametrize(
    ("successes", "trials", "kind", "match"),
    [
        ([30, 20], [25, 100], ValueError, "more successes"),
        ([-1, 20], [25, 100], ValueError, "negative"),
        ([1.5, 20], [25, 100], ValueError, "whole number"),
        ([1, 20], [0, 100], ValueError, "zero trials"),
        ([np.nan, 20], [25, 100], ValueError, "NaN"),
        ([3], [25], ValueError, "at least two variants"),
        ([3, 4, 5], [25, 30], ValueError, "successes has 3 values but trials has 2"),
        (["a", "b"], [25, 30], TypeError, "must be numbers"),
        ([[1, 2], [3, 4]], [[5, 6], [7, 8]], ValueError, "one-dimensional"),
        ([10**20, 1], [10**20, 10], ValueError, r"above 2\*\*53"),
    ],
)
def test_bad_counts_are_rejected_clearly(successes, trials, kind, match):
    with pytest.raises(kind, match=match):
        BetaBinomialTest(method="exact").fit(successes, trials)


@pytest.mark.parametrize("prior", [(0, 1), (1, -2), (float("nan"), 1), (1,), "uniform"])
def test_bad_priors_are_rejected(prior):
    with pytest.raises(ValueError, match="prior"):
        BetaBinomialTest(prior=prior, method="exact").fit([1, 2], [10, 10])


def test_bad_events_are_rejected_clearly():
    events = pd.DataFrame({"arm": ["a", "b", "a"], "y": [0, 1, 2]})
    with pytest.raises(ValueError, match="only 0/1"):
        BetaBinomialTest(method="exact").fit_events(events, variant_col="arm", outcome_col="y")
    with pytest.raises(ValueError, match="outcome_col='nope' is not a column"):
        BetaBinomialTest(method="exact").fit_events(events, variant_col="arm", outcome_col="nope")
    with pytest.raises(ValueError, match="at least two variants"):
        BetaBinomialTest(method="exact").fit_events(
            pd.DataFrame({"arm": ["a", "a"], "y": [0, 1]}), variant_col="arm", outcome_col="y"
        )
    with pytest.raises(ValueError, match="missing values"):
        BetaBinomialTest(method="exact").fit_events(
            pd.DataFrame({"arm": ["a", "b"], "y": [0, None]}), variant_col="arm", outcome_col="y"
        )
    with pytest.raises(TypeError, match="DataFrame"):
        BetaBinomialTest(method="exact").fit_events([[0, 1]], variant_col="arm", outcome_col="y")
    with pytest.raises(ValueError, match="unknown variant"):
        BetaBinomialTest(method="exact").fit(**RESUME).lift("purple")


@pytest.mark.cuda
def test_fits_on_cuda_and_loads_on_cpu(tmp_path):
    test = BetaBinomialTest(device="cuda", seed=0).fit(**RESUME)
    assert test.device_.type == "cuda"
    test.save(tmp_path / "m")
    loaded = BetaBinomialTest.load(tmp_path / "m", device="cpu")
    pd.testing.assert_frame_equal(loaded.rate_draws(2000, seed=3), test.rate_draws(2000, seed=3))
    np.testing.assert_array_equal(loaded.posterior(2000, seed=3)["rate"], test.posterior(2000, seed=3)["rate"])


@pytest.mark.parametrize("method", ["svi", "exact"])
def test_summary_columns_agree_with_the_individual_verbs(method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        test = BetaBinomialTest(method=method, num_steps=300, average_last=50, seed=0).fit(
            [120, 138, 130], [2000, 2000, 2000]
        )
    table = test.summary(control=1)
    np.testing.assert_allclose(table["prob_best"], test.prob_best())
    np.testing.assert_allclose(table["expected_loss"], test.expected_loss())
    lift = test.lift(1)
    np.testing.assert_allclose(table.loc[lift.index, "lift_mean"], lift["mean"])
    # The control's lift over itself is zero, interval included (not a mean of 0 beside a missing interval).
    control = [c for c in table.columns if c.startswith("lift_")]
    np.testing.assert_array_equal(table.iloc[1][control].to_numpy(float), np.zeros(len(control)))


def test_draw_counts_interval_masses_and_column_names_are_checked():
    fitted = BetaBinomialTest(method="exact").fit([10, 20], [100, 100])
    for call in (
        lambda: fitted.posterior(-1),
        lambda: fitted.sample(0),
        lambda: BetaBinomialTest(num_samples=0).fit([1, 2], [10, 10]),
        lambda: BetaBinomialTest(num_particles=0).fit([1, 2], [10, 10]),
    ):
        with pytest.raises(ValueError, match=r"(num_samples|num_particles) must be an integer >= 1"):
            call()
    for prob in (-0.5, 0, 1.5):
        with pytest.raises(ValueError, match="ci_prob must be a number in"):
            fitted.lift(ci_prob=prob)
    with pytest.raises(TypeError, match="not one string"):
        BetaBinomialTest(method="exact").fit([1, 2], [10, 10], names="AB")
    events = pd.DataFrame({"arm": ["a", "b", "a", "b"], "converted": [0, 1, 1, 0]})
    with pytest.raises(ValueError, match="must be different columns"):
        BetaBinomialTest(method="exact").fit_events(events, variant_col="arm", outcome_col="arm")
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        BetaBinomialTest(learning_rate=float("inf")).fit([1, 2], [10, 10])


def test_labelled_series_are_paired_by_label_and_name_the_variants():
    successes = pd.Series({"control": 10, "treatment": 50})
    fitted = BetaBinomialTest(method="exact").fit(successes, pd.Series({"treatment": 100, "control": 200}))
    assert fitted.names_ == ["control", "treatment"]
    np.testing.assert_array_equal(fitted.trials_, [200, 100])
    with pytest.raises(ValueError, match="Series with different variants"):
        BetaBinomialTest(method="exact").fit(successes, pd.Series({"control": 100, "other": 100}))


def test_events_without_batch_size_are_summed_to_counts_and_fit_like_counts():
    rng = np.random.default_rng(3)
    events = pd.DataFrame({"arm": rng.choice(["a", "b"], size=6000), "y": rng.random(6000) < 0.1})
    from_events = BetaBinomialTest(seed=0, num_steps=300).fit_events(events, variant_col="arm", outcome_col="y")
    counts = events.groupby("arm")["y"].agg(["sum", "count"])
    from_counts = BetaBinomialTest(seed=0, num_steps=300).fit(counts["sum"], counts["count"], names=["a", "b"])
    assert from_events.data_path_ == "counts" and from_counts.data_path_ == "counts"
    # The same sufficient statistics, the same seed: the same fit, not a minibatch approximation of it.
    np.testing.assert_array_equal(from_events.posterior_alpha_, from_counts.posterior_alpha_)
    np.testing.assert_array_equal(from_events.losses_, from_counts.losses_)
    minibatched = BetaBinomialTest(seed=0, num_steps=20, batch_size=500).fit_events(
        events, variant_col="arm", outcome_col="y"
    )
    assert minibatched.data_path_ == "events"


def test_cli_abtest_csv_says_which_path_ran(tmp_path, capsys):
    from bayesgen import cli

    rng = np.random.default_rng(4)
    path = tmp_path / "events.csv"
    pd.DataFrame({"arm": rng.choice(["a", "b"], size=2000), "y": (rng.random(2000) < 0.2).astype(int)}).to_csv(
        path, index=False
    )
    assert (
        cli.main(
            [
                "abtest",
                "--csv",
                str(path),
                "--variant-col",
                "arm",
                "--outcome-col",
                "y",
                "--num-steps",
                "200",
                "--quiet",
            ]
        )
        == 0
    )
    assert "sufficient statistics" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "abtest",
                "--csv",
                str(path),
                "--variant-col",
                "arm",
                "--outcome-col",
                "y",
                "--num-steps",
                "20",
                "--batch-size",
                "100",
                "--quiet",
            ]
        )
        == 0
    )
    assert "minibatches of 100" in capsys.readouterr().out


# ------------------------------------------- exact summaries: closed forms and labelled Monte Carlo
EXACT_CASES = [
    dict(successes=[235, 157], trials=[2435, 2435], prior=(1.0, 1.0)),
    dict(successes=[0, 7, 40], trials=[30, 30, 40], prior=(0.5, 0.5)),  # HDIs touching 0 and 1
    dict(successes=[1_000_003, 998_731], trials=[10**7, 10**7], prior=(1.0, 1.0)),
]


def grid_hdi(a, b, prob, points=2001):
    """Brute force: the narrowest of many intervals [ppf(t), ppf(t + prob)] over a grid of lower tail masses t,
    then over a grid 1000 times finer around the narrowest."""
    lo, hi = 0.0, 1.0 - prob
    for _ in range(2):
        t = np.linspace(lo, hi, points)
        lower, upper = stats.beta.ppf(t, a, b), stats.beta.isf(1.0 - prob - t, a, b)
        i = int(np.argmin(upper - lower))
        step = t[1] - t[0]
        lo, hi = max(t[i] - step, 0.0), min(t[i] + step, 1.0 - prob)
    return lower[i], upper[i]


@pytest.mark.parametrize("case", EXACT_CASES, ids=["resume", "boundaries", "huge"])
def test_exact_summary_rate_figures_are_the_closed_form(case):
    test = BetaBinomialTest(method="exact", prior=case["prior"], ci_prob=0.9).fit(case["successes"], case["trials"])
    table = test.summary()
    a = case["prior"][0] + np.array(case["successes"], float)
    b = case["prior"][1] + np.array(case["trials"], float) - case["successes"]
    for column, truth in (
        ("rate_mean", stats.beta.mean(a, b)),
        ("rate_sd", stats.beta.std(a, b)),
        ("rate_90%_lower", stats.beta.ppf(0.05, a, b)),
        ("rate_90%_upper", stats.beta.ppf(0.95, a, b)),
    ):
        np.testing.assert_allclose(table[column], truth, rtol=1e-10, atol=1e-14, err_msg=column)
    np.testing.assert_allclose(table["prob_best"], prob_best_exact(a, b), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(table["expected_loss"], expected_loss_exact(a, b), rtol=1e-10, atol=1e-14)
    for k in range(len(a)):
        lower, upper = table["rate_90%_hdi_lower"].iloc[k], table["rate_90%_hdi_upper"].iloc[k]
        grid_lower, grid_upper = grid_hdi(a[k], b[k], 0.9)
        sd = stats.beta.std(a[k], b[k])
        # The fine grid's step in t is 5e-7 of the mass: its interval ends are that close in probability.
        assert lower == pytest.approx(grid_lower, abs=1e-5 * sd) and upper == pytest.approx(grid_upper, abs=1e-5 * sd)
        assert stats.beta.cdf(upper, a[k], b[k]) - stats.beta.cdf(lower, a[k], b[k]) == pytest.approx(0.9, abs=1e-9)
        assert upper - lower <= grid_upper - grid_lower + 1e-12
    assert table.attrs["monte_carlo"] == ["lift_90%_lower", "lift_90%_upper"]


def test_beta_hdi_handles_the_boundary_shapes_and_checks_its_input():
    from bayesgen.models.ab_test import beta_hdi

    lower, upper = beta_hdi([0.5, 1.0, 4.0, 1.0, 1.0, 0.5], [30.0, 5.0, 0.8, 1.0, 1.0 + 1e-9, 0.5], 0.8)
    np.testing.assert_allclose(lower[:4], [0.0, 0.0, stats.beta.isf(0.8, 4.0, 0.8), 0.1], rtol=1e-12)
    np.testing.assert_allclose(
        upper[:4], [stats.beta.ppf(0.8, 0.5, 30.0), stats.beta.ppf(0.8, 1.0, 5.0), 1.0, 0.9], rtol=1e-12
    )
    assert lower[4] == 0.0 and upper[4] == pytest.approx(0.8, abs=1e-8)  # nearly uniform, falling
    assert np.isnan(lower[5]) and np.isnan(upper[5])  # U-shaped: two pieces, no interval
    with pytest.raises(ValueError, match="must be > 0"):
        beta_hdi([0.0], [1.0], 0.9)
    with pytest.raises(ValueError, match="prob must be a number in"):
        beta_hdi([2.0], [2.0], 1.0)


def test_exact_lift_mean_and_prob_positive_are_exact():
    test = BetaBinomialTest(method="exact", num_samples=2000).fit([60, 75, 52], [400, 410, 395])
    a, b = test.exact_alpha_, test.exact_beta_
    lift = test.lift(0)
    table = test.summary(control=0)
    for k, name in ((1, "B"), (2, "C")):
        # E[rate_k / rate_A] by quadrature over both posteriors' independence: E[rate_k] * E[1 / rate_A].
        inverse = integrate.quad(lambda x: stats.beta.pdf(x, a[0], b[0]) / x, 0, 1, epsabs=1e-13)[0]
        truth = stats.beta.mean(a[k], b[k]) * inverse - 1
        assert lift.loc[name, "mean"] == pytest.approx(truth, rel=1e-9)
        assert table.loc[name, "lift_mean"] == pytest.approx(truth, rel=1e-9)
        p_pos = evan_miller_prob_b_beats_a(a[0], b[0], a[k], b[k])
        assert lift.loc[name, "prob_positive"] == pytest.approx(p_pos, abs=1e-8)
    assert lift.attrs["monte_carlo"] == ["lower", "upper"]


def lift_quantile(a_k, b_k, a_c, b_c, q):
    """Quantile of rate_k / rate_c - 1 from its CDF, P(rate_k <= (1 + l) rate_c) = ∫ f_c(y) F_k((1 + l) y) dy."""

    def cdf(lift):
        return integrate.quad(
            lambda y: stats.beta.pdf(y, a_c, b_c) * stats.beta.cdf((1 + lift) * y, a_k, b_k),
            0,
            1,
            epsabs=1e-12,
            limit=200,
        )[0]

    return optimize.brentq(lambda lift: cdf(lift) - q, -0.9, 5.0, xtol=1e-10)


def test_monte_carlo_lift_interval_is_labelled_and_its_mcse_matches_the_spread_across_seeds():
    test = BetaBinomialTest(method="exact", num_samples=4000, ci_prob=0.9).fit([60, 75], [400, 410])
    a, b = test.exact_alpha_, test.exact_beta_
    columns = ["lift_90%_lower", "lift_90%_upper"]
    mc = columns + [f"{c}_mcse" for c in columns]
    first = None
    for seed in range(3):
        test.seed = seed
        table = test.summary()
        assert table.attrs["monte_carlo"] == columns and table.attrs["num_draws"] == 4000
        first = table.drop(columns=mc) if first is None else first
        pd.testing.assert_frame_equal(table.drop(columns=mc), first)  # the exact figures do not move with the seed
        np.testing.assert_array_equal(
            table.loc["B", mc].to_numpy(float), test.lift().loc["B", ["lower", "upper", "lower_mcse", "upper_mcse"]]
        )
    runs = []
    for seed in range(60):
        test.seed = seed
        runs.append(test.lift().loc["B", ["lower", "upper", "lower_mcse", "upper_mcse"]].to_numpy(float))
    runs = np.array(runs)
    spread, stated = runs[:, :2].std(axis=0, ddof=1), runs[:, 2:].mean(axis=0)
    # 60 seeds estimate the spread to about 9 %; the stated standard error must match it.
    assert np.all((0.75 < stated / spread) & (stated / spread < 1.33)), (stated, spread)
    truth = [lift_quantile(a[1], b[1], a[0], b[0], q) for q in (0.05, 0.95)]
    assert np.all(np.abs(runs[:, :2].mean(axis=0) - truth) < 4 * spread / np.sqrt(60) + 2e-4)


def test_cli_abtest_prints_closed_form_rates_and_names_the_monte_carlo_figures(capsys):
    from bayesgen import cli

    assert cli.main(["abtest", "235/2435", "157/2435", "--method", "exact", "--quiet"]) == 0
    out = capsys.readouterr().out
    a, b = np.array([236.0, 158.0]), np.array([2201.0, 2279.0])
    for k in range(2):
        mean, lower, upper = stats.beta.mean(a[k], b[k]), *stats.beta.ppf([0.03, 0.97], a[k], b[k])
        assert f"{100 * mean:.2f}% [{100 * lower:.2f}%, {100 * upper:.2f}%]" in out
    assert "exact (conjugate Beta posterior): rate" in out
    note = re.search(r"Monte Carlo \(20,000 posterior draws\): the lift intervals; .* at most ([0-9.]+)", out)
    assert note and 0.05 < float(note.group(1)) < 0.3  # percentage points of lift


def test_svi_summary_integrates_the_fitted_betas_without_monte_carlo_error():
    # A close three-way race, where draw-based P(best) would move in the second decimal from seed to seed.
    test = BetaBinomialTest(num_steps=3000, num_samples=4000, seed=0).fit([120, 128, 131], [2000, 2000, 2000])
    table = test.summary()
    assert table.attrs["monte_carlo"] == ["lift_94%_lower", "lift_94%_upper"]
    mc = [c for c in table.columns if c.startswith("lift_94%")]
    for seed in (1, 2):
        test.seed = seed
        pd.testing.assert_frame_equal(test.summary().drop(columns=mc), table.drop(columns=mc))
    # Against a large Monte Carlo sample of the fitted guide's own Betas (independent of the quadrature).
    rng = np.random.default_rng(0)
    n = 400_000
    draws = rng.beta(test.posterior_alpha_, test.posterior_beta_, size=(n, 3))
    p_best = np.bincount(draws.argmax(axis=1), minlength=3) / n
    loss = (draws.max(axis=1, keepdims=True) - draws).mean(axis=0)
    se = np.sqrt(p_best * (1 - p_best) / n)
    assert np.all(np.abs(table["prob_best"].to_numpy() - p_best) < 4 * se + 1e-6)
    loss_se = (draws.max(axis=1, keepdims=True) - draws).std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(table["expected_loss"].to_numpy() - loss) < 4 * loss_se)
    np.testing.assert_allclose(table["rate_mean"], draws.mean(axis=0), atol=4 * draws.std(axis=0).max() / np.sqrt(n))
    np.testing.assert_allclose(table["prob_best"], test.prob_best())
    lift = test.lift(0)
    rel = draws[:, 1:] / draws[:, [0]] - 1
    np.testing.assert_allclose(lift["prob_positive"], (rel > 0).mean(axis=0), atol=0.003)
    np.testing.assert_allclose(lift["mean"], rel.mean(axis=0), atol=4 * rel.std(axis=0).max() / np.sqrt(n))
    # The SVI figures sit next to the conjugate ones: within the fit's own error.
    exact = prob_best_exact(test.exact_alpha_, test.exact_beta_)
    assert test.exact_gap_["max_mean_gap_sd"] < 0.05
    assert np.abs(table["prob_best"].to_numpy() - exact).max() < 0.01


def test_a_probability_never_prints_as_a_certainty_it_is_not(capsys):
    from bayesgen import cli
    from bayesgen.plots import format_probability

    assert format_probability(1 - 1e-9, 4) == ">0.9999" and format_probability(1e-9, 4) == "<0.0001"
    assert format_probability(1.0, 4) == "1.0000" and format_probability(0.0, 4) == "0.0000"
    assert format_probability(0.99994, 4) == "0.9999" and format_probability(0.00005, 4) == "0.0001"
    assert format_probability(0.5) == "0.500" and format_probability(0.9996) == ">0.999"
    # white beats black with probability 1 - 2e-5 (the conjugate posterior): not "1.0000".
    assert cli.main(["abtest", "235/2435", "157/2435", "--names", "white,black", "--method", "exact", "--quiet"]) == 0
    out = capsys.readouterr().out
    white = next(line for line in out.splitlines() if line.strip().startswith("white"))
    black = next(line for line in out.splitlines() if line.strip().startswith("black"))
    assert ">0.9999" in white and "<0.0001" in black and "1.0000" not in out

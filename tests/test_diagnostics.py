"""PSIS k-hat diagnostic of a guide: small for the exact posterior, large for a badly wrong guide."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesgen import BetaBinomialTest
from bayesgen.diagnostics import psis_expectation, vi_khat

Y = torch.tensor(np.random.default_rng(0).normal(2.0, 1.0, size=50), dtype=torch.float32)
# Conjugate posterior of mu with prior Normal(0, 10) and unit noise.
POST_VAR = 1.0 / (1.0 / 100.0 + len(Y))
POST_MEAN = POST_VAR * float(Y.sum())


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def make_guide(shift_sd: float, scale_factor: float):
    def guide(y):
        pyro.sample("mu", dist.Normal(POST_MEAN + shift_sd * math.sqrt(POST_VAR), scale_factor * math.sqrt(POST_VAR)))

    return guide


def test_exact_guide_is_good_and_psis_expectation_matches():
    diag = vi_khat(model, make_guide(0.0, 1.0), Y, num_samples=2000, seed=0)
    assert diag.khat < 0.5 and diag.verdict == "good"
    assert diag.ess > 1900  # weights are all equal for the exact posterior
    mean = diag.expectation(lambda d: d["mu"])
    assert abs(float(mean) - POST_MEAN) < 4 * math.sqrt(POST_VAR / 2000)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 0.3), (3.0, 1.0)], ids=["too-narrow", "shifted"])
def test_badly_wrong_guide_is_unreliable_and_warns(shift, scale):
    with pytest.warns(UserWarning, match="unreliable"):
        diag = vi_khat(model, make_guide(shift, scale), Y, num_samples=2000, seed=0)
    assert diag.khat > 0.7 and diag.verdict == "unreliable"
    with pytest.raises(ValueError, match="unreliable"):
        psis_expectation(diag.draws["mu"], diag.log_weights, khat=diag.khat)


def test_estimator_method_on_the_ab_test():
    exact = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435])
    svi = BetaBinomialTest(seed=0, num_steps=1500).fit([235, 157], [2435, 2435])
    for est in (exact, svi):
        diag = est.vi_diagnostic(num_samples=1000)
        assert diag.khat < 0.5, diag.message()
    assert "k-hat" in diag.message()


def test_needs_enough_draws_and_finite_ratios():
    with pytest.raises(ValueError, match="at least 100"):
        vi_khat(model, make_guide(0.0, 1.0), Y, num_samples=10)

    def bad_guide(y):
        pyro.sample("mu", dist.Normal(torch.tensor(float("nan")), 1.0))

    with pytest.raises((ValueError, RuntimeError)):
        vi_khat(model, bad_guide, Y, num_samples=200)

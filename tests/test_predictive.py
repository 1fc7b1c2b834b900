"""Posterior predictive checks of named statistics: they pass where the model is right and fail where it is not."""

from __future__ import annotations

import numpy as np

from bayesgen.diagnostics import predictive_check
from bayesgen.models.ab_test import BetaBinomialTest
from bayesgen.models.anomaly import MixtureAnomalyDetector
from bayesgen.models.gaussian_generator import GaussianGenerator


def _correlated(seed=0, n=300):
    rng = np.random.default_rng(seed)
    cov = 0.9 * np.ones((4, 4)) + 0.1 * np.eye(4)
    X = np.concatenate([rng.multivariate_normal(np.zeros(4), cov, n), rng.multivariate_normal(np.full(4, 3.0), cov, n)])
    return X, np.repeat([0, 1], n)


def test_ab_counts_per_variant_are_checked_and_pass_under_the_exact_posterior():
    test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435], names=["white", "black"])
    check = predictive_check(test, num_samples=300, seed=0)
    assert list(check.table.index) == ["successes[white]", "successes[black]"]
    np.testing.assert_array_equal(check.table["observed"], [235, 157])
    assert check.passed and check.table["p_value"].min() > 0.05


def test_generator_check_fails_a_diagonal_covariance_on_correlated_features_and_passes_the_full_one():
    X, y = _correlated()
    wrong = predictive_check(GaussianGenerator(covariance="diag", method="exact").fit(X, y), num_samples=200)
    assert not wrong.passed
    assert set(wrong.table.index[~wrong.table["ok"]]) == {"sd of row totals[0]", "sd of row totals[1]"}
    assert "does not reproduce" in wrong.message()
    right = predictive_check(GaussianGenerator(covariance="full", method="exact").fit(X, y), num_samples=200)
    assert right.passed, right.table[~right.table["ok"]]
    fig = wrong.plot()
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_legend() is not None


def test_anomaly_check_includes_mahalanobis_distances_and_flags_a_missed_cluster():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(0, 1, (300, 2)) + [8, 8]])
    det = MixtureAnomalyDetector(num_components=2, covariance="diag", num_steps=400, seed=0).fit(X)
    check = predictive_check(det, num_samples=100, seed=0)
    assert {"mahalanobis²[median]", "mahalanobis²[95%]"} <= set(check.table.index)
    assert check.passed, check.table[~check.table["ok"]]
    # One normal component and a fixed Student-t anomaly component cannot hold the second cluster: the
    # replicates lie much farther from the data's centre than the rows do.
    one = MixtureAnomalyDetector(num_components=1, covariance="diag", anomaly="student_t", num_steps=400,
                                 seed=0).fit(X)
    missed = predictive_check(one, num_samples=100, seed=0)
    assert not missed.passed
    assert set(missed.table.index[~missed.table["ok"]]) == {"mahalanobis²[median]", "mahalanobis²[95%]"}
    assert "does not reproduce" in missed.message() and "mahalanobis²" in missed.message()

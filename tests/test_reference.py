"""Every global site of every shipped spec's fit against its exact posterior.

The default tier fits the specs that are quick as shipped; the `slow` tier fits every spec under
``models/`` as shipped. A check that cannot say "no" is no check: a fit stopped early must disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bayesgen.diagnostics import dirichlet_moments, reference_check
from bayesgen.models.ab_test import BetaBinomialTest
from bayesgen.models.gaussian_generator import GaussianGenerator
from bayesgen.runs.spec import fit_spec, load_spec

SPECS = Path(__file__).resolve().parents[1] / "models"


def _fit_spec(name: str):
    spec = load_spec(SPECS / f"{name}.toml")
    return fit_spec(spec, "cpu").estimator


@pytest.mark.parametrize("name", ["ab_resume_callbacks", "gaussian_digits"])
def test_shipped_spec_matches_its_exact_posterior(name):
    est = _fit_spec(name)
    check = reference_check(est, num_samples=2000, seed=0)
    assert len(check.table), "the spec has sites with a closed form; they must be checked"
    assert check.agree, check.table[~check.table["ok"]]


def test_generator_class_weights_are_the_dirichlet_posterior_not_the_prior():
    # 20 rows per class: the exact weights posterior has sd ≈ 0.027; the Dirichlet(1, 1, 1) prior's is 0.24.
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(c, 1.0, size=(20, 3)) for c in range(3)])
    y = np.repeat(np.arange(3), 20)
    gen = GaussianGenerator(covariance="lowrank", rank=1, num_steps=50, seed=0).fit(X, y)
    check = reference_check(gen, num_samples=2000, seed=0)
    ref_mean, ref_sd = dirichlet_moments(np.full(3, 21.0))
    np.testing.assert_allclose(check.table["ref_sd"], ref_sd)
    assert check.agree, check.table
    np.testing.assert_allclose(check.table["svi_sd"], ref_sd, rtol=0.15)


@pytest.mark.parametrize("init", ["pca", "prior"])
def test_conjugate_generator_sites_agree_after_svi(init):
    # "pca" (the default) starts at the exact posterior; "prior" starts every class at the pooled statistics.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal([0, 0], 1.0, size=(150, 2)), rng.normal([3, -1], 0.5, size=(100, 2))])
    y = np.repeat([0, 1], [150, 100])
    # From the prior, the precisions' guide sds come down slowly: 2,500 steps at lr 0.1 with the last 500
    # averaged end within half the allowance over seeds 0-2.
    settings = {"num_steps": 2500, "learning_rate": 0.1, "average_last": 500} if init == "prior" else {"num_steps": 300}
    gen = GaussianGenerator(covariance="diag", init=init, seed=0, **{"learning_rate": 0.05, **settings}).fit(X, y)
    check = reference_check(gen, num_samples=2000, seed=0)
    assert set(check.table["site"]) == {"weights", "loc", "precision"}
    assert check.agree, check.table[~check.table["ok"]]


def test_the_check_says_no_to_a_fit_stopped_early():
    test = BetaBinomialTest(num_steps=10, seed=0).fit([235, 157], [2435, 2435])
    check = reference_check(test, num_samples=1000, seed=0)
    assert not check.agree
    assert "DISAGREE" in check.message()
    a, b = 1 + np.array([235, 157]), 1 + np.array([2200, 2278])
    np.testing.assert_allclose(check.table["ref_mean"], stats.beta.mean(a, b))
    np.testing.assert_allclose(check.table["ref_sd"], stats.beta.std(a, b))


def test_sites_without_a_closed_form_are_named_with_a_reason():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, size=(30, 3)) for c in range(2)])
    gen = GaussianGenerator(covariance="lowrank", rank=1, num_steps=20, seed=0).fit(X, np.repeat([0, 1], 30))
    check = reference_check(gen, num_samples=200, seed=0)
    assert set(check.unchecked) == {"loc", "cov_factor", "cov_diag"}
    assert "rotation" in check.unchecked["cov_factor"]
    assert "no closed form for cov_diag, cov_factor, loc" in check.message()
    assert "SVI vs exact posterior of 1 global site:" in check.message()
    # The covariance's intervals are approximate (measured against NUTS on a few pixels), and the report's box
    # says why; the locations are exact given the covariance.
    assert all("approximate" in check.unchecked[site] for site in ("cov_diag", "cov_factor"))
    assert "exact conditional posterior" in check.unchecked["loc"]
    from bayesgen.diagnostics.report import _reference_part
    from bayesgen.diagnostics.verdict import _reference_verdict

    verdict = _reference_verdict(_reference_part(gen, num_samples=200, seed=0))
    # The class weights agree; the other three sites have no exact posterior, so the verdict is a caution (never a
    # green box that says its intervals are approximate), and its label names what was compared.
    assert verdict.status == "caution" and verdict.label == "exact posterior matched (weights); 3 sites without one"
    assert "cov_diag: no closed form" in verdict.advice and "approximate" in verdict.advice
    # The anomaly detector's sites say what the guide misses against NUTS.
    from bayesgen.models.anomaly import MixtureAnomalyDetector

    det = MixtureAnomalyDetector(num_components=2, num_steps=20, seed=0).fit(X)
    reasons = reference_check(det, num_samples=200, seed=0).unchecked
    assert set(reasons) == {"anomaly_fraction", "weights", "loc", "scale", "corr_tril", "anomaly_loc", "anomaly_excess"}
    assert all("nuts_check" in why for why in reasons.values())
    assert "matched NUTS" in reasons["loc"] and "anomaly_excess near 0" in reasons["anomaly_fraction"]
    # Sites that share a reason are named together and the reason is said once.
    advice = _reference_verdict(_reference_part(det, num_samples=200, seed=0)).advice
    assert advice.count(reasons["loc"]) == 1 and advice.startswith("anomaly_excess, anomaly_fraction, anomaly_loc")
    det = MixtureAnomalyDetector(init="kmeans", num_steps=20, seed=0).fit(X)
    reasons = reference_check(det, num_samples=200, seed=0).unchecked
    assert "understates the posterior sd" in reasons["loc"] and "anomaly_excess near 0" in reasons["anomaly_fraction"]


def test_tables_name_parameters_as_the_arviz_summary_does():
    from bayesgen.arviz import summary
    from bayesgen.diagnostics import psis_summary

    test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435], names=["white", "black"])
    names = list(summary(test.to_arviz(200)).index)
    assert names == ["rate[white]", "rate[black]"]
    assert list(reference_check(test, num_samples=200).table.index) == names
    assert list(psis_summary(test.vi_diagnostic(num_samples=200), estimator=test).index) == names
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, size=(30, 2)) for c in range(2)])
    gen = GaussianGenerator(covariance="diag", num_steps=20, seed=0).fit(X, np.repeat(["a", "b"], 30))
    table = reference_check(gen, num_samples=200).table
    tree_names = set(summary(gen.to_arviz(100)).index)
    assert set(table.index) <= tree_names and "loc[b, x1]" in table.index


def test_an_unreliable_joint_khat_gets_advice_the_model_can_follow(monkeypatch):
    from bayesgen.diagnostics.report import _khat_advice, _psis_parts
    from bayesgen.diagnostics.verdict import _khat_verdict
    from bayesgen.models.anomaly import MixtureAnomalyDetector

    # A model NUTS is offered for keeps the generic advice (NUTS through diagnose); past the limit NUTS would be
    # refused, so the advice says so and names a smaller fit instead.
    ab = BetaBinomialTest(method="svi", num_steps=200, seed=0).fit([5, 3], [10, 10])
    assert _khat_advice(ab) is None
    monkeypatch.setattr(BetaBinomialTest, "_nuts_max_latents", 1)
    advice = _khat_advice(ab)
    size = ab._latent_size()
    assert f"at most 1 latent numbers and this one has {size}" in advice and "--nuts" not in advice
    monkeypatch.undo()
    # The low-rank generator counts its latent numbers and points to the site-by-site reference check.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, size=(30, 3)) for c in range(2)])
    gen = GaussianGenerator(covariance="lowrank", rank=1, num_steps=20, seed=0).fit(X, np.repeat([0, 1], 30))
    size = gen._latent_size()
    advice = _khat_advice(gen)
    assert f"all {size:,} latent numbers" in advice and "reference check" in advice and "--nuts" not in advice
    assert _khat_advice(GaussianGenerator(covariance="diag", method="exact").fit(X, np.repeat([0, 1], 30))) is None
    det = MixtureAnomalyDetector(num_components=1, num_steps=20, seed=0).fit(X)
    assert "copies a normal one" in _khat_advice(det) and "nuts_check()" in _khat_advice(det)
    # The verdict shows the part's advice when there is one, and the generic one otherwise.
    part = {"khat": 3.0, "verdict": "unreliable", "ess": 2.0, "num_samples": 1000, "message": "m", "advice": "do X"}
    assert _khat_verdict(part).advice == "do X" and _khat_verdict(part).status == "fail"
    del part["advice"]
    assert "bayesgen diagnose RUN_DIR --nuts" in _khat_verdict(part).advice
    # End to end: the 20-step fit's joint k-hat is unreliable and its report part carries the advice; the same
    # model run to 2,000 steps is not, and gets none.
    parts, _ = _psis_parts(gen, num_samples=200, seed=0, amortised=False)
    assert parts["psis"]["verdict"] == "unreliable" and parts["psis"]["advice"] == advice
    longer = GaussianGenerator(covariance="lowrank", rank=1, num_steps=2000, seed=0).fit(X, np.repeat([0, 1], 30))
    parts, _ = _psis_parts(longer, num_samples=200, seed=0, amortised=False)
    assert parts["psis"]["verdict"] != "unreliable" and "advice" not in parts["psis"]

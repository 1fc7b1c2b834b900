"""PSIS k-hat diagnostic of a guide: small for the exact posterior, large for a badly wrong guide."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesgen import BetaBinomialTest
from bayesgen.diagnostics import psis_expectation, psis_summary, vi_khat, vi_khat_rows

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


def local_model(x):
    with pyro.plate("row", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def make_local_guide(scale_factor: float, wrong_rows: int = 0):
    # Exact posterior of each z_i: Normal(x_i / 2, sqrt(1/2)); the first `wrong_rows` rows get a narrow guide.
    def guide(x):
        scale = torch.full_like(x, math.sqrt(0.5))
        scale[:wrong_rows] *= scale_factor
        with pyro.plate("row", len(x)):
            pyro.sample("z", dist.Normal(x / 2, scale))

    return guide


def test_per_row_khat_finds_the_rows_an_amortised_guide_gets_wrong():
    x = torch.tensor(np.random.default_rng(1).normal(0.0, 1.4, size=40), dtype=torch.float32)
    exact = vi_khat_rows(local_model, make_local_guide(1.0), x, plate="row", num_samples=400, seed=0)
    assert exact.khat.shape == (40,) and exact.shares["good"] == 1.0 and exact.verdict == "good"
    assert "unreliable" not in exact.message()  # a good verdict is said without the word (a report shows it green)
    with pytest.warns(UserWarning, match="unreliable"):
        # A guide 5x too narrow: the ratios' tail has shape 1 - 0.2² ≈ 0.96 (Yao et al. 2018).
        mixed = vi_khat_rows(
            local_model, make_local_guide(0.2, wrong_rows=10), x, plate="row", num_samples=1000, seed=0
        )
    # k-hat from 1000 draws of a heavy tail scatters (and is biased low): test the wrong rows' median.
    assert np.median(mixed.khat[:10]) > 0.7 and (mixed.khat[10:] < 0.5).all()
    assert mixed.verdict == "unreliable" and 0.15 <= mixed.shares["unreliable"] <= 0.25
    # The joint k-hat over all rows cannot say which rows are wrong, and a global latent is refused.
    with pytest.raises(ValueError, match="outside the plate 'obs'"):
        vi_khat_rows(model, make_guide(0.0, 1.0), Y, plate="obs", num_samples=200)


def test_psis_corrected_means_move_a_slightly_wrong_guide_toward_the_posterior():
    diag = vi_khat(model, make_guide(0.4, 1.2), Y, num_samples=4000, seed=0, warn=False)
    assert diag.khat <= 0.7
    table = psis_summary(diag)
    row = table.loc["mu"]
    sd = math.sqrt(POST_VAR)
    assert abs(row["guide_mean"] - POST_MEAN) > 0.3 * sd  # the guide is off by 0.4 sd
    assert abs(row["psis_mean"] - POST_MEAN) < 0.1 * sd  # the corrected mean is not
    assert abs(row["psis_sd"] / sd - 1) < 0.1


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


def test_convergence_report_reads_the_loss_trace():
    from bayesgen.diagnostics import convergence_report

    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    falling = 1000 * np.exp(-steps / 3000) + rng.normal(0, 1, 2000)
    flat = 100 + rng.normal(0, 5, 2000)
    assert convergence_report(falling, max_steps=2000)["verdict"] == "still improving"
    assert convergence_report(falling, max_steps=2000)["stopped_by_step_limit"] is True
    assert convergence_report(flat)["verdict"] == "converged"
    assert convergence_report(falling, converged=True)["verdict"] == "converged"
    assert convergence_report(flat, converged=False)["verdict"] in ("still improving", "getting worse")
    assert convergence_report(flat[:3])["verdict"] == "too short"
    assert convergence_report(100 + steps * 0.01)["verdict"] == "getting worse"
    broken = np.concatenate([falling[:300], np.full(300, np.nan)])
    assert convergence_report(broken)["verdict"] == "not finite"
    assert "NaN" in convergence_report(broken)["message"]


def test_runner_and_report_give_one_verdict_on_a_slow_drift():
    from bayesgen.diagnostics import convergence_report
    from bayesgen.infer import ConvergenceCheck

    # 0.4 nats per window of 100 steps under noise sd 2 (window mean se 0.2): each change between neighbouring
    # windows hides in the noise, but the last 300 steps fell 1.2 nats, 4 standard errors.
    y = 100 - 0.004 * np.arange(1200) + np.random.default_rng(0).normal(0, 2, 1200)
    check = ConvergenceCheck()
    report = convergence_report(y, max_steps=1200, check=check)
    assert check.assess(y).verdict == report["verdict"] == "still improving"
    assert not check.assess(y).converged and check.converged_at(y) is None
    assert report["last_change"] == pytest.approx(-1.2, abs=4 * report["last_change_se"])
    # One rule: the default report (window 100) agrees with the default check on the same history.
    assert convergence_report(y)["verdict"] == "still improving"
    flat = 100 + np.random.default_rng(1).normal(0, 2, 1200)
    assert check.assess(flat).verdict == convergence_report(flat, check=check)["verdict"] == "converged"


def test_run_folder_gets_diagnostics_and_the_cli_recomputes_them(tmp_path, capsys):
    import json
    from pathlib import Path

    from bayesgen.runs.folder import run_spec

    root = Path(__file__).resolve().parents[1]
    spec_path = root / "models" / "ab_resume_callbacks.toml"
    from bayesgen.runs.spec import load_spec

    spec = load_spec(spec_path)
    spec["inference"]["num_steps"] = 400  # short: the verdict may say "still improving", which is the point
    spec["report"]["diagnostic_samples"] = 300
    out = run_spec(spec, tmp_path / "run")
    report = json.loads((out.folder / "diagnostics.json").read_text())
    assert report["psis"]["verdict"] in ("good", "usable") and report["convergence"]["steps"] == 400
    assert (out.folder / "plots" / "diagnostics_loss.png").is_file()
    # PSIS-corrected means in the run folder, checked against the closed-form Beta posterior.
    psis = pd.read_csv(out.folder / "psis_summary.csv", index_col=0)
    est = out.estimator
    a, b = est.prior[0] + est.successes_, est.prior[1] + est.trials_ - est.successes_
    exact_mean, exact_sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert len(psis) == len(exact_mean)
    assert np.all(np.abs(psis["psis_mean"].to_numpy() - exact_mean) < 0.15 * exact_sd)
    (out.folder / "diagnostics.json").unlink()
    from bayesgen.cli import main  # the command as a user runs it, in this process (a subprocess adds only imports)

    capsys.readouterr()
    code = main(
        [
            "diagnose",
            str(out.folder),
            "--num-samples",
            "300",
            "--nuts",
            "--nuts-samples",
            "300",
            "--nuts-warmup",
            "200",
            "--sbc",
            "8",
            "--sbc-steps",
            "200",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "PSIS k-hat" in printed.out and "NUTS vs SVI" in printed.out and "SBC over 8" in printed.out
    report = json.loads((out.folder / "diagnostics.json").read_text())
    assert report["nuts"]["max_r_hat"] < 1.05 and report["nuts"]["divergences"] == 0 and report["nuts"]["reliable"]
    nuts = pd.read_csv(out.folder / "nuts_comparison.csv", index_col=0)
    assert np.all(np.abs(nuts["nuts_mean"].to_numpy() - exact_mean) < 0.3 * exact_sd)
    assert len(pd.read_csv(out.folder / "sbc_ranks.csv")) == 8 and (out.folder / "plots" / "sbc_ecdf.png").is_file()
    assert (out.folder / "nuts.nc").is_file()
    assert main(["diagnose", str(tmp_path)]) == 2 and "not a run folder" in capsys.readouterr().err


def test_nuts_and_svi_agree_on_the_ab_test_within_monte_carlo_error():
    test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435])
    cmp = test.nuts_check(num_samples=500, num_warmup=300, seed=1)
    table = cmp.table
    assert cmp.divergences == 0 and (table["nuts_r_hat"] < 1.02).all()
    tol = 4 * np.sqrt(table["nuts_mcse_mean"] ** 2 + table["svi_sd"] ** 2 / 4000)
    assert ((table["svi_mean"] - table["nuts_mean"]).abs() < tol).all(), table
    assert cmp.agree and "agree" in cmp.message()
    assert cmp.tree.posterior["rate"].dims[:2] == ("chain", "draw") and cmp.tree.posterior.sizes["chain"] == 2


def test_nuts_flags_a_guide_that_is_too_narrow():
    from bayesgen.diagnostics import nuts_compare

    with pytest.warns(UserWarning, match="DISAGREE"):
        cmp = nuts_compare(model, make_guide(0.0, 0.3), Y, num_samples=300, num_warmup=200, num_chains=2, seed=0)
    assert not cmp.agree and cmp.table["sd_ratio"].iloc[0] < 0.5


# Twelve independent means, each with a conjugate Normal posterior: the exact guide is known.
Y12 = torch.tensor(np.random.default_rng(3).normal(np.arange(12.0), 1.0, size=(20, 12)), dtype=torch.float32)
POST12_VAR = 1.0 / (1.0 / 100.0 + len(Y12))
POST12_MEAN = POST12_VAR * Y12.sum(0)


def model12(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(12), 10.0).to_event(1))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def make_guide12(scale_factor: float):
    def guide(y):
        pyro.sample("mu", dist.Normal(POST12_MEAN, scale_factor * math.sqrt(POST12_VAR)).to_event(1))

    return guide


def test_nuts_agreement_allows_for_monte_carlo_error_but_not_for_a_narrow_guide():
    from bayesgen.diagnostics import nuts_compare

    # The exact posterior as the guide: every difference is Monte Carlo error, which the rule must allow
    # (the largest of 12 |smd| is 0.08 here against a bare tolerance of 0.1). 2 x 300 draws, so that NUTS
    # itself is reliable by a margin (R-hat 1.01-1.02 and bulk ESS 590-870 over seeds 0-2); with 2 x 150 one
    # machine's chains (other floating-point rounding) crossed R-hat 1.05.
    exact = nuts_compare(model12, make_guide12(1.0), Y12, num_samples=300, num_warmup=200, seed=0, warn=False)
    table = exact.table
    assert exact.agree, table[["smd", "smd_allowed", "sd_ratio", "sd_ratio_allowed"]]
    assert (table["smd_allowed"] > exact.tolerance).all() and (table["smd_allowed"] < 0.6).all()
    # The allowance is not so wide that a guide 0.6x too narrow passes.
    narrow = nuts_compare(model12, make_guide12(0.6), Y12, num_samples=150, num_warmup=150, seed=0, warn=False)
    assert not narrow.agree and (narrow.table["sd_ratio"] < 0.75).all()
    # Too few NUTS draws: the allowance balloons, so the comparison says NUTS itself is not to be trusted.
    with pytest.warns(UserWarning, match="NUTS itself is unreliable"):
        short = nuts_compare(model12, make_guide12(1.0), Y12, num_samples=20, num_warmup=20, seed=0)
    assert exact.reliable and not short.reliable


def test_nuts_reliability_rule():
    import pandas as pd

    from bayesgen.diagnostics import NUTSComparison

    def reliable(r_hat, ess, divergences=0):
        return NUTSComparison(pd.DataFrame({"nuts_r_hat": r_hat, "nuts_ess_bulk": ess}), divergences, None).reliable

    assert reliable([1.00, 1.05], [100.0, 800.0])
    assert not reliable([1.00, 1.051], [400.0, 400.0])  # one R-hat over 1.05
    assert not reliable([1.00, 1.00], [99.0, 400.0])  # one bulk ESS under 100
    assert not reliable([1.00, 1.00], [400.0, 400.0], divergences=1)
    assert not reliable([1.00, float("nan")], [400.0, 400.0])  # unknown counts as unreliable
    assert not reliable([1.00, 1.00], [400.0, float("nan")])


def test_nuts_advice_follows_the_cause():
    import pandas as pd

    from bayesgen.diagnostics import NUTSComparison, check_verdicts

    def comparison(r_hat, ess, divergences=0, switched=()):
        table = pd.DataFrame(
            {"smd": [0.01, 0.02], "sd_ratio": [1.0, 1.01], "nuts_r_hat": r_hat, "nuts_ess_bulk": ess},
            index=["locs[0]", "locs[1]"],
        )
        return NUTSComparison(table=table, divergences=divergences, tree=None, label_switching=list(switched))

    one_divergence = comparison([1.0, 1.0], [800.0, 800.0], divergences=1)
    assert one_divergence.cause == "divergences"
    assert "target_accept_prob" in one_divergence.message() and "run it longer" not in one_divergence.message()
    switched = comparison([1.9, 1.9], [5.0, 5.0], switched=["locs"])
    assert switched.cause == "label switching"
    assert "relabel=" in switched.message() and "'locs'" in switched.message()
    assert "run it longer" not in switched.message()
    short = comparison([1.0, 1.0], [40.0, 800.0])
    assert short.cause == "mixing" and "run it longer" in short.message()
    assert comparison([1.0, 1.0], [800.0, 800.0]).cause is None
    for cmp, words in [(one_divergence, "target_accept_prob"), (switched, "relabel="), (short, "--nuts-samples")]:
        part = {
            "agree": True,
            "reliable": False,
            "divergences": cmp.divergences,
            "cause": cmp.cause,
            "message": cmp.message(),
        }
        assert words in check_verdicts({"nuts": part})["nuts"].advice


def test_label_switching_between_chains_is_told_from_chains_that_did_not_mix():
    from bayesgen.diagnostics import label_switched_sites

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, size=(2, 300, 2))
    swapped = np.stack([[-3.0, 3.0], [3.0, -3.0]])[:, None, :] + noise  # chain 1 labels the components the other way
    apart = np.stack([[-3.0, 3.0], [-2.0, 3.0]])[:, None, :] + noise  # chain 1 sits elsewhere: no relabelling helps
    scalar = rng.normal(size=(2, 300))
    assert label_switched_sites({"locs": swapped, "sigma": scalar}) == ["locs"]
    assert label_switched_sites({"locs": apart}) == []


def test_nuts_compare_relabels_each_chain_and_the_guide_draws_and_shows_progress(capsys):
    from bayesgen.diagnostics import nuts_compare

    seen = []

    def relabel(draws):
        seen.append({k: v.shape for k, v in draws.items()})
        return draws

    cmp = nuts_compare(
        model,
        make_guide(0.0, 1.0),
        Y,
        num_samples=30,
        num_warmup=20,
        num_chains=2,
        svi_samples=50,
        seed=0,
        warn=False,
        relabel=relabel,
        progress=True,
    )
    assert seen == [{"mu": (30,)}, {"mu": (30,)}, {"mu": (50,)}]
    assert cmp.tree.posterior.sizes["chain"] == 2
    err = capsys.readouterr().err
    assert "NUTS" in err and "100/100" in err  # two chains of 20 warm-up steps and 30 draws
    with pytest.raises(ValueError, match="relabel must return the same sites"):
        nuts_compare(
            model,
            make_guide(0.0, 1.0),
            Y,
            num_samples=5,
            num_warmup=5,
            num_chains=1,
            warn=False,
            relabel=lambda d: {},
            progress=False,
        )


def _sbc_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _sbc_good_guide(y):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _sbc_narrow_guide(y):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 0.3 / math.sqrt(len(y))))  # 0.3 x the posterior sd


SBC_FIT = {"lr_schedule": "cosine", "average_last": 50}


def test_sbc_ranks_are_uniform_for_a_calibrated_guide_and_not_for_a_narrow_one():
    from bayesgen.diagnostics import sbc

    y = torch.randn(20)
    good = sbc(
        _sbc_model, _sbc_good_guide, y, num_simulations=60, num_steps=100, learning_rate=0.1, fit_kwargs=SBC_FIT, seed=0
    )
    assert good.calibrated, good.message()
    assert good.ranks["mu"].between(0, 99).all() and len(good.ranks) == 60
    narrow = sbc(
        _sbc_model,
        _sbc_narrow_guide,
        y,
        num_simulations=30,
        num_steps=100,
        learning_rate=0.1,
        fit_kwargs=SBC_FIT,
        seed=0,
    )
    assert not narrow.calibrated and narrow.p_values["mu"] < 1e-4
    # Too narrow: ranks pile up at both ends.
    ends = ((narrow.ranks["mu"] < 10) | (narrow.ranks["mu"] > 89)).mean()
    assert ends > 0.5
    assert narrow.plot().axes


@pytest.mark.slow
def test_sbc_of_the_ab_test_is_calibrated():
    from bayesgen.diagnostics import sbc
    from bayesgen.models.ab_test import guide as ab_guide
    from bayesgen.models.ab_test import model as ab_model

    trials = torch.tensor([500.0, 500.0])
    result = sbc(
        ab_model,
        ab_guide,
        trials,
        torch.tensor([50.0, 40.0]),
        num_simulations=100,
        num_steps=800,
        learning_rate=0.3,
        fit_kwargs={"lr_schedule": "cosine", "average_last": 200, "num_particles": 8, "vectorize_particles": True},
        seed=0,
    )
    assert result.calibrated, result.message()


def test_predictive_check_plots_for_a_fitted_model(tmp_path):
    from bayesgen.diagnostics import plot_predictive_checks

    test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435])
    written = plot_predictive_checks(test, tmp_path, num_samples=60)
    assert written == {"ppc_prior_predictive_successes.png": "ok", "ppc_posterior_predictive_successes.png": "ok"}
    assert all((tmp_path / name).stat().st_size > 5000 for name in written)


def test_amortised_model_gets_per_row_khat_and_refuses_nuts_with_a_reason(tmp_path):
    import json

    from bayesgen import VAE
    from bayesgen.datasets import load_digits
    from bayesgen.diagnostics import write_diagnostics

    X, _ = load_digits()
    vae = VAE(latent_dim=4, num_epochs=5, seed=0).fit(X[:600])
    report = write_diagnostics(vae, tmp_path, num_samples=300, nuts=True, sbc_simulations=5)
    rows = report["psis_rows"]
    assert rows["num_rows"] > 10 and rows["verdict"] in ("good", "usable"), rows
    # The joint k-hat over many rows is high whatever the guide; it is reported, said not to be a verdict, and
    # raises no warning.
    joint = report["psis"]["message"]
    assert "is not a verdict" in joint and "the per-row k-hat is the check" in joint
    from bayesgen.diagnostics import check_verdicts

    assert check_verdicts(report)["psis"].status == "info" and "unreliable" not in joint
    assert not any("joint" in w for w in report["warnings"])
    # What the fit gives, and how far each row's posterior holds, in plain sentences.
    notes = report["amortised"]
    assert notes["point_estimates"].startswith("The decoder's weights (the generative model) are point estimates")
    assert f"for {rows['unreliable']:.0%} of the {rows['num_rows']} rows checked" in notes["local_posterior"]
    assert notes["message"] == " ".join([notes["point_estimates"], notes["local_posterior"], notes["advice"]])
    assert "amortised" in report["nuts"]["error"] and "amortised" in report["sbc"]["error"]
    assert json.loads((tmp_path / "diagnostics.json").read_text())["psis_rows"]["verdict"] == rows["verdict"]


def test_topic_model_diagnostics_say_what_is_reliable_and_what_to_do():
    from bayesgen.diagnostics import diagnose
    from bayesgen.models.topic import ProdLDA

    # Long documents and a short fit: the encoder alone misses most documents' posteriors.
    rng = np.random.default_rng(2)
    beta = rng.dirichlet(np.full(40, 0.1), size=4)
    theta = rng.dirichlet(np.full(4, 0.3), size=120)
    X = np.stack([rng.multinomial(400, t @ beta) for t in theta])
    lda = ProdLDA(num_topics=4, hidden_dim=32, num_epochs=10, batch_size=32, refine_steps=0, seed=0).fit(X)
    plain = diagnose(lda, num_samples=200)
    assert plain["psis_rows"]["verdict"] == "unreliable", plain["psis_rows"]
    notes = plain["amortised"]
    assert notes["point_estimates"].startswith("The topics (the decoder's topic-word weights) are point estimates")
    assert "not refined: refine_steps = 0" in notes["local_posterior"]
    share = f"{plain['psis_rows']['unreliable']:.0%} of the {plain['psis_rows']['num_rows']} documents checked"
    assert share in notes["local_posterior"]
    # The warning is the sentence on the documents' posteriors and what to do about it.
    assert any(notes["advice"] in w for w in plain["warnings"]), plain["warnings"]
    assert notes["advice"].startswith("Set refine_steps")
    lda.refine_steps = 100
    refined = diagnose(lda, num_samples=200)
    assert "refined for 100 steps on each document" in refined["amortised"]["local_posterior"]
    assert refined["psis_rows"]["unreliable"] < plain["psis_rows"]["unreliable"]
    # What a refined fit that still misses documents is told: why (the refined guide still misses part of their
    # posteriors) and what to do (read their means).
    advice = lda._local_advice(reliable=False)
    assert "misses part of the posterior" in advice and "use the proportions' means" in advice


@pytest.mark.slow
@pytest.mark.parametrize("which", ["generator", "anomaly"])
def test_nuts_cross_check_of_the_small_generator_and_anomaly_models(which):
    """NUTS on the same model as SVI for a generator on two features and a mixture on a small table."""
    if which == "generator":
        from sklearn.datasets import load_iris

        from bayesgen.models.gaussian_generator import GaussianGenerator

        X, y = load_iris(return_X_y=True)
        est = GaussianGenerator(covariance="diag", seed=0).fit(X[:, :2], y)
    else:
        from bayesgen.models.anomaly import MixtureAnomalyDetector

        rng = np.random.default_rng(0)
        X = np.vstack([rng.normal(size=(120, 2)), rng.normal(scale=6.0, size=(8, 2))])
        est = MixtureAnomalyDetector(num_components=1, covariance="diag", seed=0).fit(X)
    cmp = est.nuts_check(num_samples=400, num_warmup=300, seed=0)
    assert cmp.divergences <= 2 and (cmp.table["nuts_r_hat"] < 1.05).all(), cmp.table
    assert cmp.agree, cmp.table[["smd", "smd_allowed", "sd_ratio", "sd_ratio_allowed"]]
    assert cmp.tree.posterior.sizes["chain"] == 2


def test_nuts_comparison_counts_undefined_r_hat_and_ess_as_the_worst_case():
    import pandas as pd

    from bayesgen.diagnostics import NUTSComparison

    table = pd.DataFrame(
        {"smd": [0.01, 0.02], "sd_ratio": [1.0, 1.01], "nuts_r_hat": [1.001, np.nan], "nuts_ess_bulk": [800.0, np.nan]},
        index=["a", "b"],
    )
    cmp = NUTSComparison(table=table, divergences=0, tree=None)
    # pandas' min/max skip NaN, which printed "min bulk ESS 800" for a run judged unreliable
    assert cmp.min_ess_bulk == 0.0 and cmp.max_r_hat == float("inf") and not cmp.reliable
    assert "min bulk ESS 0" in cmp.message() and "unreliable" in cmp.message()
    table.loc["b", "smd"] = np.nan
    assert "difference| nan" in NUTSComparison(table=table, divergences=0, tree=None, agree=False).message()


def test_verdicts_colour_each_check_by_one_rule():
    from bayesgen.diagnostics import check_verdicts, overall_verdicts

    good = {
        "convergence": {"verdict": "converged", "message": "converged"},
        "psis": {"khat": 0.2, "verdict": "good", "ess": 900.0, "num_samples": 1000, "message": "k-hat 0.2"},
        "psis_means": {"largest_shift_sd": 0.01, "message": "means move 0.01 sd"},
        "reference": {"agree": True, "checked": ["rate"], "message": "agree"},
        "predictive": {"passed": True, "statistics": 2, "failed": [], "message": "ok"},
    }
    checks = check_verdicts(good)
    assert list(checks) == ["convergence", "psis", "psis_means", "reference", "predictive"]
    assert {k: v.status for k, v in checks.items()} == {
        "convergence": "ok",
        "psis": "ok",
        "psis_means": "info",
        "reference": "ok",
        "predictive": "ok",
    }
    assert all(v.advice == "" for v in checks.values())
    assert {k: v.status for k, v in overall_verdicts(good).items()} == {
        "optimisation": "ok",
        "posterior": "ok",
        "predictive": "ok",
    }
    cases = [  # (check, part, status): cautions and failures, each with one sentence of why and what to do
        ("convergence", {"verdict": "still improving", "message": "m"}, "caution"),
        ("convergence", {"verdict": "getting worse", "message": "m"}, "caution"),
        ("convergence", {"verdict": "not finite", "message": "m"}, "fail"),
        ("psis", {"khat": 0.6, "verdict": "usable", "ess": 900.0, "num_samples": 1000, "message": "m"}, "caution"),
        ("psis", {"khat": 0.2, "verdict": "good", "ess": 100.0, "num_samples": 1000, "message": "m"}, "caution"),
        ("psis", {"khat": 1.4, "verdict": "unreliable", "ess": 3.0, "num_samples": 1000, "message": "m"}, "fail"),
        ("psis_rows", {"verdict": "unreliable", "unreliable": 0.4, "message": "m"}, "fail"),
        ("reference", {"agree": False, "checked": ["rate"], "message": "m"}, "fail"),
        ("predictive", {"passed": False, "statistics": 5, "failed": ["sd[x]"], "message": "m"}, "fail"),
        ("predictive", {"error": "no observed data"}, "caution"),
        ("nuts", {"agree": True, "reliable": False, "message": "m"}, "caution"),
        ("nuts", {"agree": False, "reliable": True, "message": "m"}, "fail"),
        ("sbc", {"calibrated": False, "message": "m"}, "fail"),
    ]
    for key, part, status in cases:
        verdict = check_verdicts({**good, key: part})[key]
        assert verdict.status == status, (key, part)
        assert verdict.advice.endswith(".") and ": " in verdict.advice, verdict.advice  # why: what to do.
        assert verdict.warning().startswith(verdict.message) and verdict.warning().endswith(verdict.advice)
    # No figure to judge is no verdict: a joint k-hat over many rows, a check that does not apply to the model.
    joint = {"khat": 3.0, "verdict": "unreliable", "ess": 1.0, "num_samples": 200, "scope": "joint", "message": "m"}
    assert check_verdicts({**good, "psis": joint})["psis"].status == "info"
    assert check_verdicts({**good, "nuts": {"error": "amortised"}})["nuts"].status == "info"
    worst = overall_verdicts({**good, "psis_rows": {"verdict": "unreliable", "unreliable": 0.4, "message": "m"}})
    assert worst["posterior"].status == "fail" and "40% of rows above 0.7" in worst["posterior"].label
    assert {v.status for v in overall_verdicts({}).values()} == {"caution"}  # nothing recorded: nothing known


def test_warnings_of_a_short_fit_say_what_to_do():
    from bayesgen.diagnostics import diagnose

    # 60 steps from the default start: the loss still falls and the rates are off the exact posterior.
    est = BetaBinomialTest(seed=0, num_steps=60, learning_rate=0.01).fit([235, 157], [2435, 2435])
    report = diagnose(est, num_samples=200)
    assert report["convergence"]["verdict"] == "still improving"
    assert not report["reference"]["agree"]
    assert any(w.startswith("optimisation still improving") and "raise num_steps" in w for w in report["warnings"])
    assert any(w.startswith("SVI vs exact posterior") and "method='exact'" in w for w in report["warnings"])


def _two_site_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_khat_refuses_to_judge_a_point_mass_guide():
    from pyro import poutine
    from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

    from bayesgen.infer import run_svi

    delta = AutoDelta(_two_site_model)
    fit = run_svi(_two_site_model, delta, Y, num_steps=100, learning_rate=0.1)
    # Every draw of a point mass is the same, so the ratios are constant: k-hat -inf, "good", whatever the point.
    with pytest.raises(ValueError, match=r"cannot judge the guide: the guide is a point mass at \['mu', 'sigma'\]"):
        vi_khat(_two_site_model, delta, Y, param_state=fit.param_state, num_samples=200)
    # A point mass at some sites is refused too, naming them; AutoNormal's Delta sites (its transformed draws) are not.
    mixed = AutoGuideList(_two_site_model)
    mixed.append(AutoDelta(poutine.block(_two_site_model, expose=["mu"])))
    mixed.append(AutoNormal(poutine.block(_two_site_model, hide=["mu"])))
    fit = run_svi(_two_site_model, mixed, Y, num_steps=100, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"point mass at \['mu'\]"):
        vi_khat(_two_site_model, mixed, Y, param_state=fit.param_state, num_samples=200)
    normal = AutoNormal(_two_site_model)
    fit = run_svi(_two_site_model, normal, Y, num_steps=100, learning_rate=0.1)
    assert np.isfinite(
        vi_khat(_two_site_model, normal, Y, param_state=fit.param_state, num_samples=200, warn=False).khat
    )
    # Per row as well: a point-mass amortised guide would give every row constant ratios.
    x = torch.tensor(np.random.default_rng(1).normal(0.0, 1.4, size=40), dtype=torch.float32)

    def point_guide(x):
        with pyro.plate("row", len(x)):
            pyro.sample("z", dist.Delta(x / 2))

    with pytest.raises(ValueError, match=r"point mass at \['z'\]"):
        vi_khat_rows(local_model, point_guide, x, plate="row", num_samples=200)


def test_khat_refuses_a_subsampled_plate_and_judges_all_rows_without_it():
    from normal_models import normal_model
    from pyro.infer.autoguide import AutoNormal

    y = torch.tensor(np.random.default_rng(4).normal(2.0, 1.0, size=200), dtype=torch.float32)

    def minibatch_model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(y), subsample_size=20) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    post_var = 1.0 / (1.0 / 100.0 + len(y))

    def guide(y, subsample=None):  # the exact posterior, 1.2x too wide: ratios vary, k-hat stays small
        pyro.sample("mu", dist.Normal(post_var * y.sum(), 1.2 * math.sqrt(post_var)))

    # Each draw's ratio would be a random 20 of the 200 rows, scaled up 10x: not the posterior given all the data.
    with pytest.raises(ValueError, match="plate 'obs' evaluates 20 of its 200 rows"):
        vi_khat(minibatch_model, guide, y, num_samples=200)
    with pytest.raises(ValueError, match="plate 'obs' evaluates 20 of its 200 rows"):
        vi_khat(normal_model, guide, y, torch.arange(20), num_samples=200)
    # With the subsample left out the model sees every row, and a guide close to the posterior is judged good.
    diag = vi_khat(normal_model, guide, y, num_samples=1000)
    assert diag.verdict == "good" and diag.ess > 800
    # The per-row check refuses it too (its log-densities would be scaled up by 200 / 20).

    def minibatch_local(x):
        with pyro.plate("row", len(x), subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    with pytest.raises(ValueError, match="plate 'row' evaluates 10 of its 200 rows"):
        vi_khat_rows(minibatch_local, AutoNormal(minibatch_local), y, plate="row", num_samples=200)


def test_sbc_refits_a_module_guide_from_its_initial_values():
    from pyro.infer.autoguide import AutoNormal

    from bayesgen.diagnostics import sbc
    from bayesgen.infer import run_svi

    y = torch.randn(20)
    guide = AutoNormal(_sbc_model)
    run_svi(_sbc_model, guide, y + 5.0, num_steps=200, learning_rate=0.1)  # the user's guide is already fitted
    fitted = float(guide.locs.mu.detach())
    after_first_step = []

    def record(step, loss):
        if step == 0:
            after_first_step.append(float(pyro.param("AutoNormal.locs.mu")))

    sbc(
        _sbc_model,
        guide,
        y,
        num_simulations=4,
        num_posterior_samples=19,
        num_steps=30,
        learning_rate=0.1,
        fit_kwargs={"callback": record},
        seed=0,
    )
    # AutoNormal starts each loc at 0 (init_to_feasible) and Adam's first step moves it by the learning rate:
    # every refit starts where the first did, not from the previous simulation's (or the user's) fit.
    assert len(after_first_step) == 4 and abs(fitted) > 2
    np.testing.assert_allclose(np.abs(after_first_step), 0.1, atol=1e-4)
    # The guide passed in is left as it was, and still works.
    assert float(guide.locs.mu.detach()) == fitted and guide(y)["mu"].shape == ()


# A linear-Gaussian factor model written with torch.mm, which takes matrices only: it does not broadcast over a
# plate of draws. z_i ~ Normal(0, I_2), x_i ~ Normal(z_i W, I_3); exact posterior Normal(x_i W' S, S) with
# S = (I + W W')^-1.
W_MM = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])
S_MM = torch.linalg.inv(torch.eye(2) + W_MM @ W_MM.T)


def mm_model(x):
    with pyro.plate("row", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(torch.mm(z, W_MM), 1.0).to_event(1), obs=x)


def make_mm_guide(scale_factor: float, wrong_rows: int = 0):
    def guide(x):
        scale_tril = torch.linalg.cholesky(S_MM).expand(x.shape[0], 2, 2).clone()
        scale_tril[:wrong_rows] *= scale_factor
        with pyro.plate("row", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(torch.mm(x, W_MM.T @ S_MM), scale_tril=scale_tril))

    return guide


def test_per_row_khat_draws_one_at_a_time_for_a_model_that_does_not_broadcast():
    x = torch.mm(torch.randn(30, 2), W_MM) + torch.randn(30, 3)
    exact = vi_khat_rows(mm_model, make_mm_guide(1.0), x, plate="row", num_samples=100, seed=0)
    assert exact.khat.shape == (30,) and exact.verdict == "good" and exact.shares["good"] == 1.0
    with pytest.warns(UserWarning, match="unreliable"):
        # The first 10 rows' guide is 5x too narrow (tail shape 0.96); with 300 draws their median k-hat was
        # 0.80-0.92 over seeds 0-5 of the vectorised z @ W form of this model.
        mixed = vi_khat_rows(mm_model, make_mm_guide(0.2, wrong_rows=10), x, plate="row", num_samples=300, seed=0)
    assert np.median(mixed.khat[:10]) > 0.7 and (mixed.khat[10:] < 0.5).all()


def test_ratios_equal_up_to_float32_rounding_are_an_exact_guide():
    from normal_models import normal_model

    y = torch.tensor(np.random.default_rng(4).normal(2.0, 1.0, size=200), dtype=torch.float32)
    post_var = 1.0 / (1.0 / 100.0 + len(y))

    def exact(y, subsample=None):
        pyro.sample("mu", dist.Normal(post_var * y.sum(), math.sqrt(post_var)))

    # log w = log p(y) for every draw; float32 rounds it (at -288) to a few values 3e-5 apart.
    diag = vi_khat(normal_model, exact, y, num_samples=1000, seed=0)
    assert 0 < np.ptp(diag.raw_log_weights) < 1e-3
    assert diag.khat == -np.inf and diag.verdict == "good" and diag.ess > 999

    def mm_free_model(x):  # mm_model in a form that broadcasts over the draws
        with pyro.plate("row", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W_MM, 1.0).to_event(1), obs=x)

    x = torch.mm(torch.randn(30, 2), W_MM) + torch.randn(30, 3)
    # Here some exact row's rounded ratios have a tail of equal values, which ArviZ's Pareto fit refuses.
    rows = vi_khat_rows(
        mm_free_model, make_mm_guide(0.2, wrong_rows=10), x, plate="row", num_samples=200, seed=4, warn=False
    )
    assert (rows.khat[10:] == -np.inf).all() and np.median(rows.khat[:10]) > 0.7


def test_per_row_khat_refuses_a_latent_site_the_guide_does_not_draw():
    from pyro.infer import config_enumerate

    @config_enumerate
    def mixture(x):
        with pyro.plate("row", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z + 3 * c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("row", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 1.0))

    # c would be drawn from its prior inside the ratio, not summed out.
    with pytest.raises(ValueError, match="latent site 'c' is in the model and not the guide"):
        vi_khat_rows(mixture, guide, torch.randn(20), plate="row", num_samples=100)


def test_per_row_khat_draws_one_at_a_time_when_the_vectorised_pass_mixes_the_draws(caplog):
    def centred(x):  # z.mean(0) is over the rows in a plain pass, over draws and rows in a vectorised one
        with pyro.plate("row", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z - 0.1 * z.mean(0), 1.0), obs=x)

    x = torch.randn(40)
    with caplog.at_level("WARNING", logger="bayesgen.diagnostics"):
        rows = vi_khat_rows(centred, make_local_guide(1.0), x, plate="row", num_samples=100, warn=False)
    assert "disagree with a plain pass on the same draw" in caplog.text and rows.khat.shape == (40,)
    caplog.clear()
    with caplog.at_level("WARNING", logger="bayesgen.diagnostics"):
        vi_khat_rows(local_model, make_local_guide(1.0), x, plate="row", num_samples=100)
    assert "disagree" not in caplog.text


def test_estimator_nuts_check_passes_the_advice_options_to_nuts_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    import bayesgen.diagnostics as diagnostics
    from bayesgen import BetaBinomialTest

    seen: dict = {}
    monkeypatch.setattr(diagnostics, "nuts_compare", lambda *a, **kw: seen.update(kw) or "compared")
    test = BetaBinomialTest(method="exact", seed=0).fit([12, 20], [100, 100])

    def relabel(draws: dict) -> dict:
        return draws

    out = test.nuts_check(num_samples=10, target_accept_prob=0.95, relabel=relabel, progress=False)
    assert out == "compared"
    assert seen["target_accept_prob"] == 0.95 and seen["relabel"] is relabel and seen["progress"] is False

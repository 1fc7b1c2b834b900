"""Posterior predictive checks of named statistics: they pass where the model is right and fail where it is not."""

from __future__ import annotations

import numpy as np
import pytest

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
    one = MixtureAnomalyDetector(num_components=1, covariance="diag", anomaly="student_t", num_steps=400, seed=0).fit(X)
    missed = predictive_check(one, num_samples=100, seed=0)
    assert not missed.passed
    assert set(missed.table.index[~missed.table["ok"]]) == {"mahalanobis²[median]", "mahalanobis²[95%]"}
    assert "does not reproduce" in missed.message() and "mahalanobis²" in missed.message()


def _prodlda(X):
    from bayesgen.models.topic import ProdLDA

    return ProdLDA(num_topics=4, hidden_dim=32, num_epochs=40, batch_size=50, seed=0).fit(X)


def test_prodlda_check_names_word_statistics_and_passes_on_a_corpus_simulated_from_a_fitted_prodlda():
    import torch
    import torch.nn.functional as F
    from test_topic import planted_corpus

    from bayesgen.models.topic import DocumentMultinomial, dirichlet_laplace_prior

    X, _, _ = planted_corpus(D=300, length=60)
    source = _prodlda(X)
    # New documents from the fitted model's own generative story, with the planted documents' lengths.
    _, scale = dirichlet_laplace_prior(4, 1.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        source.decoder_.eval()
        theta = F.softmax(scale * torch.randn(len(X), 4, generator=gen), dim=-1)
        torch.manual_seed(2)
        lengths = torch.as_tensor(X.sum(1), dtype=torch.float32)
        simulated = DocumentMultinomial(source.decoder_(theta), lengths).sample().numpy().astype(int)
    check = predictive_check(_prodlda(simulated), num_samples=100, seed=0)
    totals = simulated.sum(0)
    top = [f"w{j}" for j in np.argsort(-totals, kind="stable")[:10]]
    assert list(check.table.index) == (
        [f"share of tokens[{w}]" for w in top]
        + [f"documents containing[{w}]" for w in top]
        + ["distinct words per document[mean]"]
        # each family of ten: its members' mean standardised deviation, in the data and in each replicate
        + ["share of tokens[all 10: mean z]", "documents containing[all 10: mean z]"]
    )
    names = [f"share of tokens[{w}]" for w in top]
    family = np.mean(
        [(check.replicated[n] - check.replicated[n].mean()) / check.replicated[n].std(ddof=1) for n in names], 0
    )
    np.testing.assert_allclose(check.replicated["share of tokens[all 10: mean z]"], family)
    # Observed values are the statistics of the documents in the check (the first 50).
    first = simulated[:50]
    np.testing.assert_allclose(
        check.table.loc[f"share of tokens[{top[0]}]", "observed"], first[:, int(top[0][1:])].sum() / first.sum()
    )
    np.testing.assert_allclose(
        check.table.loc["distinct words per document[mean]", "observed"], np.count_nonzero(first, axis=1).mean()
    )
    assert check.passed, check.table[~check.table["ok"]]
    assert check.table["p_value"].min() > 1e-3


def test_prodlda_check_fails_documents_far_burstier_than_any_four_topics_allow():
    # Every document repeats the words of its own random 3-word set: four shared topics cannot reproduce that.
    rng = np.random.default_rng(3)
    X = np.zeros((300, 40), dtype=int)
    for d in range(len(X)):
        X[d, rng.choice(40, 3, replace=False)] = rng.multinomial(60, [1 / 3] * 3)
    check = predictive_check(_prodlda(X), num_samples=100, seed=0)
    assert not check.passed
    failed = set(check.table.index[~check.table["ok"]])
    assert "distinct words per document[mean]" in failed
    assert sum(name.startswith("documents containing[w") for name in failed) == 10
    assert "documents containing[all 10: mean z]" in failed
    row = check.table.loc["distinct words per document[mean]"]
    assert row["observed"] == 3.0 and row["replicated_mean"] > 10


def zipf_prodlda_corpus(seed=0, K=4, V=200, D=400, length=60):
    """Documents from ProdLDA's own story, with Zipfian word frequencies (as real text has).

    p_d = softmax(b + β theta_d): the background b falls as −1.1 log(rank); each topic raises 15 random
    words by 3–6 in logit; theta_d = softmax(Normal(0, 0.75)), the Laplace prior of Dirichlet(1) for K = 4.
    Returns the counts, the true word distributions p_d and the lengths.
    """
    rng = np.random.default_rng(seed)
    logits = np.zeros((K, V))
    for k in range(K):
        logits[k, rng.choice(V, 15, replace=False)] = rng.uniform(3.0, 6.0, 15)
    z = rng.normal(0.0, np.sqrt(0.75), (D, K))
    theta = np.exp(z - z.max(1, keepdims=True))
    theta /= theta.sum(1, keepdims=True)
    h = -1.1 * np.log(np.arange(1, V + 1)) + theta @ logits
    probs = np.exp(h - h.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    lengths = rng.poisson(length, D) + 10
    return np.stack([rng.multinomial(n, q) for n, q in zip(lengths, probs, strict=True)]), probs, lengths


def test_the_original_prodlda_decoder_replicates_word_frequencies_and_distinct_words():
    # ProdLDA's own decoder (batch norm kept, no background term) on documents from ProdLDA's story. Batch norm
    # leaves every word's logit with mean 0 over the documents: only its learned shift lets frequent words stay
    # frequent, and without it the replicates spread over the vocabulary (about twice the distinct words).
    from bayesgen.models.topic import ProdLDA

    X, probs, lengths = zipf_prodlda_corpus()
    first, n = X[:50], lengths[:50, None]  # the documents in the check
    observed = np.count_nonzero(first, axis=1).mean()
    # Ground truth: the simulation's own expected distinct words are what the observed count estimates.
    expected = (1 - (1 - probs[:50]) ** n).sum(1).mean()
    assert abs(observed / expected - 1) < 0.03
    lda = ProdLDA(
        num_topics=4,
        hidden_dim=32,
        num_epochs=40,
        batch_size=50,
        background=False,
        batch_norm_anneal=float("inf"),
        seed=0,
    ).fit(X)
    table = predictive_check(lda, num_samples=100, seed=0).table
    # Within 20 %: over five data and fit seeds the fitted model's replicates hold 8–13 % more distinct words
    # than observed, a decoder without the shift 111 % more (benchmarks/RESULTS.md).
    row = table.loc["distinct words per document[mean]"]
    assert abs(row["replicated_mean"] / row["observed"] - 1) < 0.20, row
    # The ten most frequent words hold 2/3 of the tokens; their replicated share is within 10 % of that.
    shares = table[table.index.str.startswith("share of tokens[w")]
    assert abs(shares["replicated_mean"].sum() / shares["observed"].sum() - 1) < 0.10, shares


def _vae(X):
    from bayesgen.models.vae import VAE

    return VAE(latent_dim=4, hidden_dims=(64,), num_epochs=30, batch_size=64, seed=0).fit(X)


@pytest.fixture(scope="module")
def digit_vae():
    from bayesgen.datasets import load_digits

    X, _ = load_digits()
    return _vae((X[:600] > 0.5).astype(np.float32))


def test_vae_check_names_pixel_statistics_and_passes_on_images_simulated_from_a_fitted_vae(digit_vae):
    simulated, _ = digit_vae.sample(600, seed=1, mean=False)  # binary draws from the pixel likelihood
    check = predictive_check(_vae(simulated), num_samples=100, seed=0)
    pixels = np.argsort(-simulated.var(axis=0), kind="stable")[:3]
    assert list(check.table.index) == [
        "mean intensity",
        "sd within image[mean]",
        "share of pixels > 0.5",
        *(f"mean[pixel {j}]" for j in pixels),
    ]
    first = simulated[:64]  # the rows in the check
    np.testing.assert_allclose(
        check.table["observed"].iloc[:3], [first.mean(), first.std(axis=1).mean(), (first > 0.5).mean()], rtol=1e-6
    )
    assert check.passed, check.table[~check.table["ok"]]
    assert check.table["p_value"].min() > 1e-3


def test_vae_check_fails_a_bernoulli_vae_on_grey_images(digit_vae):
    # The same model's mean images are smooth grey; a Bernoulli VAE replicates them as binary images.
    grey, _ = digit_vae.sample(600, seed=1, mean=True)
    check = predictive_check(_vae(grey), num_samples=100, seed=0)
    assert not check.passed
    row = check.table.loc["sd within image[mean]"]
    assert not row["ok"] and row["replicated_mean"] > row["observed"]
    # The verdict says why (binary replicates of grey pixels) and what to do, not the generic advice.
    from bayesgen.diagnostics.verdict import _predictive_verdict

    assert "continuous_bernoulli" in check.advice and "are grey" in check.advice
    part = {"passed": False, "statistics": len(check.table), "failed": ["x"], "advice": check.advice}
    assert _predictive_verdict(part).advice == check.advice
    # On binary images, where the same statistics can match, there is no such sentence.
    assert digit_vae._ppc_advice({"x": (grey > 0.5).astype(float)}, ["x"]) is None


def _edit_meta(folder, **extra):
    import json

    meta = json.loads((folder / "meta.json").read_text())
    meta["extra"].update(extra)
    (folder / "meta.json").write_text(json.dumps(meta))


def _statistics(estimator):
    return list(predictive_check(estimator, num_samples=20, seed=0).table.index)


def test_saved_models_keep_the_checks_statistics_chosen_on_all_training_rows(digit_vae, tmp_path, make_older):
    from test_topic import planted_corpus

    from bayesgen.datasets import load_digits
    from bayesgen.models.topic import ProdLDA
    from bayesgen.models.vae import VAE

    X, _ = load_digits()
    binary = (X[:600] > 0.5).astype(np.float32)
    names = _statistics(digit_vae)
    assert names[3:] == [f"mean[pixel {j}]" for j in np.argsort(-binary.var(axis=0), kind="stable")[:3]]
    folder = digit_vae.save(tmp_path / "vae")  # keeps 256 of the 600 rows
    assert _statistics(VAE.load(folder)) == names
    _edit_meta(folder, ppc_pixels=[64])
    with pytest.raises(ValueError, match="ppc_pixels must be a non-empty list of pixel indices below 64"):
        VAE.load(folder)
    make_older(folder, extra=["ppc_pixels", "ppc_threshold"])
    older = _statistics(VAE.load(folder))  # a file without them: chosen on the rows it keeps
    assert older[3:] == [f"mean[pixel {j}]" for j in np.argsort(-binary[:256].var(axis=0), kind="stable")[:3]]
    assert older != names

    counts, _, _ = planted_corpus(D=300, length=60)
    lda = ProdLDA(num_topics=4, hidden_dim=8, num_epochs=1, batch_size=50, refine_steps=0, seed=0).fit(counts)
    names = _statistics(lda)
    assert names[:10] == [f"share of tokens[w{j}]" for j in np.argsort(-counts.sum(0), kind="stable")[:10]]
    folder = lda.save(tmp_path / "lda")  # keeps 200 of the 300 documents
    assert _statistics(ProdLDA.load(folder)) == names
    _edit_meta(folder, ppc_words=[-1])
    with pytest.raises(ValueError, match="ppc_words must be a non-empty list of word indices below 40"):
        ProdLDA.load(folder)
    make_older(folder, extra=["ppc_words"])
    older = _statistics(ProdLDA.load(folder))
    assert older[:10] == [f"share of tokens[w{j}]" for j in np.argsort(-counts[:200].sum(0), kind="stable")[:10]]
    assert older != names


def test_failures_are_listed_farthest_first_with_a_count_of_the_rest_and_tiny_p_values_are_floored():
    import pandas as pd

    from bayesgen.diagnostics.predictive import PredictiveCheck

    rng = np.random.default_rng(0)
    names = [f"stat{i}" for i in range(9)]
    # stat0 passes; stat1..stat8 fail, the farthest (smallest p) last in table order.
    p = [0.5, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-12, 1e-300]
    table = pd.DataFrame({"observed": 0.0, "p_value": p}, index=pd.Index(names, name="statistic"))
    table["ok"] = table["p_value"] >= 0.01 / len(table)
    check = PredictiveCheck(table=table, replicated={n: rng.normal(size=50) for n in names})
    text = check.message()
    assert "smallest p-value < 1e-06 (stat8)" in text and "e-300" not in text
    assert "8 outside what the model replicates" in text
    assert "stat8, stat7, stat6, stat5, stat4 and 3 more" in text
    fig = check.plot()
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "stat8: p < 1e-06" and not any("e-300" in t for t in titles)
    check.table.loc["stat8", "p_value"] = 1e-5
    assert check.plot().axes[0].get_title() == "stat7: p < 1e-06"
    assert "stat2: p = 1e-06" in [ax.get_title() for ax in check.plot().axes]  # at the floor: shown as is
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["94 % of the replicates", "replicated data sets", "observed"]


def test_outside_share_counts_the_replicates_as_far_from_their_mean_as_the_data():
    test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435], names=["white", "black"])
    check = predictive_check(test, num_samples=300, seed=0)
    for name, row in check.table.iterrows():
        reps = check.replicated[name]
        expected = np.mean(np.abs(reps - reps.mean()) >= abs(row["observed"] - reps.mean()))
        assert row["outside_share"] == pytest.approx(expected)
        # Under the exact posterior the data sit inside the replicates.
        assert 0.05 < row["outside_share"] <= 1.0


def test_a_shift_every_member_of_a_family_shows_a_little_of_fails_the_family_not_the_members():
    from bayesgen.diagnostics.predictive import _family_statistics

    # 60 statistics, independent across replicates; the data sit 1.1 replicated sd below every one of them.
    rng = np.random.default_rng(0)
    reps = {f"sd[x{j}]": rng.normal(1.0, 0.1, size=200) for j in range(60)}
    obs = {name: values.mean() - 1.1 * values.std(ddof=1) for name, values in reps.items()}
    family = _family_statistics(obs, reps)
    value, values = family["sd[all 60: mean z]"]
    assert value == pytest.approx(-1.1)
    assert values.std(ddof=1) == pytest.approx(1 / np.sqrt(60), rel=0.15)  # the mean of 60 independent z's
    # Each member alone passes the family-wise level; the family does not.
    z = value / values.std(ddof=1)
    from scipy import stats

    assert 2 * stats.norm.sf(1.1) > 0.01 / 61 > 2 * stats.norm.sf(abs(z))
    # Families under five members, and statistics without a bracket, get none.
    assert (
        _family_statistics(
            {"a[1]": 0.0, "a[2]": 0.0, "b": 1.0}, {"a[1]": reps["sd[x0]"], "a[2]": reps["sd[x1]"], "b": reps["sd[x2]"]}
        )
        == {}
    )


def test_the_exact_full_generator_replicates_the_digits_pixel_sds_as_a_family():
    from bayesgen.datasets import load_digits

    X, y = load_digits()
    full = GaussianGenerator(covariance="full", method="exact", constant_features="keep", seed=0).fit(X, y)
    check = predictive_check(full, num_samples=200, seed=0)
    (family,) = [name for name in check.table.index if name.startswith("sd[all ")]
    row = check.table.loc[family]
    assert row["ok"] and abs(row["z"]) < 2, row
    assert check.advice == ""
    # A low-rank fit whose sds fail as a family is told what to do.
    low = GaussianGenerator(covariance="lowrank", rank=2, num_steps=5, constant_features="keep", seed=0).fit(X, y)
    advice = low._ppc_advice({"x": X}, ["sd[all 64: mean z]"])
    assert "covariance='full'" in advice and "rank 2" in advice
    assert low._ppc_advice({"x": X}, ["mean[x3]"]) is None

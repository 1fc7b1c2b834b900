"""Gaussian class-conditional generator: closed forms, SVI, real digits, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from sklearn.model_selection import train_test_split

from bayesgen.augment import (
    LedoitWolfSampler,
    augment,
    default_classifier,
    low_data_experiment,
    memorization_check,
    mlp_classifier,
    tstr,
)
from bayesgen.datasets import load_digits
from bayesgen.models.gaussian_generator import GaussianGenerator, exact_posterior, guide, model


def simulated(num_per_class=(400, 150, 40), d=4, seed=0):
    """Three Gaussian classes with known means and covariances, unbalanced."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0, 0, 0], [3, -1, 0, 2], [-2, 2, 1, 0]])[:, :d]
    X, y = [], []
    for c, n in enumerate(num_per_class):
        A = rng.normal(size=(d, d)) * 0.4
        cov = A @ A.T + np.diag(np.full(d, 0.5 + 0.3 * c))
        X.append(rng.multivariate_normal(means[c], cov, size=n))
        y.append(np.full(n, c))
    return np.concatenate(X), np.concatenate(y), means


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits()
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


# ------------------------------------------------------------------ unit
@pytest.mark.parametrize("covariance", ["diag", "full", "lowrank"])
def test_model_and_guide_share_sites_and_log_prob_is_finite(covariance):
    X, y, _ = simulated(d=4)
    gen = GaussianGenerator(
        covariance=covariance, rank=2, method="exact" if covariance == "full" else "svi", num_steps=2, average_last=0
    )
    gen.fit(X, y)
    args, kwargs = gen._model_args()
    gtr = poutine.trace(guide).get_trace(*args, **kwargs)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(*args, **kwargs)

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    assert latent(mtr) == latent(gtr)
    assert torch.isfinite(mtr.log_prob_sum()) and torch.isfinite(gtr.log_prob_sum())
    assert mtr.nodes["loc"]["value"].shape == (3, 4)


# ------------------------------------------------- statistical vs closed form
def test_exact_posterior_concentrates_on_the_simulated_means():
    X, y, means = simulated(num_per_class=(3000, 3000, 3000))
    gen = GaussianGenerator(covariance="full", method="exact").fit(X, y)
    np.testing.assert_allclose(gen.class_means().to_numpy(), means, atol=0.08)
    np.testing.assert_allclose(gen.class_weights().to_numpy(), [1 / 3] * 3, atol=0.01)


@pytest.mark.parametrize("covariance", ["diag"])
def test_svi_posterior_means_match_closed_form(covariance):
    # The guide starts with every class at the pooled statistics, away from the answer.
    X, y, _ = simulated()
    svi = GaussianGenerator(
        covariance=covariance, num_steps=3000, learning_rate=0.05, batch_size=None, init="prior", seed=0
    ).fit(X, y)
    z = (X - svi._shift) / svi._scale  # the model's standardised scale
    exact = exact_posterior(z, y, 3, covariance=covariance)
    p = svi.params_
    loc_sd = np.sqrt(exact["loc_var"])
    assert np.max(np.abs(p["loc_loc"] - exact["loc"]) / loc_sd) < 0.25
    prec_svi = p["precision_shape"] / p["precision_rate"]
    np.testing.assert_allclose(prec_svi, exact["precision_mean"], rtol=0.08)
    weights = p["weights_concentration"] / p["weights_concentration"].sum()
    np.testing.assert_allclose(
        weights, exact["weights_concentration"] / exact["weights_concentration"].sum(), atol=0.02
    )


def test_shrinkage_lets_a_tiny_class_borrow_strength():
    X, y, _ = simulated(num_per_class=(400, 400, 3))
    gen = GaussianGenerator(covariance="full", method="exact", shrinkage=20.0).fit(X, y)
    # three rows cannot estimate a 4x4 covariance; the posterior stays positive definite
    assert np.linalg.eigvalsh(np.linalg.inv(gen.exact_["precision_mean"][2])).min() > 0
    Xs, ys = gen.sample(200, y=2, seed=0)
    assert np.isfinite(Xs).all() and set(ys) == {2}


def test_lowrank_recovers_class_structure_and_classifies():
    X, y, means = simulated(num_per_class=(800, 800, 800))
    gen = GaussianGenerator(covariance="lowrank", rank=2, num_steps=1500, seed=0).fit(X, y)
    np.testing.assert_allclose(gen.class_means().to_numpy(), means, atol=0.25)
    X_new, y_new, _ = simulated(num_per_class=(300, 300, 300), seed=1)
    assert np.mean(gen.predict(X_new) == y_new) > 0.9
    proba = gen.predict_proba(X_new[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------- sampling verbs
def test_sample_proportions_classes_and_clip():
    X, y, _ = simulated(num_per_class=(600, 300, 100))
    gen = GaussianGenerator(covariance="diag", method="exact", clip=(-1.0, 1.0)).fit(X, y)
    Xs, ys = gen.sample(4000, seed=0)
    np.testing.assert_allclose(np.bincount(ys, minlength=3) / 4000, [0.6, 0.3, 0.1], atol=0.03)
    assert Xs.min() >= -1.0 and Xs.max() <= 1.0
    _, yu = gen.sample(3000, y="uniform", seed=0)
    assert np.bincount(yu).tolist() == [1000, 1000, 1000]
    _, y2 = gen.sample(10, y=2, seed=0)
    assert set(y2) == {2}
    with pytest.raises(ValueError, match=r"unknown labels \[7\]; the classes are \[0, 1, 2\]"):
        gen.sample(3, y=7)
    a, _ = gen.sample(50, seed=5)
    b, _ = gen.sample(50, seed=5)
    np.testing.assert_array_equal(a, b)


def test_string_labels_dataframe_input_and_score_samples():
    X, y, _ = simulated()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    frame["kind"] = np.array(["small", "medium", "large"])[y]
    gen = GaussianGenerator(covariance="diag", method="exact").fit(frame, label="kind")
    assert list(gen.classes_) == ["large", "medium", "small"]
    Xs, ys = gen.sample(5, y="medium", as_frame=True)
    assert list(Xs.columns) == ["a", "b", "c", "d"] and set(ys) == {"medium"}
    scores = gen.score_samples(frame.drop(columns="kind"))
    outlier = gen.score_samples(np.array([[40.0, -40.0, 40.0, 40.0]]))
    assert outlier[0] < scores.min() - 100


# ------------------------------------------------------------ real digits
def test_digits_tstr_close_to_trtr_and_no_memorization(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    gen = GaussianGenerator(covariance="full", method="exact", constant_features="keep", clip=(0, 1)).fit(X_tr, y_tr)
    scores = tstr(gen, X_tr, y_tr, X_te, y_te)
    assert scores["trtr"] > 0.95
    assert scores["tstr"] > scores["trtr"] - 0.10
    Xs, _ = gen.sample(1000, seed=1)
    check = memorization_check(Xs, X_tr, X_te)
    assert check["passed"] and check["exact_copies"] == 0.0
    # the check can fail: near-copies of training rows are caught
    copies = X_tr[:500] + np.random.default_rng(0).normal(0, 1e-3, size=(500, 64))
    assert not memorization_check(copies, X_tr, X_te)["passed"]
    # and the Bayes classifier itself is a good classifier on digits
    assert np.mean(gen.predict(X_te) == y_te) > 0.93


def test_digits_lowrank_svi_fits_and_samples_look_like_their_class(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    gen = GaussianGenerator(
        covariance="lowrank", rank=8, num_steps=600, constant_features="keep", clip=(0, 1), seed=0
    ).fit(X_tr, y_tr)
    assert gen.losses_[-50:].mean() < gen.losses_[:50].mean()
    # a classifier trained on real digits recognises the generated digits
    clf = default_classifier().fit(X_tr, y_tr)
    Xs, ys = gen.sample(500, y="uniform", seed=2)
    assert np.mean(clf.predict(Xs) == ys) > 0.85
    assert (Xs[:, [0, 32, 39]] == 0).all()  # constant border pixels are held fixed


def test_augment_marks_synthetic_rows_and_keeps_real_ones(digits_split):
    X_tr, _, y_tr, _ = digits_split
    gen = GaussianGenerator(covariance="diag", method="exact", constant_features="keep", clip=(0, 1))
    data = augment(X_tr, y_tr, gen, num_per_class={0: 30, 1: 10}, seed=0)
    assert data.synthetic.sum() == 40 and (~data.synthetic).sum() == len(X_tr)
    np.testing.assert_array_equal(data.X[~data.synthetic], X_tr)
    assert sorted(np.unique(data.y[data.synthetic]).tolist()) == [0, 1]
    frame = data.to_frame(label="digit")
    assert frame["synthetic"].sum() == 40 and "digit" in frame
    with pytest.raises(ValueError, match="unknown classes"):
        augment(X_tr, y_tr, gen, num_per_class={"cat": 3})


def test_ledoit_wolf_baseline_draws_from_the_shrunk_plug_in_normal():
    from sklearn.covariance import LedoitWolf

    X, y, _ = simulated(num_per_class=(60, 30, 12), d=4)
    sampler = LedoitWolfSampler(seed=0).fit(X, y)
    for c in range(3):
        rows = X[y == c]
        reference = LedoitWolf().fit(rows)  # scikit-learn's estimate, not ours
        np.testing.assert_allclose(sampler.means_[c], rows.mean(0))
        np.testing.assert_allclose(sampler.covariances_[c], reference.covariance_)
        Xs, ys = sampler.sample(20000, y=c, seed=1)
        assert (ys == c).all()
        # 20,000 draws: the sample covariance is within a few percent of the one drawn from
        np.testing.assert_allclose(np.cov(Xs.T), reference.covariance_, atol=0.06 * np.abs(reference.covariance_).max())
    _, ys = sampler.sample(3000, seed=2)
    np.testing.assert_allclose(np.bincount(ys) / 3000, [60 / 102, 30 / 102, 12 / 102], atol=0.03)
    _, ys = sampler.sample(30, y="uniform", seed=2)
    assert np.bincount(ys).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(sampler.sample(5, seed=4)[0], sampler.sample(5, seed=4)[0])
    clipped = LedoitWolfSampler(clip=(0, 1)).fit(X, y).sample(200, y=1)[0]
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_ledoit_wolf_baseline_in_augment_and_the_low_data_experiment(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    data = augment(X_tr, y_tr, LedoitWolfSampler(clip=(0, 1)), num_per_class=5, seed=0)
    assert data.synthetic.sum() == 50
    table = low_data_experiment(
        lambda: LedoitWolfSampler(clip=(0, 1)),
        X_tr,
        y_tr,
        X_te,
        y_te,
        k_per_class=(5,),
        repeats=1,
        num_synthetic_per_class=50,
    )
    assert len(table) == 1 and 0.5 < table["augmented"].iloc[0] <= 1


def test_ledoit_wolf_baseline_bad_input():
    X, y, _ = simulated(num_per_class=(10, 10, 1), d=3)
    with pytest.raises(ValueError, match=r"class 2 has 1 row\(s\)"):
        LedoitWolfSampler().fit(X, y)
    with pytest.raises(ValueError, match="not fitted"):
        LedoitWolfSampler().sample(3)
    sampler = LedoitWolfSampler().fit(X[:20], y[:20])
    with pytest.raises(ValueError, match=r"unknown labels \[7\]; the classes are \[0, 1\]"):
        sampler.sample(3, y=7)
    with pytest.raises(ValueError, match="clip"):
        LedoitWolfSampler(clip=(1, 0)).fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="NaN|finite|missing"):
        LedoitWolfSampler().fit(np.where(X[:20] > 1, np.nan, X[:20]), y[:20])


def test_save_load_round_trip_and_gpu_free_load(tmp_path, digits_split, make_older):
    X_tr, X_te, y_tr, _ = digits_split
    gen = GaussianGenerator(covariance="lowrank", rank=4, num_steps=100, constant_features="keep").fit(X_tr, y_tr)
    gen.save(tmp_path / "g")
    loaded = GaussianGenerator.load(tmp_path / "g", device=gen.device_)  # same device: seeded draws repeat
    np.testing.assert_array_equal(loaded.sample(20, seed=3)[0], gen.sample(20, seed=3)[0])
    # A file without the guide's class counts and means: they are recomputed from the saved (float32) rows.
    gen.save(tmp_path / "older")
    make_older(tmp_path / "older", tensors=("prior.class_count", "prior.class_mean"))
    older = GaussianGenerator.load(tmp_path / "older", device=gen.device_)
    np.testing.assert_allclose(older.sample(20, seed=3)[0], gen.sample(20, seed=3)[0], atol=1e-5)
    np.testing.assert_allclose(loaded.predict_proba(X_te[:20], seed=1), gen.predict_proba(X_te[:20], seed=1))
    # Loaded on the CPU (a GPU fit on a machine without one): the same parameters; draws come from the
    # CPU's random stream, so the predictions agree up to Monte Carlo error.
    on_cpu = GaussianGenerator.load(tmp_path / "g", device="cpu")
    for name in gen.params_:
        np.testing.assert_allclose(on_cpu.params_[name], gen.params_[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(on_cpu.predict_proba(X_te[:20], seed=1), gen.predict_proba(X_te[:20], seed=1), atol=0.1)


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("make_input", "kind", "match"),
    [
        (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y), ValueError, "NaN"),
        (lambda X, y: (X, np.zeros(len(y))), ValueError, "at least two classes"),
        (lambda X, y: (X[:, :2].astype(str), y), TypeError, "numeric"),
        (lambda X, y: (np.c_[X, np.ones(len(X))], y), ValueError, "constant"),
        (lambda X, y: (X, y[:-1]), ValueError, "one label per row"),
        (lambda X, y: (X[:, 0], y), ValueError, "2-D"),
    ],
)
def test_bad_input_is_rejected_clearly(make_input, kind, match):
    X, y, _ = simulated()
    Xb, yb = make_input(X, y)
    with pytest.raises(kind, match=match):
        GaussianGenerator(covariance="diag", method="exact").fit(Xb, yb)


def test_bad_frames_classes_and_settings():
    X, y, _ = simulated()
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame["kind"] = y
    with pytest.raises(ValueError, match="label column 'label'"):
        GaussianGenerator(method="exact", covariance="diag").fit(frame, label="label")
    frame["name"] = "x"
    with pytest.raises(TypeError, match=r"non-numeric columns \['name'\]"):
        GaussianGenerator(method="exact", covariance="diag").fit(frame, label="kind")
    with pytest.raises(ValueError, match="classes \\[3\\] have no rows"):
        GaussianGenerator(method="exact", covariance="diag").fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="method='exact' needs a conjugate"):
        GaussianGenerator(method="exact", covariance="lowrank").fit(X, y)
    with pytest.raises(ValueError, match="method='exact'"):
        GaussianGenerator(method="svi", covariance="full").fit(X, y)
    gen = GaussianGenerator(method="exact", covariance="diag").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 feature columns, expected 4"):
        gen.predict(np.zeros((2, 3)))


def test_default_rank_fits_a_table_with_few_features(tmp_path):
    X, y, _ = simulated(num_per_class=(60, 40, 30), d=4)  # 4 features: the rank of 10 cannot be below them
    gen = GaussianGenerator(num_steps=50, seed=0).fit(X, y)
    assert gen.rank == "auto" and gen.rank_ == 3
    wide = np.hstack([X, X[:, ::-1] * 2 + 1, X**2])  # 12 features: 10 factors
    assert GaussianGenerator(num_steps=5, seed=0).fit(wide, y).rank_ == 10
    gen.save(tmp_path / "g")
    assert GaussianGenerator.load(tmp_path / "g").rank_ == 3
    with pytest.raises(ValueError, match="rank=4 must be below the 4 modelled features"):
        GaussianGenerator(rank=4, num_steps=5).fit(X, y)


def test_class_low_rank_normal_matches_torch_low_rank_mvn():
    import pyro.distributions as dist

    from bayesgen.models.gaussian_generator import ClassLowRankNormal

    g = torch.Generator().manual_seed(0)
    C, d, r, n, S = 3, 7, 2, 11, 4
    loc, W = torch.randn(S, C, d, generator=g), torch.randn(S, C, d, r, generator=g)
    D = torch.rand(S, C, d, generator=g) + 0.1
    idx = torch.randint(0, C, (n,), generator=g)
    x = torch.randn(S, n, d, generator=g)
    ours = ClassLowRankNormal(loc, W, D, idx).log_prob(x)
    reference = dist.LowRankMultivariateNormal(loc[:, idx], W[:, idx], D[:, idx]).log_prob(x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    # Draws: every row from its own class's Gaussian (moments of 40,000 draws of draw-0's parameters).
    torch.manual_seed(0)
    rows = ClassLowRankNormal(loc[0], W[0], D[0], idx).rsample((40_000,))
    for i in range(n):
        c = idx[i]
        torch.testing.assert_close(rows[:, i].mean(0), loc[0, c], rtol=0, atol=0.06)
        torch.testing.assert_close(
            torch.cov(rows[:, i].T), W[0, c] @ W[0, c].T + torch.diag(D[0, c]), rtol=0.05, atol=0.08
        )


def test_class_multivariate_normal_matches_torch_mvn_from_precision():
    import pyro.distributions as dist

    from bayesgen.models.gaussian_generator import ClassMultivariateNormal

    g = torch.Generator().manual_seed(1)
    C, d, n, S = 3, 5, 9, 4
    loc = torch.randn(S, C, d, generator=g)
    A = torch.randn(S, C, d, d, generator=g)
    precision = A @ A.transpose(-1, -2) + torch.eye(d)
    idx = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1, 1])
    x = torch.randn(S, n, d, generator=g)
    ours = ClassMultivariateNormal(loc, precision, idx).log_prob(x)
    reference = dist.MultivariateNormal(loc[:, idx], precision_matrix=precision[:, idx]).log_prob(x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    torch.manual_seed(0)
    rows = ClassMultivariateNormal(loc[0], precision[0], idx).rsample((40_000,))
    for i in (0, 1, 3):  # one row of each class
        c = idx[i]
        cov = torch.linalg.inv(precision[0, c])
        torch.testing.assert_close(rows[:, i].mean(0), loc[0, c], rtol=0, atol=0.03)
        torch.testing.assert_close(torch.cov(rows[:, i].T), cov, rtol=0.05, atol=0.02)


def test_exact_predictive_matches_monte_carlo_of_the_posterior():
    # The Student-t predictive must equal sampling parameters from the exact
    # Normal-Gamma posterior and then data: compare predictive sd per feature.
    X, y, _ = simulated(num_per_class=(30, 30, 30), d=3)
    gen = GaussianGenerator(covariance="diag", method="exact").fit(X, y)
    z = (X - gen._shift) / gen._scale
    post = exact_posterior(z, y, 3, covariance="diag")
    rng = np.random.default_rng(0)
    c = 1
    prec = rng.gamma(post["shape"][c], 1 / post["rate"][c], size=(200_000, 3))
    mu = rng.normal(post["loc"][c], 1 / np.sqrt(post["kappa"][c] * prec))
    x_mc = rng.normal(mu, 1 / np.sqrt(prec)) * gen._scale + gen._shift
    Xs, _ = gen.sample(200_000, y=c, seed=0)
    np.testing.assert_allclose(Xs.std(axis=0), x_mc.std(axis=0), rtol=0.02)
    np.testing.assert_allclose(Xs.mean(axis=0), x_mc.mean(axis=0), atol=0.02 * x_mc.std(axis=0).max())


def test_more_bad_input_is_clear():
    from bayesgen.models._base import NotFittedError

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.repeat([0, 1], 20)
    with pytest.raises(NotFittedError):
        GaussianGenerator().predict(X)
    with pytest.raises(ValueError, match="duplicate"):
        GaussianGenerator(covariance="diag", method="exact").fit(X, y, classes=[0, 1, 1])
    with pytest.raises(TypeError, match=r"mixes label types \['int', 'str'\]"):
        GaussianGenerator(covariance="diag", method="exact").fit(X, np.array(["a"] * 20 + [1] * 20, dtype=object))
    gen = GaussianGenerator(covariance="diag", method="exact", seed=None).fit(X, y)
    with pytest.raises(ValueError, match="no rows"):
        gen.predict_proba(X[:0])
    with pytest.raises(ValueError, match="num_samples must be an integer >= 0"):
        gen.sample(-1)
    for setting in ({"class_concentration": float("inf")}, {"prior_strength": float("inf")}, {"shrinkage": -1.0}):
        with pytest.raises(ValueError, match="must be a finite number"):
            GaussianGenerator(covariance="diag", method="exact", **setting).fit(X, y)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        GaussianGenerator(covariance="lowrank", rank=2.5).fit(X, y)
    with pytest.raises(ValueError, match=r"clip must be \(low, high\)"):
        GaussianGenerator(covariance="diag", method="exact", clip=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="1-D sequence of labels"):
        gen.sample(2, y=np.array([[0], [1]]))
    with pytest.raises(ValueError, match=r"image_shape=\(5, 5\) does not hold the 4 features"):
        gen.plot_samples(2, image_shape=(5, 5))
    with pytest.raises(ValueError, match="num_per_class must be an integer >= 1"):
        gen.plot_samples(0)
    with pytest.raises(ValueError, match="too large to standardise"):
        GaussianGenerator(covariance="diag", method="exact").fit(X * 1e200, y)
    for n in (1.5, True, {0: 2.5}):
        with pytest.raises(ValueError, match=r"num_per_class\[0\] must be an integer >= 0"):
            augment(X, y, gen, n)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        gen.posterior(0)
    assert augment(X, y, gen, 3, seed=None).synthetic.sum() == 6
    # augment(seed=None) is fresh even with a seeded generator (whose sample(seed=None) repeats its own seed).
    seeded_gen = GaussianGenerator(covariance="diag", method="exact", seed=0).fit(X, y)
    first, second = augment(X, y, seeded_gen, 3, seed=None), augment(X, y, seeded_gen, 3, seed=None)
    assert not np.array_equal(first.X[first.synthetic], second.X[second.synthetic])
    # seed=None means fresh randomness, not a crash.
    Xs, ys = gen.sample(50)
    assert Xs.shape == (50, 4) and set(ys) <= {0, 1}


def test_closed_forms_and_the_model_refuse_a_structure_they_do_not_have():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    with pytest.raises(ValueError, match="covariance='lowrank' has no closed-form posterior"):
        exact_posterior(X, y, 2, covariance="lowrank")
    with pytest.raises(ValueError, match="covariance must be 'diag', 'full' or 'lowrank', got 'tied'"):
        exact_posterior(X, y, 2, covariance="tied")
    args, kwargs = GaussianGenerator(covariance="diag", method="exact").fit(X, y)._model_args()
    for fn in (model, guide):
        with pytest.raises(ValueError, match="covariance must be 'diag', 'full' or 'lowrank', got 'tied'"):
            fn(*args, **{**kwargs, "covariance": "tied"})


def test_a_curved_classifier_inherits_the_generators_quadratic_rule_and_a_linear_one_cannot():
    """Why labelled-only augmentation helps an MLP and not logistic regression (benchmarks/RESULTS.md).

    Two classes with one centre and covariances I and 9I: the Bayes rule is a sphere, which no
    linear rule can draw. With 10 rows per class the generator's own rule (its class covariances)
    is the ground truth the samples carry: an MLP trained on real + 1,000 synthetic rows per class
    lands on the generator's accuracy; logistic regression stays near chance with or without them.
    """
    d, gains = 4, []
    for seed in range(3):
        rng = np.random.default_rng(seed)

        def draw(n, rng=rng):
            return np.concatenate([rng.normal(0, s, size=(n, d)) for s in (1.0, 3.0)]), np.repeat([0, 1], n)

        X_k, y_k = draw(10)
        X_test, y_test = draw(2000)
        gen = GaussianGenerator(covariance="full", method="exact").fit(X_k, y_k)
        own = np.mean(gen.predict(X_test) == y_test)
        assert own > 0.75  # the generator's quadratic rule, learnt from 20 rows
        data = augment(X_k, y_k, gen, num_per_class=1000, seed=seed)
        mlp_real = mlp_classifier().fit(X_k, y_k).score(X_test, y_test)
        mlp_aug = mlp_classifier().fit(data.X, data.y).score(X_test, y_test)
        assert abs(mlp_aug - own) < 0.03, (mlp_aug, own)
        lr_real = default_classifier().fit(X_k, y_k).score(X_test, y_test)
        lr_aug = default_classifier().fit(data.X, data.y).score(X_test, y_test)
        assert lr_aug < 0.65 and abs(lr_aug - lr_real) < 0.03, (lr_real, lr_aug)
        gains.append(mlp_aug - mlp_real)
    assert np.mean(gains) > 0.02, gains
    with pytest.raises(ValueError, match="seed must be an integer in"):
        mlp_classifier(seed=-1)


def test_augmentation_helpers_check_their_inputs():
    from bayesgen.augment import AugmentedData, low_data_experiment

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.repeat([0, 1], 20)
    gen = GaussianGenerator(covariance="diag", method="exact").fit(X, y)
    with pytest.raises(ValueError, match=r"one label per row \(40\)"):
        augment(X, y[:10], gen, 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        augment(np.where(X > 2, np.nan, X), y, gen, 2)
    with pytest.raises(ValueError, match=r"y has unknown labels \['a', 'b'\]; the classes are \[0, 1\]"):
        augment(X, np.array(["a", "b"] * 20), gen, 2)
    with pytest.raises(ValueError, match="3 feature columns but the generator makes rows of 4"):
        augment(X[:, :3], y, gen, 2)
    frame = AugmentedData(pd.DataFrame(X, columns=list("abcd")), y, np.zeros(40, bool))
    with pytest.raises(ValueError, match=r"\['a'\] are already feature columns"):
        frame.to_frame(label="a")
    assert list(frame.to_frame().columns) == [*"abcd", "y", "synthetic"]
    nullable = pd.DataFrame(X, columns=list("abcd")).astype({"d": "Float64"})
    assert augment(nullable, y, gen, 2).synthetic.sum() == 4  # pandas nullable dtypes are numeric too
    with pytest.raises(ValueError, match=r"y_test has unknown labels \[7\]; the classes are \[0, 1\]"):
        tstr(gen, X, y, X, np.full(40, 7))
    with pytest.raises(ValueError, match="X_test has 3 feature columns, expected 4"):
        tstr(gen, X, y, X[:, :3], y)
    with pytest.raises(ValueError, match="quantile must be a number in \\(0, 1\\)"):
        memorization_check(X, X, X, quantile=1.5)
    with pytest.raises(ValueError, match="k_per_class must be an integer >= 1"):
        low_data_experiment(lambda: GaussianGenerator(covariance="diag", method="exact"), X, y, X, y, k_per_class=(0,))
    # Semi-supervised: every generator's fit receives the unlabelled rows, checked before any fit.
    fitted_with = []

    class Recording(GaussianGenerator):
        def fit(self, X, y=None, **kwargs):
            fitted_with.append(kwargs.get("unlabelled"))
            return super().fit(X, y, **kwargs)

    def make():
        return Recording(covariance="diag", method="exact")

    with pytest.raises(ValueError, match="unlabelled has 3 feature columns, expected 4"):
        low_data_experiment(make, X, y, X, y, k_per_class=(5,), repeats=2, unlabelled=X[:, :3])
    assert fitted_with == []
    table = low_data_experiment(
        make, X, y, X, y, k_per_class=(5,), num_synthetic_per_class=5, repeats=2, unlabelled=X[:30]
    )
    assert len(table) == 2 and len(fitted_with) == 2
    assert all(u is not None and u.shape == (30, 4) for u in fitted_with)


def test_one_sided_clip_fits_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    X, y = np.abs(rng.normal(size=(40, 3))), np.repeat([0, 1], 20)
    gen = GaussianGenerator(covariance="diag", method="exact", clip=(0.0, np.inf), seed=0).fit(X, y)
    assert gen.sample(200)[0].min() >= 0.0
    loaded = GaussianGenerator.load(gen.save(tmp_path / "g"))
    assert list(loaded.clip) == [0.0, np.inf]
    np.testing.assert_array_equal(loaded.sample(50)[0], gen.sample(50)[0])


# ----------------------------------------------------- principal subspace
def subspace_data(num_per_class=1500, d=40, noise_var=0.04, seed=0):
    """Three classes that differ only in a 3-D subspace of d features, isotropic noise off it.

    Returns X, y and the truth: centre, orthonormal basis, class means and
    covariances of the scores, and the residual variance.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, 3)))
    centre = rng.normal(size=d)
    means = np.array([[0.0, 0, 0], [4, -2, 1], [-3, 3, 2]])
    covs = []
    X, y = [], []
    for c in range(3):
        A = rng.normal(size=(3, 3))
        covs.append(A @ A.T + np.diag([2.0, 1.0, 0.5]))
        z = rng.multivariate_normal(means[c], covs[c], size=num_per_class)
        noise = rng.normal(size=(num_per_class, d)) * np.sqrt(noise_var)
        noise -= (noise @ basis) @ basis.T
        X.append(centre + z @ basis.T + noise)
        y.append(np.full(num_per_class, c))
    truth = {"centre": centre, "basis": basis, "means": means, "covs": np.stack(covs), "noise_var": noise_var}
    return np.concatenate(X), np.concatenate(y), truth


def true_subspace_log_density(X, truth, weights=(1 / 3, 1 / 3, 1 / 3)):
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    centred = X - truth["centre"]
    z = centred @ truth["basis"]
    r = centred - z @ truth["basis"].T
    per_class = np.stack(
        [
            np.log(w) + multivariate_normal(m, S).logpdf(z)
            for w, m, S in zip(weights, truth["means"], truth["covs"], strict=True)
        ],
        axis=1,
    )
    k = X.shape[1] - truth["basis"].shape[1]
    resid = -0.5 * ((r**2).sum(axis=1) / truth["noise_var"] + k * np.log(2 * np.pi * truth["noise_var"]))
    return logsumexp(per_class, axis=1) + resid


def test_principal_subspace_matches_the_eigendecomposition():
    from bayesgen.models.gaussian_generator import principal_subspace

    X, _, _ = subspace_data(num_per_class=200, d=12)
    sub = principal_subspace(X, 4)
    eigval, eigvec = np.linalg.eigh(np.cov(X, rowvar=False))  # ascending
    top = eigvec[:, -4:]
    np.testing.assert_allclose(sub["centre"], X.mean(axis=0))
    np.testing.assert_allclose(sub["basis"].T @ sub["basis"], np.eye(4), atol=1e-10)
    np.testing.assert_allclose(sub["basis"] @ sub["basis"].T, top @ top.T, atol=1e-8)
    assert sub["residual_variance"] == pytest.approx(eigval[:-4].mean(), rel=1e-10)


def test_subspace_model_recovers_the_simulated_parameters_and_density():
    X, y, truth = subspace_data()
    rng = np.random.default_rng(5)
    # Held-out rows from the same truth.
    rows, labels = [], []
    for c in range(3):
        z = rng.multivariate_normal(truth["means"][c], truth["covs"][c], size=1000)
        noise = rng.normal(size=(1000, X.shape[1])) * np.sqrt(truth["noise_var"])
        noise -= (noise @ truth["basis"]) @ truth["basis"].T
        rows.append(truth["centre"] + z @ truth["basis"].T + noise)
        labels.append(np.full(1000, c))
    X_new, y_new = np.concatenate(rows), np.concatenate(labels)

    gen = GaussianGenerator(covariance="full", method="exact", subspace=3).fit(X, y)
    sub = gen.subspace_
    assert sub["residual_variance"] == pytest.approx(truth["noise_var"], rel=0.05)
    np.testing.assert_allclose(sub["basis"] @ sub["basis"].T, truth["basis"] @ truth["basis"].T, atol=0.02)
    true_means = truth["centre"] + truth["means"] @ truth["basis"].T
    np.testing.assert_allclose(gen.class_means().to_numpy(), true_means, atol=0.15)
    # The log density of held-out rows is the true one, up to estimation error (nats per row).
    gap = gen.score_samples(X_new) - true_subspace_log_density(X_new, truth)
    assert abs(gap.mean()) < 0.05 and np.abs(gap).max() < 1.0
    # Classification as good as the Bayes rule under the true parameters.
    bayes = np.mean(
        np.argmax(
            np.stack(
                [
                    true_subspace_log_density(
                        X_new, {**truth, "means": truth["means"][[c]], "covs": truth["covs"][[c]]}, (1.0,)
                    )
                    for c in range(3)
                ],
                axis=1,
            ),
            axis=1,
        )
        == y_new
    )
    assert np.mean(gen.predict(X_new) == y_new) >= bayes - 0.01


def test_subspace_samples_follow_the_fitted_model():
    X, y, truth = subspace_data()
    gen = GaussianGenerator(covariance="full", method="exact", subspace=3).fit(X, y)
    Xs, ys = gen.sample(6000, y=1, seed=0)
    assert set(ys) == {1}
    centred = Xs - truth["centre"]
    z = centred @ truth["basis"]
    resid = centred - z @ truth["basis"].T
    np.testing.assert_allclose(z.mean(axis=0), truth["means"][1], atol=0.15)
    np.testing.assert_allclose(np.cov(z, rowvar=False), truth["covs"][1], atol=0.25 * np.abs(truth["covs"][1]).max())
    # Residual noise: the true variance in each of the d - 3 directions off the subspace.
    assert (resid**2).sum(axis=1).mean() / (X.shape[1] - 3) == pytest.approx(truth["noise_var"], rel=0.05)
    np.testing.assert_array_equal(gen.sample(50, seed=4)[0], gen.sample(50, seed=4)[0])


def test_residual_changes_the_density_but_not_the_class_probabilities():
    X, y, truth = subspace_data(num_per_class=300)
    gen = GaussianGenerator(covariance="full", method="exact", subspace=3).fit(X, y)
    basis = gen.subspace_["basis"]
    rng = np.random.default_rng(0)
    step = rng.normal(size=X.shape[1])
    step -= basis @ (basis.T @ step)  # orthogonal to the fitted subspace
    step *= 0.5 / np.linalg.norm(step)
    rows = X[:20]
    moved = rows + step
    np.testing.assert_allclose(gen.predict_proba(moved), gen.predict_proba(rows), atol=1e-9)
    # The residual is Normal(0, residual_variance) in each direction off the subspace.
    var = gen.subspace_["residual_variance"]
    centred = rows - gen.subspace_["centre"]
    r = centred - (centred @ basis) @ basis.T
    expected = -(((r + step) ** 2).sum(axis=1) - (r**2).sum(axis=1)) / (2 * var)
    np.testing.assert_allclose(gen.score_samples(moved) - gen.score_samples(rows), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("covariance", ["diag", "lowrank"])
def test_subspace_with_other_covariances_and_svi_classifies(covariance):
    X, y, truth = subspace_data(num_per_class=500)
    gen = GaussianGenerator(covariance=covariance, rank=2, subspace=3, num_steps=200, seed=0).fit(X, y)
    assert gen.subspace_["basis"].shape == (40, 3)
    # As accurate as the exact diagonal model fitted to the true scores (rank 2 is richer than diagonal).
    scores = (X - truth["centre"]) @ truth["basis"]
    reference = GaussianGenerator(covariance="diag", method="exact").fit(scores, y)
    assert np.mean(gen.predict(X) == y) >= np.mean(reference.predict(scores) == y) - 0.02
    idata = gen.to_arviz(num_samples=5)
    assert list(idata.posterior["loc"].coords["feature"].values) == ["pc1", "pc2", "pc3"]


def test_subspace_save_load_and_older_files(tmp_path, digits_split, make_older):
    X_tr, X_te, y_tr, _ = digits_split
    gen = GaussianGenerator(covariance="full", method="exact", subspace=20, constant_features="keep", clip=(0, 16)).fit(
        X_tr, y_tr
    )
    gen.save(tmp_path / "g")
    loaded = GaussianGenerator.load(tmp_path / "g", device=gen.device_)
    assert loaded.subspace == 20
    np.testing.assert_allclose(loaded.subspace_["basis"], gen.subspace_["basis"])
    assert loaded.subspace_["residual_variance"] == gen.subspace_["residual_variance"]
    np.testing.assert_array_equal(loaded.score_samples(X_te[:30]), gen.score_samples(X_te[:30]))
    np.testing.assert_array_equal(loaded.sample(20, seed=3)[0], gen.sample(20, seed=3)[0])
    # A file from before ``subspace`` loads as a model of the features themselves.
    plain = GaussianGenerator(covariance="full", method="exact", constant_features="keep").fit(X_tr, y_tr)
    plain.save(tmp_path / "old")
    make_older(tmp_path / "old", settings=("subspace",))
    old = GaussianGenerator.load(tmp_path / "old")
    assert old.subspace is None and old.subspace_ is None
    np.testing.assert_array_equal(old.score_samples(X_te[:30]), plain.score_samples(X_te[:30]))


def test_subspace_errors_are_clear():
    X, y, _ = subspace_data(num_per_class=10, d=8)
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="subspace"):
            GaussianGenerator(subspace=bad).fit(X, y)
    with pytest.raises(ValueError, match="subspace=8 .*8 modelled features"):
        GaussianGenerator(covariance="full", method="exact", subspace=8).fit(X, y)
    with pytest.raises(ValueError, match="subspace=5 .*4 training rows"):
        GaussianGenerator(covariance="diag", method="exact", subspace=5, constant_features="keep").fit(
            np.c_[X[[0, 1, 10, 11]], X[[0, 1, 10, 11]]][:, :16], y[[0, 1, 10, 11]]
        )
    with pytest.raises(ValueError, match="rank=3 must be below the 3 principal components"):
        GaussianGenerator(covariance="lowrank", rank=3, subspace=3).fit(X, y)
    flat = np.c_[X[:, :2], X[:, :2] * 2, X[:, :2] - 1]  # rank 2 in 6 features
    with pytest.raises(ValueError, match="hold all the variance"):
        GaussianGenerator(covariance="full", method="exact", subspace=2).fit(flat, y)


def test_subspace_file_without_its_tensors_is_a_clear_error(tmp_path, make_older):
    from bayesgen.models._base import ModelFileError

    X, y, _ = subspace_data(num_per_class=100, d=10)
    GaussianGenerator(covariance="diag", method="exact", subspace=3).fit(X, y).save(tmp_path / "g")
    make_older(tmp_path / "g", tensors=("subspace.basis",))
    with pytest.raises(ModelFileError, match="subspace=3 does not match .* lack a principal subspace"):
        GaussianGenerator.load(tmp_path / "g")
    # A setting edited after fitting: the file holds a subspace its setting denies.
    gen = GaussianGenerator(covariance="diag", method="exact", subspace=3).fit(X, y)
    gen.subspace = None
    gen.save(tmp_path / "h")
    with pytest.raises(ModelFileError, match="subspace=None does not match .* hold a principal subspace"):
        GaussianGenerator.load(tmp_path / "h")


def test_unlabelled_rows_find_the_subspace_that_few_labelled_rows_miss():
    X, y, truth = subspace_data(num_per_class=1000, noise_var=0.5)
    rng = np.random.default_rng(3)
    few = np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(3)])
    rest = np.setdiff1d(np.arange(len(X)), few)
    projector = truth["basis"] @ truth["basis"].T

    def error(gen):
        basis = gen.subspace_["basis"]
        return np.linalg.norm(basis @ basis.T - projector)

    alone = GaussianGenerator(covariance="diag", method="exact", subspace=3).fit(X[few], y[few])
    helped = GaussianGenerator(covariance="diag", method="exact", subspace=3, unlabelled_iterations=0).fit(
        X[few], y[few], unlabelled=X[rest]
    )
    assert error(helped) < 0.2 and error(helped) < error(alone) / 3
    assert helped.subspace_["residual_variance"] == pytest.approx(0.5, rel=0.05)
    assert helped.class_counts_.tolist() == [5, 5, 5]
    assert helped.unlabelled_history_ is None  # no EM: the class model saw the labelled rows only
    # With EM (the default) the subspace is the same; the class model learns from the unlabelled rows too.
    em = GaussianGenerator(covariance="diag", method="exact", subspace=3).fit(X[few], y[few], unlabelled=X[rest])
    np.testing.assert_allclose(np.abs(em.subspace_["basis"]), np.abs(helped.subspace_["basis"]), atol=1e-10)
    assert em.class_counts_.tolist() == [5, 5, 5]
    # The history is log p(x) as score_samples reports it, the density outside the subspace included.
    assert em.unlabelled_history_[-1] == pytest.approx(em.score_samples(X[rest]).mean(), abs=1e-6)


def two_gaussian_classes(num_per_class, seed):
    means = np.array([[-1.5, 0.0], [1.5, 1.0]])
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.multivariate_normal(m, cov, num_per_class) for m in means])
    return X, np.repeat([0, 1], num_per_class), means, cov


def test_unlabelled_rows_teach_the_class_model_by_em(tmp_path):
    # Two correlated Gaussian classes, 3 labelled rows each and 2,000 unlabelled: EM finds the true means
    # and classifies as well as the Bayes rule under the true parameters.
    from scipy import stats

    X, y, means, cov = two_gaussian_classes(1000, seed=0)
    rng = np.random.default_rng(2)  # these 6 labelled rows put the labelled-only fit 5 points below Bayes
    few = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in (0, 1)])
    rest = np.setdiff1d(np.arange(len(X)), few)
    alone = GaussianGenerator(covariance="full", method="exact").fit(X[few], y[few])
    em = GaussianGenerator(covariance="full", method="exact").fit(X[few], y[few], unlabelled=X[rest])

    def mean_error(gen):
        return np.abs(gen.class_means().to_numpy() - means).max()

    assert mean_error(em) < 0.15 and mean_error(em) < mean_error(alone) / 2
    assert em.class_weights().to_numpy() == pytest.approx([0.5, 0.5], abs=0.05)
    X_test, y_test, _, _ = two_gaussian_classes(2000, seed=2)
    bayes = np.argmax([stats.multivariate_normal(m, cov).logpdf(X_test) for m in means], axis=0)
    bayes_accuracy = np.mean(bayes == y_test)
    assert np.mean(em.predict(X_test) == y_test) > bayes_accuracy - 0.01
    assert np.mean(alone.predict(X_test) == y_test) < bayes_accuracy - 0.01  # what EM added
    history = em.unlabelled_history_
    assert 2 <= len(history) <= 21 and history[-1] > history[0]
    assert history[-1] == pytest.approx(em.score_samples(X[rest]).mean(), abs=1e-6)
    # The model holds the unlabelled rows too, their class summed out: the ArviZ log-likelihood of each is
    # log Σ_c w_c N(x; loc_c, precision_c⁻¹) under every posterior draw (model space), and k-hat judges EM's
    # posterior against that whole model.
    from scipy.special import logsumexp

    tree = em.to_arviz(num_samples=10)
    post, xu = tree.posterior, tree.observed_data["x_unlabelled"].values
    assert xu.shape == (len(rest), 2) and tree.posterior_predictive["x_unlabelled"].shape == (2, 5, len(rest), 2)
    w, loc, prec = (post[k].values.reshape(10, *post[k].shape[2:]) for k in ("weights", "loc", "precision"))
    comp = np.stack(
        [
            [stats.multivariate_normal(loc[s, c], np.linalg.inv(prec[s, c])).logpdf(xu) for c in (0, 1)]
            for s in range(10)
        ]
    )
    truth = logsumexp(np.log(w)[:, :, None] + comp, axis=1)
    np.testing.assert_allclose(tree.log_likelihood["x_unlabelled"].values.reshape(10, -1), truth, rtol=1e-9, atol=1e-9)
    assert np.isfinite(em.vi_diagnostic(num_samples=100, warn=False).khat)
    loaded = GaussianGenerator.load(em.save(tmp_path / "em"))
    np.testing.assert_array_equal(loaded.unlabelled_history_, history)
    np.testing.assert_allclose(loaded.predict_proba(X_test[:50]), em.predict_proba(X_test[:50]), rtol=1e-6)
    assert loaded._model_args()[1]["x_unlabelled"].shape == (len(rest), 2)
    # A smaller weight keeps the fit closer to the labelled rows; 0 passes use the rows for nothing.
    light = GaussianGenerator(covariance="full", method="exact", unlabelled_weight=0.001).fit(
        X[few], y[few], unlabelled=X[rest]
    )
    assert mean_error(em) < mean_error(light) < mean_error(alone) + 1e-9


def test_full_predictive_log_prob_is_the_multivariate_t():
    # The class scores of the exact full-covariance path (one triangular solve per class) against Pyro's
    # MultivariateStudentT plus the log class weights.
    import pyro.distributions as dist

    from bayesgen.models._gaussian_covariance import predictive_joint_log_prob

    gen = torch.Generator().manual_seed(0)
    c, d = 3, 5
    a = torch.randn(c, d, d, generator=gen, dtype=torch.float64)
    tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(d, dtype=torch.float64))
    pred = {
        "weights": torch.tensor([2.0, 5.0, 3.0], dtype=torch.float64),
        "loc": torch.randn(c, d, generator=gen, dtype=torch.float64),
        "df": torch.tensor([1.5, 4.0, 30.0], dtype=torch.float64),
        "scale_tril": tril,
    }
    x = 3.0 * torch.randn(40, d, generator=gen, dtype=torch.float64)
    truth = dist.MultivariateStudentT(pred["df"], pred["loc"], tril).log_prob(x.unsqueeze(-2)) + torch.log(
        pred["weights"] / 10.0
    )
    torch.testing.assert_close(predictive_joint_log_prob(pred, "full", x), truth, rtol=1e-10, atol=1e-10)


def shifted_gaussian_classes(num_per_class, shift, seed):
    """Two unit-covariance Gaussian classes at (-1.5, 0) and (1.5, 0), every row moved ``shift`` along x."""
    rng = np.random.default_rng(seed)
    X = np.concatenate(
        [rng.normal([-1.5, 0.0], 1.0, (num_per_class, 2)), rng.normal([1.5, 0.0], 1.0, (num_per_class, 2))]
    )
    return X + [shift, 0.0], np.repeat([0, 1], num_per_class)


def test_em_guard_weights_down_or_drops_unlabelled_rows_from_another_distribution():
    # The unlabelled rows are the labelled rows' two classes moved 2.5 to the right: EM's Gaussian classes follow
    # them away from the labels. The labelled-only fit is near the Bayes rule (0.93 on its own distribution).
    X, y = shifted_gaussian_classes(50, 0.0, seed=1)
    X_test, y_test = shifted_gaussian_classes(2000, 0.0, seed=99)

    def accuracy(gen):
        return np.mean(gen.predict(X_test) == y_test)

    alone = GaussianGenerator(covariance="full", method="exact").fit(X, y)
    assert accuracy(alone) > 0.92
    X_u = shifted_gaussian_classes(2000, 2.5, seed=11)[0]
    with pytest.warns(UserWarning, match="moved .* of the 100 labelled rows from their own class"):
        forced = GaussianGenerator(covariance="full", method="exact", unlabelled_weight=1.0).fit(X, y, unlabelled=X_u)
    assert accuracy(forced) < accuracy(alone) - 0.05  # what the guard is for
    assert forced.unlabelled_weight_ == 1.0 and forced.unlabelled_scores_ is None and forced.unlabelled_moved_ > 0.05
    with pytest.warns(UserWarning, match="classified held-out labelled rows worse"):
        auto = GaussianGenerator(covariance="full", method="exact").fit(X, y, unlabelled=X_u)
    assert 0 < auto.unlabelled_weight_ < 1 and accuracy(auto) > accuracy(alone) - 0.02
    scores = auto.unlabelled_scores_
    assert list(scores.index) == [0.0, 1.0, 0.3, 0.1] and (scores["rows"] == 100).all()
    assert scores.loc[1.0, "worse"] and not scores.loc[auto.unlabelled_weight_, "worse"]
    # Ten times as many such rows: every weight classifies held-out rows worse, and the class model is the
    # labelled-only one (the same posterior predictive; the Pyro model holds no unlabelled rows).
    X_many = shifted_gaussian_classes(20000, 2.5, seed=12)[0]
    with pytest.warns(UserWarning, match="fitted to the labelled rows alone"):
        dropped = GaussianGenerator(covariance="full", method="exact").fit(X, y, unlabelled=X_many)
    assert dropped.unlabelled_weight_ == 0.0 and dropped.unlabelled_scores_["worse"].iloc[1:].all()
    assert dropped.unlabelled_history_ is None and "x_unlabelled" not in dropped._model_args()[1]
    np.testing.assert_allclose(dropped.predict_proba(X_test[:200]), alone.predict_proba(X_test[:200]), rtol=1e-9)


def test_em_guard_keeps_em_when_the_classes_are_gaussian(tmp_path):
    # Two correlated Gaussian classes (the model is right), 10 labelled rows each and 1,980 unlabelled: the guard
    # keeps EM, which reaches the Bayes rule's accuracy where the labelled rows alone fall short, without a warning.
    from scipy import stats

    X, y, means, cov = two_gaussian_classes(1000, seed=0)
    rng = np.random.default_rng(0)
    few = np.concatenate([rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in (0, 1)])
    rest = np.setdiff1d(np.arange(len(X)), few)
    X_test, y_test, _, _ = two_gaussian_classes(2000, seed=2)
    bayes = np.mean(np.argmax([stats.multivariate_normal(m, cov).logpdf(X_test) for m in means], axis=0) == y_test)
    alone = GaussianGenerator(covariance="full", method="exact").fit(X[few], y[few])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        auto = GaussianGenerator(covariance="full", method="exact").fit(X[few], y[few], unlabelled=X[rest])
    assert auto.unlabelled_weight_ > 0 and not auto.unlabelled_scores_["worse"].any()
    assert np.mean(alone.predict(X_test) == y_test) < bayes - 0.01  # what EM adds
    assert np.mean(auto.predict(X_test) == y_test) > bayes - 0.01
    loaded = GaussianGenerator.load(auto.save(tmp_path / "auto"))
    assert loaded.unlabelled_weight_ == auto.unlabelled_weight_ and loaded.unlabelled_moved_ == auto.unlabelled_moved_
    pd.testing.assert_frame_equal(loaded.unlabelled_scores_, auto.unlabelled_scores_, check_dtype=False)


def test_one_labelled_row_per_class():
    # Alone: no within-class spread to learn a covariance from, warned. With unlabelled rows EM takes the
    # scale and the pooled covariance from them, and finds the true classes given enough passes.
    from scipy import stats

    X, y, means, cov = two_gaussian_classes(1000, seed=0)
    few = np.concatenate([np.random.default_rng(0).choice(np.flatnonzero(y == c), 1) for c in (0, 1)])
    rest = np.setdiff1d(np.arange(len(X)), few)
    with pytest.warns(UserWarning, match="every class has a single labelled row"):
        GaussianGenerator(covariance="full", method="exact").fit(X[few], y[few])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two rows in one class: no warning
        GaussianGenerator(covariance="full", method="exact").fit(X[[0, 1, 1500]], y[[0, 1, 1500]])
        em = GaussianGenerator(covariance="full", method="exact", unlabelled_iterations=300).fit(
            X[few], y[few], unlabelled=X[rest]
        )
    assert em.unlabelled_converged_ and np.abs(em.class_means().to_numpy() - means).max() < 0.1
    X_test, y_test, _, _ = two_gaussian_classes(2000, seed=2)
    bayes = np.argmax([stats.multivariate_normal(m, cov).logpdf(X_test) for m in means], axis=0)
    assert np.mean(em.predict(X_test) == y_test) > np.mean(bayes == y_test) - 0.01
    short = GaussianGenerator(covariance="full", method="exact", unlabelled_iterations=3).fit(
        X[few], y[few], unlabelled=X[rest]
    )
    assert short.unlabelled_converged_ is False and len(short.unlabelled_history_) == 4


def test_soft_rows_with_one_hot_weights_are_labelled_rows():
    # The M-step's weighted statistics, checked against the closed form with hard labels.
    from bayesgen.models.gaussian_generator import exact_posterior, pooled_statistics

    X, y, _, _ = two_gaussian_classes(20, seed=3)
    first, second = np.arange(0, 40, 2), np.arange(1, 40, 2)
    pooled = pooled_statistics(X, y, 2)
    for covariance in ("diag", "full"):
        hard = exact_posterior(X, y, 2, covariance=covariance, pooled=pooled)
        soft = exact_posterior(
            X[first], y[first], 2, covariance=covariance, pooled=pooled, extra=(X[second], np.eye(2)[y[second]])
        )
        for key in hard:
            np.testing.assert_allclose(soft[key], hard[key], rtol=1e-9, atol=1e-12, err_msg=f"{covariance} {key}")


def test_unlabelled_rows_are_checked():
    X, y, _ = subspace_data(num_per_class=30, d=8)
    frame = pd.DataFrame(X, columns=list("abcdefgh"))
    with pytest.raises(ValueError, match="only to find the principal subspace"):
        GaussianGenerator(covariance="diag", method="exact", unlabelled_iterations=0).fit(X, y, unlabelled=X)
    with pytest.raises(ValueError, match="learning from unlabelled rows \\(EM\\) needs method='exact'"):
        GaussianGenerator(covariance="lowrank", rank=2, num_steps=5).fit(X, y, unlabelled=X)
    for name, value in (
        ("unlabelled_iterations", -1),
        ("unlabelled_iterations", 2.5),
        ("unlabelled_weight", 0.0),
        ("unlabelled_weight", "high"),
        ("unlabelled_weight", -1.0),
        ("unlabelled_weight", None),
    ):
        with pytest.raises((ValueError, TypeError), match=name):
            GaussianGenerator(covariance="diag", method="exact", **{name: value}).fit(X, y, unlabelled=X)
    with pytest.raises(ValueError, match="unlabelled"):
        GaussianGenerator(covariance="diag", method="exact", subspace=2).fit(X, y, unlabelled=X[:, :5])
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianGenerator(covariance="diag", method="exact", subspace=2).fit(X, y, unlabelled=bad)
    with pytest.raises(ValueError, match="unlabelled lacks feature columns"):
        GaussianGenerator(covariance="diag", method="exact", subspace=2).fit(
            frame.assign(y=y), label="y", unlabelled=frame.drop(columns="c")
        )
    gen = GaussianGenerator(covariance="diag", method="exact", subspace=2).fit(
        frame.assign(y=y), label="y", unlabelled=frame[list("hgfedcba")]
    )  # columns matched by name
    ref = GaussianGenerator(covariance="diag", method="exact", subspace=2).fit(X, y, unlabelled=X)
    np.testing.assert_allclose(np.abs(gen.subspace_["basis"]), np.abs(ref.subspace_["basis"]), atol=1e-10)


# ------------------------------------------------------- bounded-memory prediction
class _LargestTensor(torch.overrides.TorchFunctionMode):
    """Records the most elements of any tensor a torch call returns while the mode is active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in torch.utils._pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.numel = max(self.numel, leaf.numel())
        return out


def test_chunked_full_predictive_equals_the_per_row_multivariate_t(monkeypatch):
    # Chunks of 4 rows (the last one short) against Pyro's MultivariateStudentT evaluated one row at a time.
    import pyro.distributions as dist

    from bayesgen.models import _gaussian_distributions
    from bayesgen.models._gaussian_covariance import predictive_joint_log_prob

    X, y, _ = simulated(num_per_class=(60, 40, 30))
    gen = GaussianGenerator(covariance="full", method="exact").fit(X, y)
    pred = gen._predictive
    x = torch.as_tensor(gen._to_model_space(X[:23] + 0.5), dtype=torch.float64)
    monkeypatch.setattr(_gaussian_distributions, "CHUNK_ELEMENTS", 4 * x.shape[1] * 3)
    chunked = predictive_joint_log_prob(pred, "full", x)
    log_w = torch.log(pred["weights"] / pred["weights"].sum())
    truth = torch.stack(
        [dist.MultivariateStudentT(pred["df"], pred["loc"], pred["scale_tril"]).log_prob(row) + log_w for row in x]
    )
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(chunked, truth, rtol=1e-12, atol=1e-12)


def test_chunked_lowrank_draws_equal_the_per_row_low_rank_normal(monkeypatch):
    # The SVI path: per-draw class densities of chunks of 5 rows against torch's LowRankMultivariateNormal per row.
    import pyro.distributions as dist

    from bayesgen.models import _gaussian_distributions

    X, y, _ = simulated(num_per_class=(60, 40, 30))
    gen = GaussianGenerator(covariance="lowrank", rank=2, noise="diagonal", num_steps=30, seed=0).fit(X, y)
    xv = gen._to_model_space(X[:17])
    monkeypatch.setattr(_gaussian_distributions, "CHUNK_ELEMENTS", 5 * xv.shape[1] * 3)
    joint = gen._joint_log_prob(xv, 4, 1)
    draws = gen._draw_parameters(4, gen._method_seed(1))
    x = torch.as_tensor(xv, dtype=torch.float64)
    per_draw = []
    for s in range(4):
        fn = dist.LowRankMultivariateNormal(
            draws["loc"][s].double(), draws["cov_factor"][s].double(), draws["cov_diag"][s].double()
        )
        per_draw.append(torch.stack([fn.log_prob(row) for row in x]) + draws["weights"][s].double().log())
    truth = torch.logsumexp(torch.stack(per_draw), 0) - np.log(4)
    torch.testing.assert_close(joint.double(), truth, rtol=1e-5, atol=1e-4)


def test_full_covariance_prediction_and_sampling_never_copy_a_factor_per_row():
    # No torch call may return a tensor of rows x d x d elements: each class's d x d factor is applied to
    # a block of rows at once. The largest honest intermediate is (classes, d, rows).
    rng = np.random.default_rng(0)
    n, d = 400, 30
    X, y = rng.normal(size=(n, d)), np.arange(n) % 3
    gen = GaussianGenerator(covariance="full", method="exact").fit(X, y)
    for call in (lambda: gen.predict_proba(X), lambda: gen.score_samples(X), lambda: gen.sample(n, seed=0)):
        with _LargestTensor() as seen:
            call()
        assert seen.numel <= 3 * d * n, seen.numel  # rows x d x d would be 360,000


# ------------------------------------------------- the low-rank guide's parts
def test_lowrank_location_conditional_is_the_exact_gaussian_posterior():
    # loc ~ Normal(m0, diag(s²)), n rows ~ Normal(loc, W Wᵀ + diag(ψ)): against the dense formula
    # precision = diag(1/s²) + n Σ⁻¹, mean = cov (m0/s² + n Σ⁻¹ x̄), in float64 and in float32 with
    # noise 10⁴ times below the factors' variance.
    from bayesgen.models._gaussian_distributions import lowrank_loc_conditional

    rng = np.random.default_rng(0)
    C, d, r = 3, 5, 2
    for dtype, noise, tol in ((torch.float64, 1.0, 1e-10), (torch.float32, 1e-4, 2e-3)):
        W = rng.normal(size=(C, d, r))
        psi = noise * (rng.uniform(size=(C, d)) + 0.1)
        n = np.array([1, 7, 3000])
        xbar, m0, s = rng.normal(size=(C, d)), rng.normal(size=d), rng.uniform(size=d) + 0.5
        args = [torch.as_tensor(a, dtype=dtype) for a in (W, psi, n, xbar, m0, s)]
        q = lowrank_loc_conditional(*args)
        for c in range(C):
            sigma = W[c] @ W[c].T + np.diag(psi[c])
            cov = np.linalg.inv(np.diag(1 / s**2) + n[c] * np.linalg.inv(sigma))
            mean = cov @ (m0 / s**2 + n[c] * np.linalg.solve(sigma, xbar[c]))
            sd = np.sqrt(np.diag(cov))
            np.testing.assert_allclose(q.mean[c].double().numpy(), mean, atol=tol * sd.max())
            np.testing.assert_allclose(
                q.covariance_matrix[c].double().numpy() / np.outer(sd, sd), cov / np.outer(sd, sd), atol=tol
            )


def test_lowrank_locations_have_their_posterior_spread():
    # Two classes of 2,000 rows from a known rank-1 model: the covariance is pinned down, so each location's
    # posterior sd is sqrt(diag((diag(1/s²) + n Σ⁻¹)⁻¹)) with the true Σ (the prior's share is negligible).
    rng = np.random.default_rng(3)
    d, n = 4, 2000
    X, y, sds = [], [], []
    for c in range(2):
        w = rng.normal(size=(d, 1))
        sigma = w @ w.T + np.diag(rng.uniform(0.2, 0.6, size=d))
        X.append(rng.multivariate_normal(np.full(d, 3.0 * c), sigma, size=n))
        y.append(np.full(n, c))
        sds.append(np.sqrt(np.diag(np.linalg.inv(n * np.linalg.inv(sigma)))))
    gen = GaussianGenerator(covariance="lowrank", rank=1, noise="diagonal", num_steps=200, seed=0)
    gen.fit(np.concatenate(X), np.concatenate(y))
    loc = gen.posterior(2000, seed=0)["loc"]
    np.testing.assert_allclose(loc.std(axis=0) / np.array(sds), 1.0, atol=0.15)
    np.testing.assert_allclose(gen.class_means().to_numpy(), loc.mean(axis=0), atol=0.5 * min(map(min, sds)))


def test_lowrank_start_information_is_the_gaussian_fisher_information():
    # The guide's scales start from the Fisher information of n rows about W and log ψ: against autograd's
    # Hessian of the expected log-likelihood n E[log N(x; 0, Σ(θ))] at Σ_true = Σ(θ).
    from bayesgen.models._gaussian_algebra import _lowrank_information

    rng = np.random.default_rng(0)
    d, r, n = 5, 2, 37
    W, psi = rng.normal(size=(d, r)), rng.uniform(0.3, 1.0, size=d)
    truth = torch.as_tensor(W @ W.T + np.diag(psi))

    def expected_log_lik(theta: torch.Tensor) -> torch.Tensor:
        w, log_psi = theta[: d * r].reshape(d, r), theta[d * r :]
        sigma = w @ w.T + torch.diag(log_psi.exp())
        return -n / 2 * (torch.logdet(sigma) + torch.trace(torch.linalg.solve(sigma, truth)))

    theta = torch.as_tensor(np.concatenate([W.ravel(), np.log(psi)]))
    fisher = -torch.diagonal(torch.autograd.functional.hessian(expected_log_lik, theta)).numpy()
    info_w, info_psi = _lowrank_information(W, psi, n)
    np.testing.assert_allclose(info_w.ravel(), fisher[: d * r], rtol=1e-8)
    np.testing.assert_allclose(info_psi, fisher[d * r :], rtol=1e-8)


@pytest.mark.parametrize("noise", ["isotropic", "diagonal"])
def test_lowrank_start_information_is_taken_under_the_noise_the_model_has(noise):
    # The factors' start scales come from the Fisher information at the start's covariance W Wᵀ + noise, with
    # the noise the model fits: ψ̄ I (isotropic) or diag(ψ) (diagonal).
    from bayesgen.models._gaussian_algebra import _lowrank_information, lowrank_initial_params

    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 6)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.2])
    y = np.repeat([0, 1], 40)
    start = lowrank_initial_params(x, y, 2, S0=np.cov(x.T), shrinkage=1.0, rank=2, noise=noise)
    for c in range(2):
        W = start["cov_factor_loc"][c]
        if noise == "isotropic":
            psi = np.full(6, np.exp(start["noise_loc"][c]))
        else:
            psi = np.exp(start["cov_diag_loc"][c])
        expected, expected_psi = _lowrank_information(W, psi, 40)
        np.testing.assert_allclose(start["cov_factor_information"][c], expected, rtol=1e-10)
        if noise == "diagonal":
            np.testing.assert_allclose(start["cov_diag_information"][c], expected_psi, rtol=1e-10)
        else:
            precision = np.linalg.inv(W @ W.T + np.diag(psi))
            np.testing.assert_allclose(start["noise_information"][c], 40 * psi[0] ** 2 * np.sum(precision**2) / 2)
    # The other noise's information is not returned.
    other = "cov_diag_information" if noise == "isotropic" else "noise_information"
    assert other not in start
    # With the whole information (the full guide's start), the same entries come from its diagonal.
    full = lowrank_initial_params(x, y, 2, S0=np.cov(x.T), shrinkage=1.0, rank=2, noise=noise, full_information=True)
    for key in (
        "cov_factor_loc",
        "cov_factor_information",
        "cov_diag_information" if noise == "diagonal" else "noise_information",
    ):
        np.testing.assert_allclose(full[key], start[key], rtol=1e-10)


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_lowrank_information_matrix_is_the_whole_gaussian_fisher_information(noise):
    # Against autograd's Hessian of n E[log N(x; 0, Σ(θ))] at Σ_true = Σ(θ), every pair of parameters.
    from bayesgen.models._gaussian_algebra import _lowrank_information, lowrank_information_matrix

    rng = np.random.default_rng(1)
    d, r, n = 5, 2, 23
    W = rng.normal(size=(d, r))
    psi = np.full(d, 0.6) if noise == "isotropic" else rng.uniform(0.3, 1.0, size=d)
    truth = torch.as_tensor(W @ W.T + np.diag(psi))

    def expected_log_lik(theta: torch.Tensor) -> torch.Tensor:
        w, log_psi = theta[: d * r].reshape(d, r), theta[d * r :]
        sigma = w @ w.T + torch.diag(log_psi.exp().expand(d))
        return -n / 2 * (torch.logdet(sigma) + torch.trace(torch.linalg.solve(sigma, truth)))

    log_psi = np.log(psi[:1]) if noise == "isotropic" else np.log(psi)
    theta = torch.as_tensor(np.concatenate([W.ravel(), log_psi]))
    fisher = -torch.autograd.functional.hessian(expected_log_lik, theta).numpy()
    info = lowrank_information_matrix(W, psi, n, noise)
    np.testing.assert_allclose(info, fisher, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.diag(info)[: d * r], _lowrank_information(W, psi, n)[0].ravel(), rtol=1e-10)
    # Rotating the factors leaves Σ alone: that direction carries no information.
    skew = np.array([[0.0, 1.0], [-1.0, 0.0]])
    rotation = np.concatenate([(W @ skew).ravel(), np.zeros(len(log_psi))])
    assert rotation @ info @ rotation < 1e-8 * np.abs(info).max()


def test_lowrank_start_turns_each_class_to_the_factors_nearest_the_prior_centre():
    # The PCA start is defined up to a rotation of its factors; the one nearest the prior's centre W0 (orthogonal
    # Procrustes) is the likeliest under the prior. W Wᵀ stays the class's probabilistic PCA.
    from bayesgen.models._gaussian_algebra import lowrank_initial_params, ppca_factors

    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 5)) @ rng.normal(size=(5, 5))
    y = np.repeat([0, 1, 2], 30)
    S0 = np.cov(x.T)
    start = lowrank_initial_params(x, y, 3, S0=S0, shrinkage=2.0, rank=2, noise="isotropic")
    W0, _ = ppca_factors(S0, 2)
    for c in range(3):
        W = start["cov_factor_loc"][c]
        xc = x[y == c] - x[y == c].mean(axis=0)
        own, _ = ppca_factors((2.0 * S0 + xc.T @ xc) / (2.0 + 30), 2)
        np.testing.assert_allclose(W @ W.T, own @ own.T, atol=1e-10)
        for _ in range(20):
            angle = rng.uniform(0, 2 * np.pi)
            turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            for flip in (np.eye(2), np.diag([1.0, -1.0])):
                assert np.linalg.norm(W - W0) <= np.linalg.norm(W @ turn @ flip - W0) + 1e-12


def test_full_factor_guide_finds_the_correlated_posterior_of_the_factors_and_the_noise():
    # 2,000 rows of one class from a rank-1 model with isotropic noise and equal variances (so standardising
    # keeps it rank 1 plus isotropic): the posterior of (W, log ψ) is close to Normal with covariance
    # (n·Fisher + prior precision)⁻¹ at its centre. The full guide recovers its sds and correlations; the
    # mean-field guide cannot have the correlations.
    from bayesgen.models._gaussian_algebra import lowrank_information_matrix

    rng = np.random.default_rng(5)
    d, n = 3, 2000
    w, psi = np.array([[1.2], [-1.2], [1.2]]), 0.5
    X = rng.multivariate_normal(np.zeros(d), w @ w.T + psi * np.eye(d), size=n)
    X = np.concatenate([X, rng.normal(size=(40, d))])  # a second class, only so that there are two
    y = np.repeat([0, 1], [n, 40])
    draws = {}
    for kind in ("full", "mean_field"):
        gen = GaussianGenerator(rank=1, factor_guide=kind, num_steps=600, learning_rate=0.01, seed=0).fit(X, y)
        post = gen.posterior(4000, seed=0)
        scale = gen._scale  # the draws are in the features' units; the fit in standardised ones
        draws[kind] = np.concatenate(
            [post["cov_factor"][:, 0, :, 0] / scale, np.log(post["cov_diag"][:, 0, :1] / scale[0] ** 2)], axis=1
        )
        if kind == "full":
            assert gen.factor_guide_ == "full"
            prior_sd = np.concatenate([gen._prior["factor_scale"].cpu().numpy().ravel(), [0.5]])
    u = draws["full"]
    centre = u.mean(axis=0)
    info = lowrank_information_matrix(centre[:d, None], np.full(d, np.exp(centre[d])), n, "isotropic")
    reference = np.linalg.inv(info + np.diag(prior_sd**-2.0))
    ref_sd = np.sqrt(np.diag(reference))
    ref_corr = reference / np.outer(ref_sd, ref_sd)
    assert np.abs(ref_corr - np.eye(d + 1)).max() > 0.3  # there are correlations to find
    np.testing.assert_allclose(u.std(axis=0) / ref_sd, 1.0, atol=0.2)
    assert np.abs(np.corrcoef(u.T) - ref_corr).max() < 0.15, (np.corrcoef(u.T).round(2), ref_corr.round(2))
    assert np.abs(np.corrcoef(draws["mean_field"].T) - ref_corr).max() > 0.3


def test_full_factor_guide_saves_loads_converts_and_refuses_what_it_cannot_hold(tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(80, 4))
    y = np.repeat([0, 1], 40)
    gen = GaussianGenerator(rank=2, factor_guide="full", num_steps=30, seed=0).fit(X, y)
    assert set(gen.posterior(10, seed=0)) == {"weights", "loc", "cov_factor", "cov_diag"}
    tree = gen.to_arviz(20)
    assert "factor_noise" not in tree.posterior  # the guide's auxiliary joint draw is not a model site
    assert tree.posterior.sizes["chain"] * tree.posterior.sizes["draw"] == 20
    gen.save(tmp_path / "g")
    back = GaussianGenerator.load(tmp_path / "g")
    assert back.factor_guide_ == "full"
    for site, value in gen.posterior(50, seed=1).items():
        np.testing.assert_array_equal(back.posterior(50, seed=1)[site], value)
    with pytest.raises(ValueError, match="factor_guide must be"):
        GaussianGenerator(factor_guide="auto").fit(X, y)
    with pytest.raises(ValueError, match="factor_guide='full' would hold"):
        GaussianGenerator(rank=70, factor_guide="full", num_steps=5).fit(
            rng.normal(size=(100, 72)), np.repeat([0, 1], 50)
        )

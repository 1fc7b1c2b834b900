# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Generating labelled data: the Bayes classifier as a generator
#
# Pinned to `models/gaussian_digits.toml` (seed 0); `BAYESGEN_SMOKE=1` runs a fast version.
# We fit p(y) and p(x | y) to scikit-learn's 8×8 handwritten digits, sample new digits,
# classify with p(y | x), augment a small training set, and check whether the synthetic
# rows are useful and new.

# %%
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from bayesgen import GaussianGenerator, augment
from bayesgen.augment import default_classifier, low_data_experiment, memorization_check, tstr
from bayesgen.datasets import load_digits
from bayesgen.plots import show_figure
from bayesgen.runs.spec import load_spec

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "gaussian_generator"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


spec = load_spec(ROOT / "models" / "gaussian_digits.toml")
seed = spec["run"]["seed"]
X, y = load_digits()  # pixels in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=spec["data"]["test_fraction"], random_state=seed, stratify=y
)
print(X_train.shape, X_test.shape)

# %% [markdown]
# ## Fit
# Each class is a Gaussian whose mean and covariance shrink toward the pooled estimate
# (so rare classes borrow strength). `lowrank` covariance (10 factors plus one noise
# variance per class, as the spec's `noise = "isotropic"` says) scales to 784-pixel images;
# pixels that are constant in the training rows (3 border pixels in all the digits, 4 in
# this split) are held fixed; samples are clipped to [0, 1].

# %%
settings = {**spec["model"], **spec["inference"], "seed": seed}
if SMOKE:
    settings.update(num_steps=150, average_last=20)
gen = GaussianGenerator(**settings).fit(X_train, y_train)
print(f"fitted in {gen.fit_seconds_:.1f} s, {gen.n_steps_} SVI steps")
print(gen.class_weights().round(3).to_dict())

# %% [markdown]
# ## Sample
# `sample(n)` draws classes in the data's proportions, `y="uniform"` balances them, and
# `y=k` generates one class.

# %%
show(gen.plot_samples(8, image_shape=(8, 8), seed=seed), "samples")
X_new, y_new = gen.sample(5, y=7, seed=seed)
print(y_new)

# %% [markdown]
# ## Classify with p(y | x)

# %%
accuracy = np.mean(gen.predict(X_test) == y_test)
print(f"Bayes classifier accuracy on held-out digits: {accuracy:.3f}")

# %% [markdown]
# ## Are the synthetic digits useful? Train on synthetic, test on real

# %%
scores = tstr(gen, X_train, y_train, X_test, y_test, seed=seed)
print({k: round(v, 3) for k, v in scores.items()})

# %% [markdown]
# ## Are they new? The memorisation check
# Synthetic rows should be no closer to the training rows than new real rows are.

# %%
synthetic, _ = gen.sample(1000, seed=seed)
check = memorization_check(synthetic, X_train, X_test)
print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in check.items()})

# %% [markdown]
# ## Augmenting a training set
# `augment` returns the real rows plus synthetic ones and a mask telling which is which.

# %%
data = augment(X_train, y_train, gen, num_per_class=50, seed=seed)
print(data.X.shape, int(data.synthetic.sum()), "synthetic rows")
clf = default_classifier().fit(data.X, data.y)
print(f"accuracy, trained on real + synthetic: {clf.score(X_test, y_test):.3f}")

# %% [markdown]
# ## When data are scarce
# k real digits per class, with and without 200 synthetic digits per class from a generator
# fitted to those k rows. On digits this exact full-covariance model adds little to a
# logistic regression; the MNIST benchmark (benchmarks/RESULTS.md) has the larger study. For
# large images with few labelled rows, model the classes in a principal subspace instead:
# `GaussianGenerator(covariance="full", method="exact", subspace=30, ...)` took augmentation
# of logistic regression on MNIST at 20 digits per class from -2.1 points (the pixels' full
# covariance) to about zero (+0.9 on the benchmark's splits, -0.4 on others), and to +4.4 to
# +5.7 when it also learns from 10,000 unlabelled images (next section). The same labelled-only
# samples raise a one-hidden-layer perceptron (`classifier=mlp_classifier`) by +2.6 to +5.2
# points: the generator's edge is its quadratic rule (each class its own covariance), which a
# curved classifier can learn from the samples and a linear one cannot. On these 8x8 digits the
# full covariance is well-posed, a subspace only loses information, and neither classifier
# gains much.

# %%
table = low_data_experiment(
    lambda: GaussianGenerator(covariance="full", method="exact", constant_features="keep", clip=(0, 1)),
    X_train,
    y_train,
    X_test,
    y_test,
    k_per_class=(10,) if SMOKE else (10, 30),
    num_synthetic_per_class=200,
    repeats=1 if SMOKE else 3,
    seed=seed,
)
print(table.groupby("k")[["real_only", "augmented", "gain"]].mean().round(3))

# %% [markdown]
# ## Few labels, many unlabelled rows: semi-supervised fitting
# Often most rows have no label. `fit(X, y, unlabelled=X_unlabelled)` lets the exact model
# learn from them by EM: each pass weights every unlabelled row by its class probabilities
# p(y | x) under the current fit and recomputes the conjugate posterior
# (`unlabelled_iterations`, default 20). `unlabelled_weight="auto"` (the default) picks the
# weight of an unlabelled row (1, 0.3, 0.1, or none) by cross-validating the labelled rows, and
# warns when EM classifies them worse. Here 5 labelled digits per class, with the rest of the
# training digits unlabelled.

# %%
rng = np.random.default_rng(seed)
few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), 5, replace=False) for c in np.unique(y_train)])
rest = np.setdiff1d(np.arange(len(y_train)), few)
real_only = default_classifier().fit(X_train[few], y_train[few]).score(X_test, y_test)
for name, extra in (("labelled rows only", {}), ("with unlabelled rows", {"unlabelled": X_train[rest]})):
    small = GaussianGenerator(
        covariance="full",
        method="exact",
        constant_features="keep",
        clip=(0, 1),
        unlabelled_iterations=5 if SMOKE else 20,
    )
    small.fit(X_train[few], y_train[few], **extra)
    data = augment(X_train[few], y_train[few], small, num_per_class=100, seed=seed)
    augmented = default_classifier().fit(data.X, data.y).score(X_test, y_test)
    print(
        f"{name}: the generator classifies at {np.mean(small.predict(X_test) == y_test):.3f}; logistic "
        f"regression {real_only:.3f} on the 50 real rows, {augmented:.3f} with its samples"
    )
print("weight of an unlabelled row kept by cross-validation:", small.unlabelled_weight_)
print(small.unlabelled_scores_.round(3))
if small.unlabelled_history_ is not None:
    print("log p(x) of the unlabelled rows by EM pass:", np.round(small.unlabelled_history_[[0, 1, 2, -1]], 1))

# %% [markdown]
# ## Which covariance structure? Ask PSIS-LOO
# `to_arviz` stores each training row's log-likelihood (of y and of x given y), so PSIS-LOO on x compares
# covariance structures fitted to the same rows: higher elpd predicts held-out digits better.
# (The exact "diag" and "full" fits hold exact posteriors; "lowrank" is the SVI fit above. All
# three model the same standardised features, so their elpd values are comparable.)

# %%
import arviz_stats  # noqa: E402

candidates = {
    "diag (exact)": GaussianGenerator(covariance="diag", method="exact", constant_features="keep"),
    "full (exact)": GaussianGenerator(covariance="full", method="exact", constant_features="keep"),
}
trees = {name: est.fit(X_train, y_train).to_arviz(100 if SMOKE else 400, seed=seed) for name, est in candidates.items()}
trees["lowrank (SVI)"] = gen.to_arviz(100 if SMOKE else 400, seed=seed)
# The draws are independent (a guide's or an exact posterior's, not a Markov chain's), so their relative
# efficiency is 1: `reff=1.0` says so instead of estimating it from an effective sample size per row.
elpd = {name: arviz_stats.loo(tree, var_name="x", reff=1.0) for name, tree in trees.items()}
print(arviz_stats.compare(elpd)[["rank", "elpd", "se", "elpd_diff", "weight"]].round(1))

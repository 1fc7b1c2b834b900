# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # A variational autoencoder for handwritten digits
#
# Pinned to `models/vae_digits.toml` (seed 0); `BAYESGEN_SMOKE=1` runs a fast version.
# We train a conditional VAE on scikit-learn's 8×8 digits, then look at what it learned:
# samples of a chosen digit, reconstructions, the latent space, a walk between two images,
# and the number to report — the importance-weighted estimate of log p(x), not the ELBO.
# The same code runs MNIST (`models/vae_mnist.toml`) and runs on a GPU when one is present.

# %%
import os
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from bayesgen import VAE, augment, summary
from bayesgen.datasets import load_digits
from bayesgen.plots import show_figure
from bayesgen.runs.spec import load_spec

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "vae"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


spec = load_spec(ROOT / "models" / "vae_digits.toml")
seed = spec["run"]["seed"]
X, y = load_digits()  # pixels in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=spec["data"]["test_fraction"], random_state=seed, stratify=y
)
print(X_train.shape, X_test.shape)

# %% [markdown]
# ## Fit
# z ~ Normal(0, I); x | z, y ~ Bernoulli(decoder(z, y)) pixel by pixel; the guide is the
# encoder's Normal(loc(x, y), scale(x, y)). Training is minibatch SVI (Trace_ELBO) with the
# data resident on the device; 10 % of the rows are held out for a validation ELBO, and
# training stops when it has not improved for `patience` epochs (keeping the best epoch).

# %%
settings = {**spec["model"], **spec["inference"], "seed": seed}
if SMOKE:
    settings.update(num_epochs=3, patience=None, validation_fraction=0.1)
vae = VAE(**settings).fit(X_train, y_train)
print(vae.history_.drop(columns="seconds").tail(3).round(2).to_string(index=False))
print(f"best epoch {vae.best_epoch_}, {vae.seconds_per_epoch_:.2f} s per epoch")

# %% [markdown]
# ## Samples of a chosen digit
# `sample(n, y=k)` decodes z ~ Normal(0, I) with label k. A classifier trained on real digits
# tells us whether the samples are the digit we asked for.

# %%
show(vae.plot_samples(8, seed=seed), "samples")
clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
xs, ys = vae.sample(500, y="uniform", seed=seed)
print("classifier agrees with the requested digit:", round(float(np.mean(clf.predict(xs) == ys)), 3))

# %% [markdown]
# ## Reconstructions and the latent space
# Reconstruction decodes each image's posterior mean z. The latent scatter shows the first
# two principal components of the posterior means; in a conditional VAE the label carries the
# digit's identity, so z is free to encode style (slant, thickness) rather than class.

# %%
show(vae.plot_reconstructions(X_test[:10], y_test[:10]), "reconstructions")
mse = np.mean((vae.reconstruct(X_test, y_test) - X_test) ** 2)
print(f"reconstruction MSE {mse:.4f} vs {np.mean((X_train.mean(0) - X_test) ** 2):.4f} for the mean image")
show(vae.plot_latent(X_test, y_test, y=y_test), "latent")

# %% [markdown]
# Not every latent dimension need carry anything: a dimension whose posterior mean does not
# move with the image has collapsed to the prior, Normal(0, 1), and the decoder ignores it.
# `latent_activity` gives, per dimension, the variance of its posterior mean over the images
# (active above 0.01) and its mean KL from the prior in nats.

# %%
activity = vae.latent_activity(X_test, y_test)
print(activity.round(3))
print(f"{activity.attrs['active']} of {len(activity)} latent dimensions are active")

# %% [markdown]
# ## Interpolation
# Decode evenly spaced points on the line between two images' posterior means (here two
# different 3s, decoded as a 3): the style changes smoothly.

# %%
threes = np.nonzero(y_test == 3)[0]
show(vae.plot_interpolation(X_test[threes[0]], X_test[threes[1]], 10, y=3), "interpolation")

# %% [markdown]
# ## The honest number: log p(x)
# The ELBO is a lower bound on log p(x). The importance-weighted bound with K draws
# (IWAE) is tighter and approaches log p(x) as K grows, so it is the figure to report.

# %%
k = 50 if SMOKE else spec["report"]["iwae_samples"]
elbo = vae.elbo(X_test, y_test, num_samples=5, seed=0)
iwae = vae.log_likelihood(X_test, y_test, num_samples=k, seed=0)
print(f"test ELBO {elbo.mean():.2f} nats, IWAE (K={k}) {iwae.mean():.2f} nats per image")

# %% [markdown]
# ## ArviZ and augmentation
# `to_arviz` holds each chosen row's latent posterior (draws of z), its posterior
# predictive and log-likelihood, and the loss history. A conditional VAE is also a
# generator for `augment`.

# %%
tree = vae.to_arviz(100, rows=range(5))
print(summary(tree, var_names=["z"]).head())
data = augment(X_train[:200], y_train[:200], vae, num_per_class=20, seed=seed)
print(data.X.shape, int(data.synthetic.sum()), "synthetic rows")

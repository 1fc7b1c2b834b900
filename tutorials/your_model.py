# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Your own model: fit → DataTree → k-hat → NUTS → LOO
#
# bayesgen's machinery is not tied to its own models: `run_svi` fits any Pyro model/guide
# pair, `to_datatree` turns it into an ArviZ `DataTree`, `vi_khat` judges the guide and
# `nuts_compare` checks it against NUTS. This tutorial takes a plain Pyro regression with
# correlated predictors through all of it, with two guides (`AutoNormal`, mean-field, and
# `AutoMultivariateNormal`, full-rank), and shows how to write the model so that the
# conversion stays vectorised. Data and seed are in the tutorial (seed 0); `BAYESGEN_SMOKE=1`
# runs a fast version.

# %%
import logging
import os
from pathlib import Path

import arviz_stats
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from bayesgen.arviz import draw_guide, summary, to_datatree
from bayesgen.diagnostics import nuts_compare, vi_khat
from bayesgen.infer import run_svi
from bayesgen.plots import show_figure

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
NUM_STEPS = 150 if SMOKE else 2000
NUM_DRAWS = 200 if SMOKE else 2000
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "your_model"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


# %% [markdown]
# ## Data: two strongly correlated predictors
# 100 rows, an intercept and two predictors with correlation 0.9, so the posterior of their
# weights is correlated too: the situation where a mean-field guide is too narrow.

# %%
gen = torch.Generator().manual_seed(0)
num_rows = 100
z = torch.randn(num_rows, 2, generator=gen)
X = torch.stack([torch.ones(num_rows), z[:, 0], 0.9 * z[:, 0] + 0.44 * z[:, 1]], -1)
true_w, true_sigma = torch.tensor([1.0, 0.8, -0.5]), 0.7
y = (X * true_w).sum(-1) + true_sigma * torch.randn(num_rows, generator=gen)
print(f"corr(x1, x2) = {torch.corrcoef(X[:, 1:].T)[0, 1]:.2f}")

# %% [markdown]
# ## The model, written to broadcast
# The linear predictor is `(X * w).sum(-1)`, not `X @ w`. Both give the same numbers for one
# draw of `w`. But `to_datatree` draws all its samples in one pass by putting a plate over
# draws outside the model's own plates: inside that pass a global site such as `w` has shape
# `(num_draws, 1, 3)`: the draws, then a 1 where the data plate sits, then the event. An
# expression that broadcasts over leading dimensions keeps working; one that does not makes
# the conversion fall back to drawing one sample at a time.


# %%
def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 2.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(1.0)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), sigma), obs=y)


# %% [markdown]
# ## Fit two guides with bayesgen's runner
# `run_svi` seeds the fit (your RNG is left alone) and keeps the parameters in its result's
# `param_state`, not in your global param store, so the two fits coexist.

# %%
guides, fits = {}, {}
for name, auto in [("AutoNormal", AutoNormal), ("AutoMultivariateNormal", AutoMultivariateNormal)]:
    guides[name] = auto(regression)
    fits[name] = run_svi(
        regression,
        guides[name],
        X,
        y,
        num_steps=NUM_STEPS,
        learning_rate=0.03,
        num_particles=4,
        vectorize_particles=True,
        max_plate_nesting=1,
        average_last=NUM_STEPS // 4,
        seed=0,
    )
    print(f"{name}: final loss {fits[name].losses[-100:].mean():.2f}")

# %% [markdown]
# `draw_guide` draws from a fitted guide alone (inside the fit's parameter scope), one array
# per latent site of the guide with the draws first (`AutoNormal` also samples each site in
# its unconstrained space, as `*_unconstrained`):

# %%
from bayesgen.infer import param_scope  # noqa: E402

with param_scope(fits["AutoNormal"].param_state):
    guide_draws = draw_guide(guides["AutoNormal"], X, y, num_samples=5)
print({name: tuple(value.shape) for name, value in guide_draws.items()})

# %% [markdown]
# ## Which expressions keep the conversion vectorised
# Each variant below is the same model with another way of writing the linear predictor. The
# fitted guide is reused (it draws `w` and `sigma` whatever the model does with them), and a
# logging handler catches bayesgen's message when the vectorised pass fails and it falls back to
# a loop. The first variant also records the shape of `w` in each pass the conversion makes.


# %%
class Fallbacks(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def variant(predictor, shapes=None):
    def model(X, y=None):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 2.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(1.0)))
        if shapes is not None:
            shapes.append(tuple(w.shape))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(predictor(X, w), sigma), obs=y)

    return model


linear = torch.nn.Linear(3, 1, bias=False)


def through_linear(X, w):
    with torch.no_grad():
        linear.weight.copy_(w.reshape(1, 3))  # only one draw fits in a Linear's weight
    return linear(X).squeeze(-1)


shapes = []
predictors = {
    "(X * w).sum(-1)": (lambda X, w: (X * w).sum(-1), shapes),
    "einsum('...d,...d->...', X, w)": (lambda X, w: torch.einsum("...d,...d->...", X, w), None),
    "(X[..., None, :] @ w[..., None])[..., 0, 0]": (lambda X, w: (X.unsqueeze(-2) @ w.unsqueeze(-1))[..., 0, 0], None),
    "X @ w": (lambda X, w: X @ w, None),
    "einsum('...nd,...d->...n', X, w)": (lambda X, w: torch.einsum("...nd,...d->...n", X, w), None),
    "(X @ w[..., None])[..., 0]": (lambda X, w: (X @ w.unsqueeze(-1))[..., 0], None),
    "nn.Linear with w as its weight": (through_linear, None),
}
handler = Fallbacks()
logging.getLogger("bayesgen.arviz").addHandler(handler)
for label, (predictor, record) in predictors.items():
    handler.messages.clear()
    to_datatree(
        variant(predictor, record),
        guides["AutoNormal"],
        X,
        y,
        param_state=fits["AutoNormal"].param_state,
        num_samples=100,
        seed=0,
    )
    loop = any("one at a time" in message for message in handler.messages)
    print(f"{label:46s} {'loop' if loop else 'vectorised'}")
logging.getLogger("bayesgen.arviz").removeHandler(handler)
print("shapes of w in the passes of (X * w).sum(-1):", shapes)

# %% [markdown]
# The model runs twice per pass (once for the log-likelihood, once to re-simulate `y`): a plain
# pass to learn the shapes, the vectorised pass over all 100 draws, and a plain run on the first
# draw that checks the vectorised one agrees. Why the others fall back to a loop:
#
# * `X @ w` and `einsum('...nd,...d->...n')` treat `w` of shape `(100, 1, 3)` as a batch of
#   `(1, 3)` matrices or give a `(100, 1, n)` result: either an error or the data in the wrong
#   place. Write a dot product over the last axis instead, as `(X * w).sum(-1)` or
#   `einsum('...d,...d->...')`, and both line up the `1` with the data rows.
# * Batched matmul works when the rows are the batch: `X[..., None, :] @ w[..., None]` multiplies
#   a `(n, 1, 3)` by a `(100, 1, 3, 1)` into `(100, n, 1, 1)`.
# * `nn.Linear` (and `PyroModule[nn.Linear]` with a sampled weight) holds one weight matrix, so a
#   stack of draws cannot go through it.
#
# A loop gives the same numbers, only slower (a pass per draw). The conversion also checks
# that the vectorised pass agrees with a plain one, so a model that reduces over a plate
# (`theta - theta.mean()`) is caught and drawn in a loop rather than converted wrongly.

# %% [markdown]
# ## Convert to ArviZ
# Name the dimensions and label them.

# %%
trees = {
    name: to_datatree(
        regression,
        guides[name],
        X,
        y,
        param_state=fits[name].param_state,
        num_samples=NUM_DRAWS,
        seed=0,
        dims={"w": ["coef"], "y": ["data"]},
        coords={"coef": ["intercept", "x1", "x2"]},
    )
    for name in guides
}
tree = trees["AutoMultivariateNormal"]
print(sorted(tree.children))
for name, t in trees.items():
    print(name)
    print(summary(t, var_names=["w", "sigma"])[["mean", "sd", "eti94_lb", "eti94_ub", "mcse_mean"]].round(3))

# %% [markdown]
# The means agree; the sds of the two correlated weights do not. A mean-field Gaussian fitted
# to a correlated Gaussian posterior keeps the means but shrinks each sd to the conditional
# one, here about √(1 − 0.9²) ≈ 0.44 of the marginal. The summary cannot tell which is right:
# the next two checks can.

# %%
import arviz_plots as azp  # noqa: E402

show(azp.plot_dist(tree, var_names=["w", "sigma"], backend="matplotlib").viz["figure"].item(), "posterior")
show(azp.plot_ppc_dist(tree, num_samples=50, backend="matplotlib").viz["figure"].item(), "ppc")

# %% [markdown]
# ## Is the guide good enough? PSIS k-hat
# `vi_khat` importance-weights guide draws by p(y, θ) / q(θ). A guide narrower than the
# posterior gives heavy-tailed weights and a large k-hat (above 0.7: do not trust its
# uncertainty).

# %%
for name in guides:
    diag = vi_khat(
        regression,
        guides[name],
        X,
        y,
        param_state=fits[name].param_state,
        num_samples=500 if SMOKE else 4000,
        seed=0,
        warn=False,
    )
    print(f"{name}: {diag.message()}")

# %% [markdown]
# ## Cross-check with NUTS
# For a model this small NUTS is cheap, and it is the reference. `nuts_compare` runs it and
# sets each parameter's SVI mean and sd next to NUTS's, allowing for Monte Carlo error.

# %%
for name in guides:
    check = nuts_compare(
        regression,
        guides[name],
        X,
        y,
        param_state=fits[name].param_state,
        num_warmup=50 if SMOKE else 500,
        num_samples=50 if SMOKE else 1000,
        num_chains=1 if SMOKE else 2,
        svi_samples=NUM_DRAWS,
        seed=0,
        warn=False,
    )
    print(f"{name}: {check.message()}")
    print(check.table[["nuts_mean", "svi_mean", "nuts_sd", "svi_sd", "sd_ratio"]].round(3))

# %% [markdown]
# ## Compare the guides by LOO
# Both trees hold log p(y_i | θ) per row, so `arviz_stats.compare` ranks them by their
# expected log predictive density. Here the guides approximate the same model, so their
# elpd differ by little: LOO judges predictions, and the predictions of a guide that is too
# narrow in two correlated weights stay almost the same. Use k-hat and NUTS to judge the guide,
# and LOO to choose between models.

# %%
print(arviz_stats.compare(trees)[["rank", "elpd", "p", "elpd_diff", "dse"]].round(2))

# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Your own Pyro model in ArviZ 1.x, through bayesgen
#
# ArviZ 1.x has no Pyro converter. bayesgen's `to_datatree` turns any model and fitted
# guide into a `DataTree` with posterior, posterior predictive, per-observation
# log-likelihood and observed data, so ArviZ's summaries, plots and LOO work on it.
# Seed 0; `BAYESGEN_SMOKE=1` runs a fast version.
#
# The example is the classic "eight schools" hierarchical model: SAT coaching effects
# estimated in eight schools, with their standard errors (Rubin 1981).

# %%
import os
from pathlib import Path

import arviz_stats
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

from bayesgen.arviz import summary, to_datatree
from bayesgen.infer import ConvergenceCheck, run_svi
from bayesgen.plots import show_figure

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "arviz_bridge"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


effects = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
std_errors = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
schools = [
    "Choate",
    "Deerfield",
    "Phillips Andover",
    "Phillips Exeter",
    "Hotchkiss",
    "Lawrenceville",
    "St. Paul's",
    "Mt. Hermon",
]

# %% [markdown]
# ## A plain Pyro model and guide
# Non-centred parameterisation; the guide is Pyro's own `AutoNormal`. Nothing here is
# bayesgen-specific.


# %%
def eight_schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        theta_std = pyro.sample("theta_std", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_std)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


guide = AutoNormal(eight_schools)

# %% [markdown]
# ## Fit with bayesgen's runner
# Seeded (your RNG is untouched), parameters kept out of your global param store, a
# convergence check on the smoothed loss.

# %%
fit = run_svi(
    eight_schools,
    guide,
    std_errors,
    effects,
    num_steps=300 if SMOKE else 4000,
    learning_rate=0.02,
    lr_schedule="cosine",
    num_particles=4,
    vectorize_particles=True,
    max_plate_nesting=1,
    convergence=ConvergenceCheck(window=200, rtol=1e-4),
    seed=0,
)
print(f"{fit.num_steps} steps, converged={fit.converged}, final loss {fit.losses[-200:].mean():.2f}")

# %% [markdown]
# ## Convert to ArviZ
# Name the dimensions and label them; add the prior for prior-vs-posterior plots.

# %%
tree = to_datatree(
    eight_schools,
    guide,
    std_errors,
    effects,
    param_state=fit.param_state,
    num_samples=2000,
    seed=0,
    prior=True,
    dims={"theta_std": ["school"], "theta": ["school"], "y": ["school"]},
    coords={"school": schools},
)
print(sorted(tree.children))
print(summary(tree, var_names=["mu", "tau", "theta"]).round(2))

# %% [markdown]
# `summary` reports mean, sd, a 94% interval and the exact Monte Carlo error of
# independent draws (sd/√n). It leaves out R-hat and ESS on purpose: guide draws are
# independent, so Markov-chain diagnostics say nothing about them. Whether the
# *approximation* is good is a different question (see the diagnostics tutorial).

# %% [markdown]
# ## Leave-one-out cross-validation
# The bridge stores log p(y_i | θ) for every school and draw, read from the model trace.

# %%
loo = arviz_stats.loo(tree)
print(loo)

# %% [markdown]
# ## Plots
# Any ArviZ 1.x plot works on the tree.

# %%
import arviz_plots as azp  # noqa: E402

show(azp.plot_dist(tree, var_names=["mu", "tau"], backend="matplotlib").viz["figure"].item(), "posterior")
show(azp.plot_ppc_dist(tree, num_samples=50, backend="matplotlib").viz["figure"].item(), "ppc")

# %% [markdown]
# ## A mixture with an enumerated assignment
# Pyro's Gaussian-mixture pattern: the model marks the assignment `z` with
# `config_enumerate`, the guide leaves it out, and `TraceEnum_ELBO` sums it out while
# fitting. The bridge does the same for the log-likelihood — log Σ_z p(z | θ) p(y_i | z, θ)
# per row, so LOO compares mixtures on their marginal likelihood — and draws `z` from
# p(z | y, θ) into the posterior. Here LOO compares one and two components.

# %%
from pyro import poutine  # noqa: E402
from pyro.infer import config_enumerate  # noqa: E402
from pyro.infer.autoguide import init_to_value  # noqa: E402

gen = torch.Generator().manual_seed(0)
y_mix = torch.cat([torch.randn(60, generator=gen) - 2.0, 0.7 * torch.randn(40, generator=gen) + 2.0])


def make_mixture(k):
    @config_enumerate
    def mixture(y):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(k)))
        loc = pyro.sample("loc", dist.Normal(torch.zeros(k), 5.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(torch.zeros(k), 1.0).to_event(1))
        with pyro.plate("obs", len(y)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("y", dist.Normal(loc[z], scale[z]), obs=y)

    return mixture


trees = {}
for k in (1, 2):
    mixture = make_mixture(k)
    # Components started apart: from a symmetric start SVI can settle on one broad component.
    start = torch.linspace(-2.0, 2.0, k) if k > 1 else torch.zeros(1)
    mix_guide = AutoNormal(poutine.block(mixture, hide=["z"]), init_loc_fn=init_to_value(values={"loc": start}))
    mix_fit = run_svi(
        mixture,
        mix_guide,
        y_mix,
        num_steps=50 if SMOKE else 2000,
        learning_rate=0.05,
        loss="trace_enum",
        max_plate_nesting=1,
        seed=0,
    )
    trees[f"{k} component{'s' * (k > 1)}"] = to_datatree(
        mixture,
        mix_guide,
        y_mix,
        param_state=mix_fit.param_state,
        num_samples=50 if SMOKE else 1000,
        dims={"y": ["obs"], "z": ["obs"]},
    )
print(arviz_stats.compare(trees)[["rank", "elpd", "elpd_diff"]].round(1))
z = trees["2 components"].posterior["z"].stack(sample=("chain", "draw")).transpose("sample", ...).values
print(
    "P(z = 1) for the first rows (left group) and the last rows (right group):",
    z[:, :3].mean(0).round(2),
    z[:, -3:].mean(0).round(2),
)

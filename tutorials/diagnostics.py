# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Is this variational posterior trustworthy? Diagnosing a good fit and a bad one
#
# Pinned to `models/ab_resume_callbacks.toml` (seed 0); `BAYESGEN_SMOKE=1` runs a fast version.
# SVI is fast, but its answer is only as good as the guide and the optimisation. We diagnose
# two fits of the same A/B test — the default, and one stopped far too early — and a user's own
# model with a guide that is deliberately too narrow, using four checks: the optimisation
# verdict, PSIS k-hat, a NUTS cross-check and simulation-based calibration.

# %%
import math
import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from bayesgen import BetaBinomialTest
from bayesgen.datasets import load_ab_counts, resolve_source
from bayesgen.diagnostics import convergence_report, sbc, vi_khat
from bayesgen.plots import show_figure
from bayesgen.runs.spec import load_spec

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "diagnostics"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


spec = load_spec(ROOT / "models" / "ab_resume_callbacks.toml")
seed = spec["run"]["seed"]
successes, trials, names = load_ab_counts(resolve_source(spec["data"]["source"], ROOT / "models"))
print(dict(zip(names, zip(successes, trials, strict=True), strict=True)))

# %% [markdown]
# ## 1. Did the optimisation finish?
# `convergence_report` compares the last two windows of the loss with the ELBO's own Monte Carlo
# noise. A fit stopped after 60 steps is "still improving"; the default fit is converged.

# %%
good = BetaBinomialTest(seed=seed, num_steps=600 if SMOKE else 3000).fit(successes, trials, names=names)
short = BetaBinomialTest(seed=seed, num_steps=60, average_last=0, lr_schedule=None).fit(successes, trials, names=names)
for label, est in (("default", good), ("60 steps", short)):
    print(label, "→", convergence_report(est.losses_, converged=est.converged_, max_steps=est.num_steps)["message"])

# %% [markdown]
# ## 2. Is the guide close to the posterior? PSIS k-hat
# Importance ratios p(x, z) / q(z) over guide draws; the Pareto shape k̂ of their tail says how
# far q is from the posterior: below 0.5 good, 0.5–0.7 usable, above 0.7 unreliable.
# Read it with the effective sample size: k̂ catches a guide that is too *narrow* or misplaced
# (the ratios get a heavy tail), but a guide that is too *wide* — the 60-step fit, still near
# its Beta(1, 1) start — gives bounded ratios and a good k̂; its ESS collapses instead. Here the
# conjugate model also lets us measure the gap directly.

# %%
for label, est in (("default", good), ("60 steps", short)):
    diag = est.vi_diagnostic(num_samples=1000, warn=False)
    gap = est.exact_gap_
    print(
        f"{label} → {diag.message()}; ESS/draws {diag.ess / diag.num_samples:.0%}; exact gap: mean "
        f"{gap['max_mean_gap_sd']:.2f} sd, sd error {100 * gap['max_sd_rel_error']:.0f}%"
    )

# %% [markdown]
# ## 3. The gold standard: NUTS on the same model
# For a model this small we can afford MCMC. R-hat, ESS and divergences check NUTS itself; the
# table puts SVI's means and sds next to NUTS's. `smd` is the standardised mean difference;
# `smd_allowed` is the tolerance (0.1 sd) plus three Monte Carlo standard errors, so short runs
# (smoke mode) are not called a disagreement by chance alone.

# %%
cmp = good.nuts_check(num_samples=150 if SMOKE else 1000, num_warmup=100 if SMOKE else 500, seed=seed)
print(cmp.message())
print(
    cmp.table[
        ["nuts_mean", "svi_mean", "nuts_sd", "svi_sd", "smd", "smd_allowed", "nuts_r_hat", "nuts_ess_bulk"]
    ].round(4)
)

# %% [markdown]
# ## 4. A guide that is too narrow, on your own model
# The same checks work for any model/guide pair. Here the guide's scale is fixed at 0.3 times
# the true posterior sd: the mean is right, the uncertainty is not. k-hat flags it, and
# simulation-based calibration (fit, draw, rank the true value; repeat) shows ranks piled at
# both ends instead of uniform.

# %%
y = torch.randn(20) + 1.0


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def narrow_guide(y):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 0.3 / math.sqrt(len(y))))


def good_guide(y):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


from bayesgen.infer import run_svi  # noqa: E402

for guide in (good_guide, narrow_guide):
    fit = run_svi(model, guide, y, num_steps=300, learning_rate=0.1, lr_schedule="cosine", seed=seed)
    print(guide.__name__, "→", vi_khat(model, guide, y, param_state=fit.param_state, warn=False).message())

sims = 6 if SMOKE else 100
for guide in (good_guide, narrow_guide):
    res = sbc(
        model,
        guide,
        y,
        num_simulations=sims,
        num_steps=100 if SMOKE else 200,
        learning_rate=0.1,
        fit_kwargs={"lr_schedule": "cosine", "average_last": 50},
        seed=seed,
    )
    print(guide.__name__, "→", res.message())
show(res.plot(), "nuts_vs_svi")

# %% [markdown]
# ## 5. When k-hat is usable: PSIS-corrected expectations
# Between 0.5 and 0.7 (and below), reweighting the guide's draws by their smoothed importance
# ratios corrects its posterior means. The table puts both side by side; a shift of more than a
# few tenths of a guide sd says the guide's own means should not be quoted.

# %%
from bayesgen.diagnostics import psis_summary  # noqa: E402

print(psis_summary(good.vi_diagnostic(num_samples=2000, warn=False)).round(4))

# %% [markdown]
# ## 6. Amortised models: k-hat per row
# A VAE or ProdLDA has one latent z_i per row and a guide q(z_i | x_i) computed by a network.
# The joint k-hat over many rows grows with their number whatever the guide, so bayesgen checks
# each row's ratios p(x_i, z_i) / q(z_i | x_i) separately (`vi_diagnostic_rows`) and reports the
# share of rows with a good, usable or unreliable k-hat.

# %%
from bayesgen import VAE  # noqa: E402
from bayesgen.datasets import load_digits  # noqa: E402

X, _ = load_digits()
vae = VAE(latent_dim=4, num_epochs=3 if SMOKE else 30, seed=seed).fit(X)
print(vae.vi_diagnostic_rows(num_samples=300).message())
print("joint, for contrast:", vae.vi_diagnostic(num_samples=300, warn=False).message())

# %% [markdown]
# ## In a run folder
# `bayesgen fit SPEC` writes the quick checks to `diagnostics.json` (convergence verdict, PSIS
# k-hat, per-row k-hat for amortised models, PSIS-corrected means in `psis_summary.csv`),
# `plots/diagnostics_loss.png` and `plots/ppc_*.png`, and prints the verdicts. The costly
# cross-checks are opt-in: `[report] nuts = true` and `sbc_simulations = N` in the spec, or
#
#     bayesgen diagnose RUN_DIR --nuts --sbc 100
#
# which add `nuts_comparison.csv`, `nuts.nc` (chain/draw dims), `sbc_ranks.csv` and
# `plots/sbc_ecdf.png` to an existing run folder, with a warning line for each check that fails.

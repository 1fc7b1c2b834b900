# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # A Bayesian A/B test with bayesgen
#
# Pinned to `models/ab_resume_callbacks.toml` (seed 0). Run as a script
# (`python tutorials/ab_test.py`) or as a notebook (`jupytext --to ipynb tutorials/ab_test.py`).
# With `BAYESGEN_SMOKE=1` it runs a fast version (the tests do this).
#
# **The data.** Bertrand & Mullainathan (2004) sent 4,870 fictitious résumés to job ads in
# Boston and Chicago; half carried white-sounding names, half African-American-sounding
# names. Callbacks: 235 of 2,435 and 157 of 2,435. How sure can we be that the callback
# rates differ, and by how much?

# %%
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bayesgen import BetaBinomialTest
from bayesgen.datasets import load_ab_counts
from bayesgen.plots import show_figure
from bayesgen.runs.spec import load_spec

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "ab_test"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


spec = load_spec(ROOT / "models" / "ab_resume_callbacks.toml")
successes, trials, names = load_ab_counts(spec["data"]["source"])
print(pd.DataFrame({"successes": successes, "trials": trials}, index=names))

# %% [markdown]
# ## The model
# Each variant's callback rate gets a Beta(1, 1) (uniform) prior; callbacks are Binomial:
#
# `rate_k ~ Beta(1, 1)`, `successes_k ~ Binomial(trials_k, rate_k)` for each variant k.
#
# bayesgen fits the posterior by SVI with a Beta guide that starts at Beta(1, 1). Because the
# prior is conjugate, the exact posterior is known, and every fit is checked against it.

# %%
settings = {**spec["model"], **spec["inference"], "seed": spec["run"]["seed"]}
if SMOKE:
    settings.update(num_steps=300, average_last=50)
test = BetaBinomialTest(**settings).fit(successes, trials, names=names)
table = test.summary(control="white")
print(table.round(4).T)

# %% [markdown]
# `prob_best` is the posterior probability that a variant has the highest callback rate;
# `expected_loss` is how much callback rate we expect to give up by picking it (in rate
# units: 0.03 = 3 percentage points); the lift is relative to the white-name control.

# %%
print(f"P(white-name callback rate > African-American-name rate) = {test.prob_best()['white']:.5f}")
lift = test.lift("white")
print(
    f"relative lift of African-American names: {100 * lift.loc['black', 'mean']:.1f}% "
    f"[{100 * lift.loc['black', 'lower']:.1f}%, {100 * lift.loc['black', 'upper']:.1f}%] (94% interval)"
)

# %% [markdown]
# ## How good is the SVI posterior?
# The exact posterior is Beta(1 + successes, 1 + trials − successes). `exact_gap_` measures
# the largest distance between SVI and exact posterior means (in posterior sds) and the
# largest relative error of the sds.

# %%
print(test.exact_summary().round(5))
print({k: round(v, 4) for k, v in test.exact_gap_.items()})

# %% [markdown]
# ## Raw events and minibatches
# Real experiments often arrive as one row per visitor. `fit_events` takes a DataFrame
# and, with `batch_size`, fits by minibatch SVI over events: the same answer from
# subsampled data.

# %%
rows = [(name, 1) for name, s in zip(names, successes, strict=True) for _ in range(int(s))]
rows += [(name, 0) for name, s, n in zip(names, successes, trials, strict=True) for _ in range(int(n - s))]
events = pd.DataFrame(rows, columns=["name_group", "callback"])
events_test = BetaBinomialTest(**{**settings, "batch_size": 500}).fit_events(
    events, variant_col="name_group", outcome_col="callback"
)
print(events_test.summary(control="white")[["rate_mean", "rate_sd", "prob_best"]].round(4))

# %% [markdown]
# ## Posterior plot, ArviZ, save and load

# %%
show(test.plot(), "rate_posteriors")
tree = test.to_arviz(num_samples=1000)
from bayesgen.arviz import summary  # noqa: E402

print(summary(tree).round(4))
test.save(ROOT / "runs" / "tutorial_ab_model", overwrite=True)
reloaded = BetaBinomialTest.load(ROOT / "runs" / "tutorial_ab_model")
assert np.allclose(reloaded.posterior(1000, seed=1)["rate"], test.posterior(1000, seed=1)["rate"])
print("reloaded model gives identical posterior draws")

"""Simulation-based calibration (SBC) of an SVI procedure (Talts et al. 2018).

Fit the guide to many data sets simulated from the prior and record the rank
of each true parameter among the fitted posterior's draws: a calibrated
procedure gives uniform ranks.

References
----------
Talts, Betancourt, Simpson, Vehtari & Gelman (2018), Validating Bayesian
inference algorithms with simulation-based calibration. arXiv:1804.06788.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from bayesgen._runtime import check_count, seeded, to_numpy
from bayesgen._typing import ModelFn

__all__ = ["SBCResult", "sbc"]


@dataclass
class SBCResult:
    """Simulation-based calibration: rank of each true parameter among posterior draws.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One column per scalar parameter, one row per simulation; ranks in
        0..num_posterior_samples.
    num_posterior_samples : int
    p_values : pandas.Series
        Chi-square test of uniform ranks (``num_bins`` equal bins) per parameter.
    calibrated : bool
        Every p-value above ``alpha`` after a Bonferroni correction.
    """

    ranks: Any
    num_posterior_samples: int
    p_values: Any
    calibrated: bool
    alpha: float = 0.01

    def message(self) -> str:
        worst = self.p_values.idxmin()
        return (
            f"SBC over {len(self.ranks)} simulations: smallest uniformity p-value {self.p_values.min():.3g} "
            f"({worst}); " + ("ranks consistent with calibration" if self.calibrated else "MISCALIBRATED")
        )

    def plot(self) -> Any:
        """ECDF of the normalised ranks minus the uniform CDF, with a 95 % simultaneous band (approximate)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
        n = len(self.ranks)
        grid = np.linspace(0, 1, 201)
        for col in self.ranks.columns:
            u = (self.ranks[col].to_numpy() + 0.5) / (self.num_posterior_samples + 1)
            ax.step(grid, np.searchsorted(np.sort(u), grid, side="right") / n - grid, where="post", label=col)
        band = 1.36 / np.sqrt(n)  # Kolmogorov-Smirnov 95 % band
        ax.fill_between(grid, -band, band, color="grey", alpha=0.2, label="95% band")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("normalised rank")
        ax.set_ylabel("ECDF − uniform")
        ax.legend(fontsize="x-small", ncols=2)
        return fig


def _unfitted_copy(guide: ModelFn) -> ModelFn:
    """A copy of a module guide to start a refit from; a plain function as it is (its ``pyro.param`` sites
    start afresh in each fit's param scope).

    An autoguide in it is reset to be set up again on its first call, so it starts from its ``init_loc_fn``
    and ``init_scale``, not from an earlier fit; other modules start from their state as passed.
    """
    from pyro.infer.autoguide import AutoGuide

    if not isinstance(guide, torch.nn.Module):
        return guide
    autoguides = [m for m in guide.modules() if isinstance(m, AutoGuide)]
    refs = [(m._model, m.master) for m in autoguides]
    try:
        copied = copy.deepcopy(guide)
    finally:  # AutoGuide.__getstate__ drops its model and master (for pickling), on the original too
        for module, (model_ref, master) in zip(autoguides, refs, strict=True):
            module._model, module.master = model_ref, master
    copies = [m for m in copied.modules() if isinstance(m, AutoGuide)]
    for module, (model_ref, _) in zip(copies, refs, strict=True):
        module._model = model_ref
        module.prototype_trace = None
    return copied


def sbc(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    num_simulations: int = 100,
    num_posterior_samples: int = 99,
    num_steps: int = 500,
    learning_rate: float = 0.05,
    fit_kwargs: dict[str, Any] | None = None,
    num_bins: int = 10,
    alpha: float = 0.01,
    seed: int = 0,
    **kwargs: Any,
) -> SBCResult:
    """Simulation-based calibration of an SVI fit (Talts et al. 2018).

    Each simulation draws parameters θ* and data from the model's prior (its
    observed sites re-sampled), fits the guide to those data with
    :func:`bayesgen.infer.run_svi` (fresh parameters each time: a fresh
    param scope, and a copy of a module guide such as an autoguide, reset to
    its initial values; ``guide`` itself is left as passed), draws
    ``num_posterior_samples`` from the fitted guide and records the rank of θ*
    among them. A calibrated procedure gives uniform ranks; a guide that is too
    narrow piles them at both ends, a biased one at one end.

    Parameters
    ----------
    model, guide : callable
        The pair; ``*args``/``**kwargs`` are the model's arguments with the real
        data (their observed values are replaced by the simulated ones).
    num_simulations : int, default 100
    num_posterior_samples : int, default 99
    num_steps, learning_rate : SVI settings of each refit
    fit_kwargs : dict, optional
        More :func:`bayesgen.infer.run_svi` options (e.g. ``lr_schedule``).
    num_bins : int, default 10
    alpha : float, default 0.01
        Family-wise level of the uniformity tests.
    seed : int, default 0

    Returns
    -------
    SBCResult
    """
    num_simulations = check_count(num_simulations, "num_simulations")
    num_posterior_samples = check_count(num_posterior_samples, "num_posterior_samples")
    import pandas as pd
    from scipy import stats

    # The model's structure is static: find its observed sites once.
    with torch.no_grad():
        observed = {
            n
            for n, s in poutine.trace(model).get_trace(*args, **kwargs).nodes.items()
            if s["type"] == "sample" and s["is_observed"]
        }
    rows = [
        _simulation_ranks(
            model,
            guide,
            args,
            kwargs,
            observed,
            seed=seed + i,
            num_steps=num_steps,
            learning_rate=learning_rate,
            fit_kwargs=fit_kwargs,
            num_posterior_samples=int(num_posterior_samples),
        )
        for i in range(int(num_simulations))
    ]
    ranks = pd.DataFrame(rows)
    edges = np.linspace(0, num_posterior_samples + 1, num_bins + 1)
    p_values = {}
    for col in ranks.columns:
        counts, _ = np.histogram(ranks[col].to_numpy(), bins=edges)
        p_values[col] = float(stats.chisquare(counts).pvalue)
    p = pd.Series(p_values)
    return SBCResult(
        ranks=ranks,
        num_posterior_samples=int(num_posterior_samples),
        p_values=p,
        calibrated=bool((p > alpha / len(p)).all()),
        alpha=alpha,
    )


def _simulation_ranks(
    model: ModelFn,
    guide: ModelFn,
    args: tuple,
    kwargs: dict,
    observed: set[str],
    *,
    seed: int,
    num_steps: int,
    learning_rate: float,
    fit_kwargs: dict[str, Any] | None,
    num_posterior_samples: int,
) -> dict[str, int]:
    """One simulation: θ* and data from the prior, a fresh fit to those data, and θ*'s rank among its draws.

    Returns the rank of every scalar of every latent site (``name`` or ``name[j]``) among
    ``num_posterior_samples`` draws of the fitted guide.
    """
    from pyro.infer import Predictive

    from bayesgen.arviz import _UnconditionData
    from bayesgen.infer import param_scope, run_svi

    with seeded(seed, torch.device("cpu")), torch.no_grad():
        prior = poutine.trace(_UnconditionData()(model)).get_trace(*args, **kwargs)
    truth = {
        n: s["value"]
        for n, s in prior.nodes.items()
        if s["type"] == "sample" and n not in observed and not site_is_subsample(s)
    }
    data = {n: prior.nodes[n]["value"] for n in observed}
    conditioned = poutine.condition(model, data=data)
    # A module guide keeps its parameters in itself (run_svi's scope is fresh, the module is not).
    fresh = _unfitted_copy(guide)
    fit = run_svi(
        conditioned,
        fresh,
        *args,
        num_steps=num_steps,
        learning_rate=learning_rate,
        seed=seed,
        **(fit_kwargs or {}),
        **kwargs,
    )
    with param_scope(fit.param_state), seeded(seed + 10_000, torch.device("cpu")), torch.no_grad():
        post = Predictive(conditioned, guide=fresh, num_samples=num_posterior_samples, return_sites=list(truth))(
            *args, **kwargs
        )
    row = {}
    for name, value in truth.items():
        draws = to_numpy(post[name]).reshape(num_posterior_samples, -1)
        true = to_numpy(value).reshape(-1)
        for j in range(len(true)):
            row[f"{name}[{j}]" if len(true) > 1 else name] = int((draws[:, j] < true[j]).sum())
    return row

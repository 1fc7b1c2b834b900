"""The NUTS cross-check: the exact posterior by Hamiltonian Monte Carlo next to the guide's.

:func:`nuts_compare` runs NUTS on the same model and compares every scalar
parameter's mean and sd with the guide's, allowing for Monte Carlo error;
:class:`NUTSComparison` also says whether NUTS itself can be trusted
(divergences, label switching, mixing) and what to do when it cannot.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bayesgen._runtime import check_count, seeded, to_numpy
from bayesgen._typing import ModelFn

__all__ = ["NUTSComparison", "label_switched_sites", "nuts_compare"]


# ------------------------------------------------------------- NUTS check
@dataclass
class NUTSComparison:
    """NUTS (the gold standard) next to the SVI posterior.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter: NUTS mean, sd, R-hat, bulk and tail ESS,
        MCSE of the mean; SVI mean and sd; ``smd`` = (SVI mean − NUTS mean) /
        NUTS sd and ``sd_ratio`` = SVI sd / NUTS sd; ``smd_allowed`` and
        ``sd_ratio_allowed``, the largest |smd| and |sd_ratio − 1| that count as
        agreement (the tolerance plus three Monte Carlo standard errors).
    divergences : int
    tree : xarray.DataTree
        The NUTS draws with chain and draw dims (after ``relabel``, when given).
    agree : bool
        Every |smd| ≤ ``smd_allowed`` and every |sd ratio − 1| ≤ ``sd_ratio_allowed``.
    label_switching : list of str
        Sites whose chains settled on different orderings of exchangeable components (a mixture's
        components swapped between chains): their R-hat is high, and falls to at most 1.05 once each
        chain's components are put in the order of their means. Pass ``relabel=`` to
        :func:`nuts_compare` to compare them in one labelling.
    reliable : bool
        Whether NUTS itself can be trusted as the reference: no divergences,
        every R-hat ≤ 1.05 and every bulk ESS ≥ 100. The Monte Carlo allowance
        grows as the ESS falls, so ``agree`` means little when this is False.
    cause : {"divergences", "label switching", "mixing"} or None
        Why NUTS is not reliable, which decides the advice (:meth:`advice`).
    """

    table: Any
    divergences: int
    tree: Any = field(repr=False)
    agree: bool = True
    tolerance: float = 0.1
    label_switching: list[str] = field(default_factory=list)

    @property
    def max_r_hat(self) -> float:
        """Largest R-hat; an undefined one (NaN, e.g. a draw that never moves) counts as inf."""
        return float(self.table["nuts_r_hat"].fillna(np.inf).max())

    @property
    def min_ess_bulk(self) -> float:
        """Smallest bulk ESS; an undefined one (NaN) counts as 0."""
        return float(self.table["nuts_ess_bulk"].fillna(0.0).min())

    @property
    def reliable(self) -> bool:
        return bool(self.divergences == 0 and self.max_r_hat <= 1.05 and self.min_ess_bulk >= 100)

    @property
    def cause(self) -> str | None:
        """Why NUTS is unreliable: divergences first (they bias the draws whatever else holds), then label
        switching, then plain poor mixing (high R-hat or low ESS); None when it is reliable."""
        if self.reliable:
            return None
        if self.divergences:
            return "divergences"
        if self.label_switching:
            return "label switching"
        return "mixing"

    def advice(self) -> str:
        """What to do about an unreliable NUTS run, by its :attr:`cause` (empty when reliable)."""
        return _NUTS_ADVICE.get(self.cause, "").format(
            divergences=self.divergences, sites=", ".join(repr(s) for s in self.label_switching)
        )

    def message(self) -> str:
        # skipna=False: an undefined difference prints as nan (agree is False then), not as the largest defined one
        worst = self.table["smd"].abs().max(skipna=False)
        ratio = self.table["sd_ratio"]
        text = (
            f"NUTS vs SVI: largest |standardised mean difference| {worst:.3f}, sd ratio "
            f"{ratio.min(skipna=False):.2f}–{ratio.max(skipna=False):.2f}, max R-hat {self.max_r_hat:.3f}, "
            f"min bulk ESS {self.min_ess_bulk:.0f}, {self.divergences} divergences: "
            + ("agree" if self.agree else "DISAGREE")
        )
        if not self.reliable:
            text += f" — but NUTS itself is unreliable here: {self.advice()}"
        return text


_NUTS_ADVICE: dict[str | None, str] = {
    "divergences": "{divergences} divergent transitions mean NUTS could not follow the posterior's geometry "
    "(a funnel or a sharp ridge), and more draws do not remove that bias: reparameterise the "
    "model (non-centred scales, e.g. pyro.infer.reparam.LocScaleReparam) or raise "
    "target_accept_prob (0.9-0.99)",
    "label switching": "the chains settled on different labellings of exchangeable components at {sites}, so "
    "R-hat is high while each chain may be fine: compare in one labelling with relabel= (e.g. "
    "order each chain's components by their mean), or break the symmetry in the model (an "
    "ordered prior); a longer run does not help",
    "mixing": "R-hat above 1.05 or a bulk ESS under 100 means the chains have not explored the posterior "
    "enough: run it longer (more warm-up steps and draws) or with more chains",
}


def _r_hat(draws: np.ndarray) -> np.ndarray:
    """Split R-hat of each element of ``draws``, shape (chain, draw, ...)."""
    half = draws.shape[1] // 2
    split = np.concatenate([draws[:, :half], draws[:, half : 2 * half]], axis=0)
    n = split.shape[1]
    within = split.var(axis=1, ddof=1).mean(axis=0)
    between = split.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((n - 1) / n * within + between) / within)


def label_switched_sites(samples: dict[str, np.ndarray]) -> list[str]:
    """Sites whose chains disagree (R-hat > 1.05) only because their components are ordered differently.

    For each axis of a site's element shape, each chain's components are put in the order of their mean
    (averaged over the other axes) and R-hat is computed again; a site is label-switched when that brings
    every R-hat to at most 1.05 and the chains needed different orders.

    Parameters
    ----------
    samples : dict of numpy.ndarray
        Site name → draws, shape (chain, draw, ...).

    Returns
    -------
    list of str
        The label-switched sites, in the order of ``samples``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> swapped = np.array([[-3.0, 3.0], [3.0, -3.0]])[:, None, :] + rng.normal(0, 0.1, size=(2, 300, 2))
    >>> label_switched_sites({"locs": swapped})
    ['locs']
    """
    found = []
    for name, draws in samples.items():
        if draws.ndim < 3 or draws.shape[0] < 2 or draws.shape[1] < 4:
            continue
        if not np.nanmax(_r_hat(draws)) > 1.05:
            continue
        for axis in range(2, draws.ndim):
            if draws.shape[axis] < 2:
                continue
            others = tuple(a for a in range(1, draws.ndim) if a != axis)
            order = np.argsort(draws.mean(axis=others), axis=-1)  # (chain, K): each chain's components by mean
            if (order == order[0]).all():
                continue
            ordered = np.stack([np.take(draws[c], order[c], axis=axis - 1) for c in range(draws.shape[0])])
            if np.nanmax(_r_hat(ordered)) <= 1.05:
                found.append(name)
                break
    return found


def nuts_compare(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    param_state: dict | None = None,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 2,
    svi_samples: int = 4000,
    tolerance: float = 0.1,
    seed: int = 0,
    warn: bool = True,
    target_accept_prob: float = 0.8,
    relabel: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> NUTSComparison:
    """Run NUTS on the same model and compare its posterior with the guide's.

    Chains run one after another (no multiprocessing), each seeded. Only for
    models small enough for NUTS: a few hundred latent numbers at most. When
    NUTS itself is unreliable, :attr:`NUTSComparison.cause` says why and the
    message gives the advice that fits it: divergences (reparameterise, raise
    ``target_accept_prob``), label switching (``relabel``), or poor mixing
    (run longer).

    Parameters
    ----------
    model, guide : callable
    *args, **kwargs
        Their arguments (full data: no subsampling).
    param_state : dict, optional
        The guide's parameters (``fit.param_state`` or an estimator's ``_param_state``).
    num_warmup, num_samples, num_chains : int
    svi_samples : int, default 4000
    tolerance : float, default 0.1
        Largest acceptable |SVI mean − NUTS mean| in NUTS sds (and twice that
        for the relative sd error), *beyond* Monte Carlo error: each parameter
        may differ by the tolerance plus three Monte Carlo standard errors of
        the difference (from NUTS's MCSE of the mean and the SVI draws for the
        means; from the bulk ESS and the SVI draws for the sds). Without that
        allowance a model with a dozen parameters and a few hundred effective
        draws "disagrees" by chance alone.
    seed : int, default 0
    warn : bool, default True
    target_accept_prob : float, default 0.8
        NUTS's step-size adaptation target; 0.9–0.99 takes smaller steps, the usual cure for a few
        divergences.
    relabel : callable, optional
        ``relabel(draws) -> draws``, applied to each NUTS chain's draws and to the guide's draws before
        they are compared: a dict of site name → array of shape ``(num_draws, *site_shape)`` in, the
        same sites and shapes out. For mixtures, whose components NUTS chains may label differently,
        e.g. ``lambda d: {**d, "locs": np.sort(d["locs"], axis=-1)}`` (sort the draws of every site
        that shares the component axis by the same order).
    progress : bool, optional
        Show a tqdm progress bar over all chains' warm-up and sampling steps, as ``run_svi(progress=True)``
        does for SVI. None: show it when standard error is a terminal.

    Returns
    -------
    NUTSComparison
    """
    num_samples = check_count(num_samples, "num_samples", minimum=2)
    num_warmup = check_count(num_warmup, "num_warmup", minimum=0)
    num_chains = check_count(num_chains, "num_chains")
    svi_samples = check_count(svi_samples, "svi_samples", minimum=2)
    if not 0 < float(target_accept_prob) < 1:
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
    if relabel is not None and not callable(relabel):
        raise TypeError(f"relabel must be a callable draws -> draws, got {relabel!r}")
    import arviz as az
    from arviz_base import from_dict

    samples, divergences = _run_chains(
        model,
        args,
        kwargs,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        seed=seed,
        target_accept_prob=float(target_accept_prob),
        relabel=relabel,
        progress=progress,
    )
    switched = label_switched_sites(samples)
    tree = from_dict({"posterior": samples})
    nuts = az.summary(tree, kind="all", round_to="none")
    svi = _svi_draws(model, guide, args, kwargs, samples, param_state=param_state, svi_samples=svi_samples, seed=seed)
    svi = _relabelled(relabel, svi, "guide draws")
    table = _comparison_table(samples, svi, nuts)
    agree = _allow_for_monte_carlo_error(
        table, tolerance=tolerance, nuts_draws=num_samples * num_chains, svi_samples=svi_samples
    )
    result = NUTSComparison(
        table=table, divergences=divergences, tree=tree, agree=agree, tolerance=tolerance, label_switching=switched
    )
    if warn and not (agree and result.reliable):
        warnings.warn(result.message(), UserWarning, stacklevel=2)
    return result


def _allow_for_monte_carlo_error(table: Any, *, tolerance: float, nuts_draws: int, svi_samples: int) -> bool:
    """Add the columns ``smd_allowed`` and ``sd_ratio_allowed`` to ``table``; do all parameters agree within them?

    Each allowance is the tolerance plus three Monte Carlo standard errors of the difference: from NUTS's MCSE
    of the mean (or, where undefined, that of ``nuts_draws`` independent draws) and the SVI draws for the means;
    from the bulk ESS and the SVI draws for the sds.
    """
    n_svi = float(svi_samples)
    mcse = (table["nuts_mcse_mean"] / table["nuts_sd"]).fillna(1.0 / np.sqrt(nuts_draws))
    ess = table["nuts_ess_bulk"].fillna(float(nuts_draws)).clip(lower=2.0)
    table["smd_allowed"] = tolerance + 3.0 * np.sqrt(mcse**2 + table["sd_ratio"] ** 2 / n_svi)
    table["sd_ratio_allowed"] = 2 * tolerance + 3.0 * table["sd_ratio"] * np.sqrt(1 / (2 * ess) + 1 / (2 * n_svi))
    return bool(
        (table["smd"].abs() <= table["smd_allowed"]).all()
        and (np.abs(table["sd_ratio"] - 1) <= table["sd_ratio_allowed"]).all()
    )


def _relabelled(
    relabel: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None, draws: dict[str, np.ndarray], what: str
) -> dict[str, np.ndarray]:
    """``relabel(draws)`` (``draws`` as they are without one), checked to keep the sites and their shapes."""
    if relabel is None:
        return draws
    out = relabel({k: v.copy() for k, v in draws.items()})
    if not isinstance(out, dict) or set(out) != set(draws) or any(np.shape(out[k]) != draws[k].shape for k in draws):
        raise ValueError(
            f"relabel must return the same sites with the same shapes ({what}: "
            f"{ {k: v.shape for k, v in draws.items()} })"
        )
    return {k: np.asarray(v) for k, v in out.items()}


def _run_chains(
    model: ModelFn,
    args: tuple,
    kwargs: dict,
    *,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    seed: int,
    target_accept_prob: float,
    relabel: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None,
    progress: bool | None,
) -> tuple[dict[str, np.ndarray], int]:
    """NUTS chains one after another, each seeded: the draws by site, shape (chain, draw, ...), and the divergences."""
    import sys

    from pyro.infer import MCMC, NUTS

    from bayesgen.infer import param_scope

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=int(num_chains) * (int(num_warmup) + int(num_samples)), desc="NUTS", unit="step", dynamic_ncols=True
        )
    chains, divergences = [], 0
    try:
        for c in range(int(num_chains)):

            def hook(kernel: Any, params: Any, stage: str, i: int, chain: int = c) -> None:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(chain=f"{chain + 1}/{num_chains}", stage=stage.lower())

            with seeded(seed + 1000 * c, torch.device("cpu")), param_scope({"params": {}, "constraints": {}}):
                kernel = NUTS(model, jit_compile=False, target_accept_prob=target_accept_prob)
                mcmc = MCMC(
                    kernel,
                    num_samples=int(num_samples),
                    warmup_steps=int(num_warmup),
                    num_chains=1,
                    disable_progbar=True,
                    hook_fn=hook if bar is not None else None,
                )
                mcmc.run(*args, **kwargs)
                draws = {k: to_numpy(v) for k, v in mcmc.get_samples().items()}
                chains.append(_relabelled(relabel, draws, f"chain {c}"))
                div = mcmc.diagnostics().get("divergences", {})
                divergences += int(sum(len(v) for v in div.values()))
    finally:
        if bar is not None:
            bar.close()
    return {k: np.stack([ch[k] for ch in chains]) for k in chains[0]}, divergences


def _svi_draws(
    model: ModelFn,
    guide: ModelFn,
    args: tuple,
    kwargs: dict,
    samples: dict[str, np.ndarray],
    *,
    param_state: dict | None,
    svi_samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """``svi_samples`` guide draws of the sites in ``samples`` (NUTS's, shape (chain, draw, ...)), by site."""
    from pyro.infer import Predictive

    from bayesgen.infer import param_scope

    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    with scope, seeded(seed, torch.device("cpu")), torch.no_grad():
        pred = Predictive(model, guide=guide, num_samples=int(svi_samples), return_sites=list(samples))
        return {
            k: to_numpy(v).reshape(int(svi_samples), *samples[k].shape[2:]) for k, v in pred(*args, **kwargs).items()
        }


def _comparison_table(samples: dict[str, np.ndarray], svi: dict[str, np.ndarray], nuts: Any) -> Any:
    """One row per scalar parameter: NUTS's moments and ArviZ diagnostics (``nuts``, its summary), SVI's moments."""
    import pandas as pd

    rows = []
    for name, draws in samples.items():
        flat_nuts = draws.reshape(draws.shape[0] * draws.shape[1], -1)
        flat_svi = svi[name].reshape(len(svi[name]), -1)
        labels = list(nuts.index[[i.split("[")[0] == name for i in nuts.index]])
        for j in range(flat_nuts.shape[1]):
            label = labels[j] if j < len(labels) else f"{name}[{j}]"
            m, sd = flat_nuts[:, j].mean(), flat_nuts[:, j].std(ddof=1)
            sm, ssd = flat_svi[:, j].mean(), flat_svi[:, j].std(ddof=1)
            stats = nuts.loc[label] if label in nuts.index else {}
            rows.append(
                {
                    "parameter": label,
                    "nuts_mean": m,
                    "nuts_sd": sd,
                    "nuts_r_hat": float(stats.get("r_hat", np.nan)),
                    "nuts_ess_bulk": float(stats.get("ess_bulk", np.nan)),
                    "nuts_ess_tail": float(stats.get("ess_tail", np.nan)),
                    "nuts_mcse_mean": float(stats.get("mcse_mean", np.nan)),
                    "svi_mean": sm,
                    "svi_sd": ssd,
                    "smd": (sm - m) / sd if sd > 0 else np.nan,
                    "sd_ratio": ssd / sd if sd > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows).set_index("parameter")

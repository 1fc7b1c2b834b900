"""The fitted posterior against the exact one, where the model is conjugate.

:func:`reference_check` compares every global site of a fitted estimator's
guide with the closed-form posterior the estimator gives
(``_reference_moments``); :func:`dirichlet_moments` is one of those closed forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgen._runtime import check_count, seeded, to_numpy
from bayesgen.diagnostics.labels import element_labels

__all__ = ["ReferenceCheck", "dirichlet_moments", "reference_check"]


@dataclass
class ReferenceCheck:
    """The fitted posterior of every global site next to its exact (closed-form) posterior.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter (``weights[3]``): ``site``, ``ref_mean``,
        ``ref_sd`` (exact), ``svi_mean``, ``svi_sd`` (from guide draws),
        ``smd`` = (SVI mean − exact mean) / exact sd, ``sd_ratio`` = SVI sd /
        exact sd, the allowances ``smd_allowed`` and ``sd_ratio_allowed`` (the
        tolerances plus three Monte Carlo standard errors of the draws) and ``ok``.
    unchecked : dict
        Global sites with no closed-form posterior, site → why (compare those
        with NUTS: ``estimator.nuts_check()``).
    mean_tolerance, sd_tolerance : float
        Largest |smd| and |sd ratio − 1| that count as agreement.
    """

    table: Any
    unchecked: dict[str, str]
    mean_tolerance: float = 0.25
    sd_tolerance: float = 0.2

    @property
    def agree(self) -> bool:
        """Every checked parameter within tolerance (True when nothing could be checked)."""
        return bool(self.table["ok"].all()) if len(self.table) else True

    def message(self) -> str:
        """One line: the worst mean gap and sd ratio, and the sites without a reference."""
        if not len(self.table):
            text = "no global site has a closed-form posterior to compare with"
        else:
            bad = self.table[~self.table["ok"]]
            text = (
                f"SVI vs exact posterior of {_count(self.table['site'].nunique(), 'global site')}: largest |mean gap| "
                f"{self.table['smd'].abs().max():.3f} sd, sd ratio {self.table['sd_ratio'].min():.2f}–"
                f"{self.table['sd_ratio'].max():.2f}: "
                + (
                    "agree"
                    if not len(bad)
                    else f"DISAGREE at {len(bad)} parameters ({', '.join(map(str, bad.index[:5]))})"
                )
            )
        if self.unchecked:
            text += "; no closed form for " + ", ".join(sorted(self.unchecked))
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def reference_check(
    estimator: Any,
    *,
    num_samples: int = 4000,
    seed: int | None = 0,
    mean_tolerance: float = 0.25,
    sd_tolerance: float = 0.2,
) -> ReferenceCheck:
    """Compare every global site of a fitted estimator's guide with its exact posterior.

    The exact posterior comes from the model's conjugacy (the A/B test's Beta
    rates; the generator's Dirichlet class weights and, for "diag"/"full", its
    Normal-Gamma / Normal-Wishart class parameters). The guide's moments come
    from ``num_samples`` guide draws.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.
    num_samples : int, default 4000
        Guide draws; the Monte Carlo error of their moments is part of the allowance.
    seed : int or None, default 0
    mean_tolerance : float, default 0.25
        Largest allowed |SVI mean − exact mean|, in exact sds.
    sd_tolerance : float, default 0.2
        Largest allowed |SVI sd / exact sd − 1|.

    Returns
    -------
    ReferenceCheck

    Examples
    --------
    >>> from bayesgen import BetaBinomialTest
    >>> test = BetaBinomialTest(num_steps=1500, seed=0).fit([235, 157], [2435, 2435])
    >>> reference_check(test, num_samples=2000).agree
    True
    """
    import pandas as pd

    from bayesgen.infer import param_scope

    num_samples = check_count(num_samples, "num_samples", minimum=100)
    estimator._check_fitted()
    exact, unchecked = estimator._reference_moments()
    columns = [
        "site",
        "ref_mean",
        "ref_sd",
        "svi_mean",
        "svi_sd",
        "smd",
        "sd_ratio",
        "smd_allowed",
        "sd_ratio_allowed",
        "ok",
    ]
    if not exact:
        return ReferenceCheck(pd.DataFrame(columns=columns), dict(unchecked), mean_tolerance, sd_tolerance)
    _, guide = estimator._model_and_guide(for_arviz=True)
    args, kwargs = estimator._model_args(for_arviz=True)
    from bayesgen.arviz import draw_guide

    nesting = getattr(estimator, "_max_plate_nesting", None)
    with param_scope(estimator._param_state), seeded(estimator._method_seed(seed), estimator.device_):
        draws = draw_guide(guide, *args, num_samples=num_samples, max_plate_nesting=nesting, **kwargs)
    rows = []
    for name, (ref_mean, ref_sd) in exact.items():
        values = to_numpy(draws[name]).astype(float)
        labels = element_labels(estimator, name, values.shape[1:])
        rows += _site_rows(
            name,
            labels,
            values,
            ref_mean,
            ref_sd,
            num_samples=num_samples,
            mean_tolerance=mean_tolerance,
            sd_tolerance=sd_tolerance,
        )
    table = pd.DataFrame(rows).set_index("parameter")
    return ReferenceCheck(table, dict(unchecked), mean_tolerance, sd_tolerance)


def _site_rows(
    name: str,
    labels: list[str],
    values: np.ndarray,
    ref_mean: np.ndarray,
    ref_sd: np.ndarray,
    *,
    num_samples: int,
    mean_tolerance: float,
    sd_tolerance: float,
) -> list[dict[str, Any]]:
    """One table row per scalar of a site: its ``num_samples`` guide draws ``values`` (shape (num_samples, ...))
    against the exact posterior's mean and sd (broadcast to the site's shape), with allowances for the draws'
    Monte Carlo error."""
    mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
    ref_mean, ref_sd = np.broadcast_to(ref_mean, mean.shape), np.broadcast_to(ref_sd, mean.shape)
    rows = []
    for index, label in zip(np.ndindex(mean.shape), labels, strict=True):
        smd, ratio = (mean[index] - ref_mean[index]) / ref_sd[index], sd[index] / ref_sd[index]
        smd_allowed = mean_tolerance + 3.0 * ratio / np.sqrt(num_samples)
        ratio_allowed = sd_tolerance + 3.0 * ratio / np.sqrt(2.0 * (num_samples - 1))
        rows.append(
            {
                "parameter": label,
                "site": name,
                "ref_mean": ref_mean[index],
                "ref_sd": ref_sd[index],
                "svi_mean": mean[index],
                "svi_sd": sd[index],
                "smd": smd,
                "sd_ratio": ratio,
                "smd_allowed": smd_allowed,
                "sd_ratio_allowed": ratio_allowed,
                "ok": bool(abs(smd) <= smd_allowed and abs(ratio - 1.0) <= ratio_allowed),
            }
        )
    return rows


def dirichlet_moments(concentration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of every coordinate of Dirichlet(``concentration``) (shape (..., K))."""
    a = np.asarray(concentration, dtype=float)
    a0 = a.sum(axis=-1, keepdims=True)
    return a / a0, np.sqrt(a * (a0 - a) / (a0**2 * (a0 + 1.0)))

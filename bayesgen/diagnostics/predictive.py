"""Posterior predictive checks: does the fitted model reproduce the data?

:func:`predictive_check` compares named statistics of the observed data with
their values in data sets replicated from the posterior predictive;
:func:`plot_predictive_checks` draws ArviZ's prior and posterior predictive
plots of every observed site.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgen._runtime import check_count

__all__ = [
    "FAMILY_SIZE",
    "P_VALUE_FLOOR",
    "PredictiveCheck",
    "format_p_value",
    "plot_predictive_checks",
    "predictive_check",
]


def plot_predictive_checks(
    estimator: Any, folder: Any, *, num_samples: int = 100, seed: int | None = 0, tree: Any = None
) -> dict:
    """Prior and posterior predictive check plots (ArviZ's ``plot_ppc_dist``) of every observed site.

    Each plot overlays the distribution of the observed values (all rows and
    features pooled) on that of ``num_samples`` predictive draws. Written as
    ``ppc_<group>_<site>.png``; returns {file name: "ok" or the error}. A
    ``tree`` from ``estimator.to_arviz(..., prior=True)`` is used instead of
    drawing one.
    """
    from pathlib import Path

    import arviz_plots as azp

    from bayesgen.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    try:
        tree = tree if tree is not None else estimator.to_arviz(num_samples, seed=seed, prior=True)
    except (ValueError, RuntimeError, TypeError) as err:
        return {"error": str(err).splitlines()[0]}
    for group in ("prior_predictive", "posterior_predictive"):
        if group not in tree.children:
            continue
        for var in tree[group].data_vars:
            name = f"ppc_{group}_{var}.png"
            try:
                with warnings.catch_warnings():
                    # ArviZ advises other plots for binary/discrete data; the pooled distribution still reads.
                    warnings.filterwarnings("ignore", message=".*look (binary|discrete)", category=UserWarning)
                    pc = azp.plot_ppc_dist(
                        tree, var_names=[var], group=group, num_samples=min(50, num_samples), backend="matplotlib"
                    )
                with atomic_path(folder / name) as tmp:
                    pc.savefig(tmp)
                import matplotlib.pyplot as plt

                plt.close("all")
                out[name] = "ok"
            except (ValueError, TypeError, KeyError, RuntimeError) as err:
                out[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return out


@dataclass
class PredictiveCheck:
    """Posterior predictive check of named statistics of the data.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per statistic (``count[white]``, ``mean[x, p12]``): ``observed``,
        the replicated data sets' ``replicated_mean`` and ``replicated_sd``,
        ``z`` = (observed − replicated mean) / replicated sd, the two-sided
        posterior predictive ``p_value`` (normal approximation of the
        replicated statistic, so that a family-wise level over many statistics
        can be reached with a few hundred replicates; shown as "< 1e-06" below
        :data:`P_VALUE_FLOOR`), ``outside_share``, the share of replicates at
        least as far from their mean as the observed value, and ``ok``.
    alpha : float
        Family-wise level: a statistic fails when its p-value is below
        ``alpha`` / (number of statistics) (Bonferroni).
    replicated : dict
        Statistic → its values in every replicated data set (for plots).
    advice : str
        When statistics fail and the estimator knows why (``_ppc_advice``: a
        Bernoulli VAE on grey images), one sentence on the cause and what to
        do; empty otherwise.
    """

    table: Any
    alpha: float = 0.01
    replicated: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    advice: str = ""

    @property
    def passed(self) -> bool:
        """No statistic outside what the fitted model replicates."""
        return bool(self.table["ok"].all()) if len(self.table) else True

    def message(self) -> str:
        """One line: the statistics checked, the smallest p-value, and those that fail."""
        if not len(self.table):
            return "posterior predictive check: no statistic to check"
        bad = self.table[~self.table["ok"]].sort_values("p_value")
        worst = self.table["p_value"].idxmin()
        text = (
            f"posterior predictive check of {len(self.table)} statistics: smallest p-value "
            f"{format_p_value(self.table.loc[worst, 'p_value'])} ({worst})"
        )
        if len(bad):
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            return (
                text + f"; {len(bad)} outside what the model replicates (p < {self.alpha:g}/"
                f"{len(self.table)}), the farthest first: "
                + ", ".join(map(str, bad.index[:5]))
                + more
                + " — the model does not reproduce these features of the data"
            )
        return text + ": the data look like the model's replicates"

    def plot(self, max_panels: int = 6) -> Any:
        """The statistics with the smallest p-values: replicated histogram, observed value, p-value."""
        from matplotlib.figure import Figure

        names = list(self.table.sort_values("p_value").index[:max_panels])
        cols = min(3, max(1, len(names)))
        rows = max(1, math.ceil(len(names) / cols))
        fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, names, strict=False):
            row = self.table.loc[name]
            low, high = np.quantile(self.replicated[name], [0.03, 0.97])
            ax.axvspan(low, high, color="#dde7f0", label="94 % of the replicates")
            ax.hist(self.replicated[name], bins=30, color="#9db4cc", label="replicated data sets")
            ax.axvline(row["observed"], color="#c0392b", lw=2, label="observed")
            ax.set_title(
                f"{name}: p {_p_relation(row['p_value'])}",
                fontsize="small",
                color="black" if row["ok"] else "#c0392b",
            )
            ax.set_xlabel(name, fontsize="small")
            ax.set_ylabel("replicates")
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        if names:
            axes[0].legend(fontsize="x-small")
        return fig


#: p-values below this are shown as "< 1e-06": the normal approximation's far tail is not meaningful.
P_VALUE_FLOOR = 1e-6


def format_p_value(p: float) -> str:
    """A p-value as text: three significant digits, or "< 1e-06" below :data:`P_VALUE_FLOOR`."""
    return f"< {P_VALUE_FLOOR:g}" if p < P_VALUE_FLOOR else f"{p:.3g}"


def _p_relation(p: float) -> str:
    text = format_p_value(p)
    return text if text.startswith("<") else f"= {text}"


def _default_statistics(data: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean and sd of every observed site's values."""
    out = {}
    for site, values in data.items():
        out[f"mean[{site}]"] = float(np.mean(values))
        out[f"sd[{site}]"] = float(np.std(values))
    return out


#: A family of statistics (``sd[x0]``, ``sd[x1]``, ...: one name before the bracket) this large also gets
#: its mean standardised deviation checked as one statistic.
FAMILY_SIZE = 5


def _family_statistics(
    observed: dict[str, float], replicated: dict[str, np.ndarray]
) -> dict[str, tuple[float, np.ndarray]]:
    """``<name>[all J: mean z]`` for every family of at least :data:`FAMILY_SIZE` statistics: the mean over
    the family of (statistic − its replicated mean) / its replicated sd, in the data and in every replicate.

    Each statistic alone may sit inside its replicates while most of them sit on the same side (every
    pixel's sd a little below what the model replicates); their mean deviation shows that.
    """
    families: dict[str, list[str]] = {}
    for name in observed:
        prefix, bracket, _ = name.partition("[")
        if bracket:
            families.setdefault(prefix, []).append(name)
    out = {}
    for prefix, names in families.items():
        spread = [n for n in names if replicated[n].std(ddof=1) > 0]
        if len(names) < FAMILY_SIZE or not spread:
            continue
        centre = {n: replicated[n].mean() for n in spread}
        scale = {n: replicated[n].std(ddof=1) for n in spread}
        value = float(np.mean([(observed[n] - centre[n]) / scale[n] for n in spread]))
        values = np.mean([(replicated[n] - centre[n]) / scale[n] for n in spread], axis=0)
        out[f"{prefix}[all {len(names)}: mean z]"] = (value, values)
    return out


def predictive_check(
    estimator: Any, *, num_samples: int = 200, seed: int | None = 0, alpha: float = 0.01, tree: Any = None
) -> PredictiveCheck:
    """Posterior predictive check of the statistics an analyst expects of the estimator's data.

    Each estimator names its statistics (``_ppc_statistics``: A/B counts per
    variant; the generator's class counts and per-feature means and sds; the
    anomaly detector's per-feature means, sds and Mahalanobis distances;
    ProdLDA's top words' shares of tokens and of documents and the distinct
    words per document; the VAE's mean intensity, within-image sd, share of
    "on" pixels and its most variable pixels' means; by default the mean and
    sd of every observed site). Each is computed on the
    observed data and on ``num_samples`` data sets replicated from the
    posterior predictive; its p-value is two-sided. A family of at least
    :data:`FAMILY_SIZE` statistics of one name (``sd[x0]``, ``sd[x1]``, ...)
    also gets one statistic, ``sd[all J: mean z]``: the mean of its members'
    standardised deviations, which catches a shift that every member shows a
    little of.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.
    num_samples : int, default 200
        Replicated data sets.
    seed : int or None, default 0
    alpha : float, default 0.01
        Family-wise level (Bonferroni over the statistics).
    tree : xarray.DataTree, optional
        ``estimator.to_arviz(...)`` output to use instead of drawing one
        (its posterior predictive draws are the replicates).

    Returns
    -------
    PredictiveCheck
    """
    import pandas as pd
    from scipy import stats as sps

    num_samples = check_count(num_samples, "num_samples", minimum=20)
    if tree is None:
        tree = estimator.to_arviz(num_samples, seed=seed)
    observed = {k: np.asarray(tree["observed_data"][k].values, dtype=float) for k in tree["observed_data"].data_vars}
    pp = tree["posterior_predictive"]
    replicated = {k: np.asarray(pp[k].values, dtype=float).reshape(-1, *observed[k].shape) for k in observed}
    statistic = getattr(estimator, "_ppc_statistics", None) or _default_statistics
    obs = statistic(observed)
    reps = [statistic({k: v[i] for k, v in replicated.items()}) for i in range(len(next(iter(replicated.values()))))]

    def row(name: str, value: float, values: np.ndarray) -> dict[str, Any]:
        mean, sd = values.mean(), values.std(ddof=1)
        z = (value - mean) / sd if sd > 0 else (0.0 if value == mean else np.inf)
        draws[name] = values
        return {
            "statistic": name,
            "observed": value,
            "replicated_mean": mean,
            "replicated_sd": sd,
            "z": z,
            "p_value": float(2 * sps.norm.sf(abs(z))),
            "outside_share": float(np.mean(np.abs(values - mean) >= abs(value - mean))),
        }

    draws: dict[str, np.ndarray] = {}
    rows = [row(name, value, np.array([r[name] for r in reps], dtype=float)) for name, value in obs.items()]
    rows += [row(name, value, values) for name, (value, values) in _family_statistics(obs, draws).items()]
    table = pd.DataFrame(rows).set_index("statistic")
    table["ok"] = table["p_value"] >= alpha / max(len(table), 1)
    failed = [str(name) for name in table.index[~table["ok"]]]
    explain = getattr(estimator, "_ppc_advice", None)
    advice = (explain(observed, failed) or "") if failed and explain is not None else ""
    return PredictiveCheck(table=table, alpha=alpha, replicated=draws, advice=advice)

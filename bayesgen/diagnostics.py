"""Is this variational posterior trustworthy? Diagnostics for any model/guide pair.

So far: the Pareto-smoothed importance sampling diagnostic of Yao, Vehtari,
Simpson & Gelman (2018). Draw z_s from the guide, form the importance ratios
``log w_s = log p(x, z_s) − log q(z_s)``, and fit a generalised Pareto
distribution to their upper tail: its shape k̂ says how heavy the tail is.
k̂ < 0.5: the guide is close to the posterior and importance sampling is
reliable; 0.5–0.7: usable, with PSIS-corrected expectations; > 0.7: the guide
misses posterior mass and neither it nor importance sampling can be trusted.
The smoothing is ArviZ's (``arviz_stats``), not a reimplementation.

References
----------
Yao, Vehtari, Simpson & Gelman (2018), Yes, but did it work?: Evaluating
variational inference. ICML.
Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto smoothed importance sampling. JMLR.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyro import poutine

from bayesgen._runtime import resolve_device, seeded, to_numpy
from bayesgen._typing import DeviceLike, ModelFn

__all__ = ["KHAT_GOOD", "KHAT_USABLE", "VIDiagnostic", "psis_expectation", "vi_khat"]

logger = logging.getLogger(__name__)

KHAT_GOOD = 0.5
KHAT_USABLE = 0.7


@dataclass
class VIDiagnostic:
    """PSIS diagnostic of a guide.

    Attributes
    ----------
    khat : float
        Pareto shape of the importance ratios' upper tail.
    verdict : {"good", "usable", "unreliable"}
    num_samples : int
    log_weights : numpy.ndarray, shape (num_samples,)
        Pareto-smoothed, normalised log importance weights.
    raw_log_weights : numpy.ndarray, shape (num_samples,)
        log p(x, z_s) − log q(z_s).
    draws : dict of numpy.ndarray
        The guide draws z_s, by site (leading dim num_samples).
    """

    khat: float
    verdict: str
    num_samples: int
    log_weights: np.ndarray = field(repr=False)
    raw_log_weights: np.ndarray = field(repr=False)
    draws: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def ess(self) -> float:
        """Effective sample size of the smoothed weights, 1 / Σ w_s²."""
        w = np.exp(self.log_weights - np.logaddexp.reduce(self.log_weights))
        return float(1.0 / np.sum(w**2))

    def message(self) -> str:
        """One line for a report or the CLI."""
        meaning = {
            "good": "the guide is close to the posterior",
            "usable": "usable; prefer PSIS-corrected expectations",
            "unreliable": "the guide misses posterior mass; do not trust its uncertainty",
        }[self.verdict]
        return f"PSIS k-hat = {self.khat:.2f} ({self.verdict}: {meaning}; {self.num_samples} draws, ESS {self.ess:.0f})"

    def expectation(self, fn: Callable[[dict[str, np.ndarray]], np.ndarray]) -> np.ndarray:
        """PSIS-corrected posterior expectation of ``fn(draws)`` (a value per draw on axis 0)."""
        return psis_expectation(np.asarray(fn(self.draws)), self.log_weights, khat=self.khat)


def _verdict(khat: float) -> str:
    if khat < KHAT_GOOD:
        return "good"
    if khat <= KHAT_USABLE:
        return "usable"
    return "unreliable"


def psis_expectation(values: np.ndarray, log_weights: np.ndarray, *, khat: float | None = None) -> np.ndarray:
    """Self-normalised importance-sampling expectation with (smoothed) log weights.

    Parameters
    ----------
    values : numpy.ndarray, shape (num_samples, ...)
    log_weights : numpy.ndarray, shape (num_samples,)
    khat : float, optional
        Refuses (ValueError) when above 0.7: the estimate would not be reliable.

    Returns
    -------
    numpy.ndarray, shape values.shape[1:]
    """
    if khat is not None and khat > KHAT_USABLE:
        raise ValueError(f"k-hat = {khat:.2f} > {KHAT_USABLE}: importance-sampling expectations are unreliable")
    w = np.exp(log_weights - np.logaddexp.reduce(log_weights))
    values = np.asarray(values, dtype=float)
    return np.tensordot(w, values, axes=(0, 0))


def _log_weights(
    model: ModelFn, guide: ModelFn, args: tuple, kwargs: dict, num_samples: int, max_plate_nesting: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from pyro.infer.importance import vectorized_importance_weights

    try:
        log_w, _, guide_trace = vectorized_importance_weights(
            model, guide, *args, num_samples=num_samples, max_plate_nesting=max_plate_nesting or 4,
            normalized=False, **kwargs,
        )
        draws = {}
        for n, s in guide_trace.nodes.items():
            if s["type"] == "sample" and not s["is_observed"] and not n.startswith("_"):
                v, event = s["value"], len(s["fn"].event_shape)
                batch = [k for k in v.shape[1 : v.dim() - event] if k != 1]  # drop the particle plate's padding
                draws[n] = v.reshape(num_samples, *batch, *v.shape[v.dim() - event :])
        if log_w.shape == (num_samples,):
            return log_w, draws
    except (RuntimeError, ValueError, NotImplementedError) as err:
        logger.info("vectorised importance weights failed (%s); drawing one at a time", err)
    out, draws_list = [], []
    for _ in range(num_samples):
        g = poutine.trace(guide).get_trace(*args, **kwargs)
        m = poutine.trace(poutine.replay(model, trace=g)).get_trace(*args, **kwargs)
        out.append(m.log_prob_sum() - g.log_prob_sum())
        draws_list.append({n: s["value"] for n, s in g.nodes.items()
                           if s["type"] == "sample" and not s["is_observed"]})
    draws = {k: torch.stack([d[k] for d in draws_list]) for k in draws_list[0]}
    return torch.stack(out), draws


def vi_khat(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    num_samples: int = 2000,
    param_state: dict | None = None,
    max_plate_nesting: int | None = None,
    seed: int | None = 0,
    device: DeviceLike = "cpu",
    warn: bool = True,
    **kwargs: Any,
) -> VIDiagnostic:
    """PSIS k-hat of a fitted guide (Yao et al. 2018).

    Parameters
    ----------
    model, guide : callable
        The pair as fitted (minibatch models are evaluated on all their data).
    *args, **kwargs
        Their arguments.
    num_samples : int, default 2000
        Guide draws.
    param_state : dict, optional
        Parameter state from :func:`bayesgen.infer.run_svi` or an estimator's
        ``_param_state``; None uses the global param store.
    max_plate_nesting : int, optional
    seed : int or None, default 0
    device : {"auto", "cpu", "cuda"} or torch.device, default "cpu"
        Where the random draws are seeded.
    warn : bool, default True
        Warn (UserWarning) when k-hat > 0.7.

    Returns
    -------
    VIDiagnostic

    Examples
    --------
    >>> from bayesgen import BetaBinomialTest
    >>> test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435])
    >>> test.vi_diagnostic(num_samples=500).verdict
    'good'
    """
    from arviz_stats.base import array_stats

    from bayesgen.infer import param_scope

    if int(num_samples) < 100:
        raise ValueError(f"num_samples must be at least 100 for a k-hat estimate, got {num_samples}")
    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    with scope, seeded(seed, resolve_device(device)), torch.no_grad():
        log_w, draws = _log_weights(model, guide, args, kwargs, int(num_samples), max_plate_nesting)
    raw = to_numpy(log_w).astype(float)
    if not np.isfinite(raw).all():
        bad = int((~np.isfinite(raw)).sum())
        raise ValueError(f"{bad} of {len(raw)} importance ratios are not finite; the guide puts mass where the "
                         "model has none (or the model fails for some draws)")
    if np.ptp(raw) < 1e-4:
        # Constant ratios: the guide is the posterior up to rounding; the Pareto fit is degenerate.
        smoothed, khat = np.full_like(raw, -np.log(len(raw))), -np.inf
    else:
        # arviz_stats' psislw takes a log-likelihood (LOO's ratios are 1 / p(y_i | θ)), so negate.
        smoothed, khat = array_stats.psislw(-(raw - raw.max()), r_eff=1.0)
        khat = float(np.asarray(khat))
    diag = VIDiagnostic(khat=khat, verdict=_verdict(khat), num_samples=int(num_samples),
                        log_weights=np.asarray(smoothed, dtype=float), raw_log_weights=raw,
                        draws={k: to_numpy(v) for k, v in draws.items()})
    if warn and diag.verdict == "unreliable":
        warnings.warn(diag.message(), UserWarning, stacklevel=2)
    return diag

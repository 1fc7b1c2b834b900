"""Is this variational posterior trustworthy? Diagnostics for any model/guide pair.

Here: a verdict on the optimisation from the loss trace (:func:`convergence_report`),
all diagnostics of a fitted estimator at once (:func:`diagnose`, written to a run
folder by :func:`write_diagnostics` and by ``bayesgen diagnose RUN_DIR``), and the
Pareto-smoothed importance sampling diagnostic of Yao, Vehtari,
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
import copy
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from bayesgen._runtime import check_count, is_out_of_memory, seeded, target_device, tensors_on, to_numpy
from bayesgen._typing import DeviceLike, ModelFn

if TYPE_CHECKING:
    from bayesgen.infer import ConvergenceCheck

__all__ = [
    "CHECKS",
    "CheckVerdict",
    "KHAT_GOOD",
    "KHAT_USABLE",
    "NUTSComparison",
    "ReferenceCheck",
    "RowDiagnostic",
    "SBCResult",
    "VIDiagnostic",
    "check_verdicts",
    "convergence_report",
    "diagnose",
    "nuts_compare",
    "overall_verdicts",
    "PredictiveCheck",
    "plot_predictive_checks",
    "predictive_check",
    "psis_expectation",
    "element_labels",
    "psis_summary",
    "reference_check",
    "sbc",
    "vi_khat",
    "vi_khat_rows",
    "write_diagnostics",
]

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
            "good": "no heavy tail in the importance ratios",
            "usable": "usable; prefer PSIS-corrected expectations",
            "unreliable": "the guide misses posterior mass; do not trust its uncertainty",
        }[self.verdict]
        text = f"PSIS k-hat = {self.khat:.2f} ({self.verdict}: {meaning}; {self.num_samples} draws, ESS {self.ess:.0f})"
        if self.verdict != "unreliable" and self.ess < 0.5 * self.num_samples:
            # k-hat cannot see a guide that is too wide (bounded ratios); a low ESS can.
            text += (
                f"; but only {self.ess / self.num_samples:.0%} effective draws: the guide may be too wide or off-centre"
            )
        return text

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


def _point_mass_sites(guide_trace: poutine.Trace, draws: dict[str, torch.Tensor]) -> list[str]:
    """Latent sites the guide draws from a Delta (under any wrapper) whose draws are all the same.

    AutoDelta's sites; not AutoNormal's, whose Deltas carry the transformed draws of an auxiliary site.
    """
    names = []
    for name, site in guide_trace.nodes.items():
        if (
            site["type"] != "sample"
            or site["is_observed"]
            or site_is_subsample(site)
            or site["infer"].get("_deterministic")
            or name not in draws
        ):
            continue
        fn = site["fn"]
        while not isinstance(fn, pyro.distributions.Delta) and hasattr(fn, "base_dist"):
            fn = fn.base_dist  # Independent, masked, expanded or transformed
        if isinstance(fn, pyro.distributions.Delta) and bool((draws[name] == draws[name][:1]).all()):
            names.append(name)
    return names


def _check_judgeable(model_trace: poutine.Trace, guide_trace: poutine.Trace, draws: dict[str, torch.Tensor]) -> None:
    """Refuse a pair whose importance ratios cannot judge the guide against the posterior given all the data.

    ``draws``: the guide's draws by site, shape (num_samples, ...). A point-mass site makes every draw of it
    the same, so the ratios are constant in it and k-hat calls any point "good". A subsampled plate makes
    each ratio a random minibatch's, scaled up to the full size.
    """
    points = _point_mass_sites(guide_trace, draws)
    if points:
        raise ValueError(
            f"cannot judge the guide: the guide is a point mass at {points} (a Delta, as AutoDelta draws), so its "
            "draws have no spread for the importance ratios to weigh and k-hat would call any point good; fit a "
            "guide with spread (e.g. AutoNormal) to check the posterior, or compare with NUTS (nuts_compare)"
        )
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                size, full = frame.size, frame.full_size
                if isinstance(size, int) and isinstance(full, int) and 0 <= size < full:
                    raise ValueError(
                        f"plate {frame.name!r} evaluates {size} of its {full} rows (subsample_size or subsample), so "
                        "each importance ratio would see a random minibatch, not all the data; evaluate on all rows: "
                        f"give the model its subsample as an argument (pyro.plate({frame.name!r}, {full}, "
                        "subsample=subsample), or subsample_size=batch_size) and check it with that argument None"
                    )


def _log_weights(
    model: ModelFn, guide: ModelFn, args: tuple, kwargs: dict, num_samples: int, max_plate_nesting: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from pyro.infer import TraceEnum_ELBO
    from pyro.infer.importance import vectorized_importance_weights

    from bayesgen.arviz import _enumerated_sites, _max_plate_nesting

    enumerated, traces, first = None, None, None
    try:
        log_w, model_trace, guide_trace = vectorized_importance_weights(
            model,
            guide,
            *args,
            num_samples=num_samples,
            max_plate_nesting=max_plate_nesting or 4,
            normalized=False,
            **kwargs,
        )
        traces = (model_trace, guide_trace)
        enumerated = _enumerated_sites(model_trace, guide_trace)
        draws = {}
        for n, s in guide_trace.nodes.items():
            if s["type"] == "sample" and not s["is_observed"] and not n.startswith("_"):
                v, event = s["value"], len(s["fn"].event_shape)
                batch = [k for k in v.shape[1 : v.dim() - event] if k != 1]  # drop the particle plate's padding
                draws[n] = v.reshape(num_samples, *batch, *v.shape[v.dim() - event :])
    except (RuntimeError, ValueError, NotImplementedError) as err:
        logger.info("vectorised importance weights failed (%s); drawing one at a time", err)
    if traces is not None and enumerated is not None and not enumerated and log_w.shape == (num_samples,):
        _check_judgeable(*traces, draws)
        return log_w, draws
    # One draw at a time. A site the model enumerates and the guide does not draw is summed out of
    # log p(y, θ), as TraceEnum_ELBO sums it out in training: one particle's -loss is log p(y, θ) - log q(θ).
    out, draws_list, elbo, names = [], [], None, []
    for i in range(num_samples):
        g = poutine.trace(guide).get_trace(*args, **kwargs)
        if elbo is None:
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace(*args, **kwargs)
            if i == 0:
                _check_judgeable(m, g, {})  # the plates now; point masses once the draws are in
                first = (m, g)
            names = _enumerated_sites(m, g) if i == 0 else []
            if names:
                elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting or _max_plate_nesting(m))
        if elbo is None:
            out.append(m.log_prob_sum() - g.log_prob_sum())
        else:
            try:
                out.append(torch.tensor(-elbo.loss(model, poutine.replay(guide, trace=g), *args, **kwargs)))
            except (RuntimeError, ValueError) as err:
                if is_out_of_memory(err):
                    raise
                raise ValueError(
                    f"summing out the enumerated sites {names} with TraceEnum_ELBO failed: "
                    f"{str(err).splitlines()[0] if str(err) else repr(err)}"
                ) from err
        draws_list.append({n: s["value"] for n, s in g.nodes.items() if s["type"] == "sample" and not s["is_observed"]})
    draws = {k: torch.stack([d[k] for d in draws_list]) for k in draws_list[0]}
    _check_judgeable(*first, draws)
    return torch.stack(out), draws


def _psis(raw: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, normalised log weights and k-hat of each row of ``raw`` (rows, draws).

    Rows whose ratios are equal up to the rounding of their dtype (machine epsilon ``eps``) are the
    posterior up to a constant: equal weights and k-hat −inf, since the Pareto fit is degenerate there
    (ArviZ's gives NaN, or refuses a tail of equal values).
    """
    from arviz_stats.base import array_stats

    rows, n = raw.shape
    flat = np.ptp(raw, axis=1) < np.maximum(1e-4, 64 * eps * np.abs(raw).max(axis=1))
    smoothed, khat = raw - np.logaddexp.reduce(raw, axis=1, keepdims=True), np.full(rows, -np.inf)
    smoothed[flat] = -np.log(n)
    live = np.flatnonzero(~flat)
    # arviz_stats' psislw takes a log-likelihood (LOO's ratios are 1 / p(y_i | θ)), so negate.
    ratios = -(raw[live] - raw[live].max(axis=1, keepdims=True))
    try:
        parts = [(live, *array_stats.psislw(ratios, r_eff=1.0, axis=-1))] if len(live) else []
    except ValueError:  # some row's tail values are all the same: fit row by row
        parts = []
        for i, row in zip(live, ratios, strict=True):
            with contextlib.suppress(ValueError):
                parts.append((np.array([i]), *array_stats.psislw(row[None], r_eff=1.0, axis=-1)))
    for index, part_smoothed, part_khat in parts:
        smoothed[index], khat[index] = part_smoothed, np.asarray(part_khat, dtype=float)
    return smoothed, khat


def vi_khat(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    num_samples: int = 2000,
    param_state: dict | None = None,
    max_plate_nesting: int | None = None,
    seed: int | None = 0,
    device: DeviceLike | None = None,
    warn: bool = True,
    **kwargs: Any,
) -> VIDiagnostic:
    """PSIS k-hat of a fitted guide (Yao et al. 2018).

    Parameters
    ----------
    model, guide : callable
        The pair as fitted, evaluated on all the rows of their plates (a
        plate that subsamples is refused: give the model its subsample as an
        argument and pass None). Discrete sites the model enumerates and the guide does not draw are
        summed out of log p(y, θ), as ``TraceEnum_ELBO`` does in training
        (one draw at a time).
    *args, **kwargs
        Their arguments.
    num_samples : int, default 2000
        Guide draws.
    param_state : dict, optional
        Parameter state from :func:`bayesgen.infer.run_svi` or an estimator's
        ``_param_state``; None uses the global param store.
    max_plate_nesting : int, optional
    seed : int or None, default 0
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Where the random draws are seeded (and tensors that name no device are
        created); None: the device of the model's tensor arguments.
    warn : bool, default True
        Warn (UserWarning) when k-hat > 0.7.

    Returns
    -------
    VIDiagnostic

    Raises
    ------
    ValueError
        Where the ratios cannot judge the guide: a point-mass guide site
        (AutoDelta: every draw the same), a plate that evaluates fewer rows
        than its size; or non-finite ratios, or fewer than 100 draws.

    Examples
    --------
    >>> from bayesgen import BetaBinomialTest
    >>> test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435])
    >>> test.vi_diagnostic(num_samples=500).verdict
    'good'
    """
    num_samples = check_count(num_samples, "num_samples", minimum=2)
    from bayesgen.infer import param_scope

    if int(num_samples) < 100:
        raise ValueError(f"num_samples must be at least 100 for a k-hat estimate, got {num_samples}")
    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    dev = target_device(device, args, kwargs)
    with scope, seeded(seed, dev), tensors_on(dev), torch.no_grad():
        log_w, draws = _log_weights(model, guide, args, kwargs, int(num_samples), max_plate_nesting)
    raw = to_numpy(log_w).astype(float)
    if not np.isfinite(raw).all():
        bad = int((~np.isfinite(raw)).sum())
        raise ValueError(
            f"{bad} of {len(raw)} importance ratios are not finite; the guide puts mass where the "
            "model has none (or the model fails for some draws)"
        )
    smoothed, khats = _psis(raw[None], torch.finfo(log_w.dtype).eps)
    smoothed, khat = smoothed[0], float(khats[0])
    diag = VIDiagnostic(
        khat=khat,
        verdict=_verdict(khat),
        num_samples=int(num_samples),
        log_weights=np.asarray(smoothed, dtype=float),
        raw_log_weights=raw,
        draws={k: to_numpy(v) for k, v in draws.items()},
    )
    if warn and diag.verdict == "unreliable":
        warnings.warn(diag.message(), UserWarning, stacklevel=2)
    return diag


# ------------------------------------------------------ per-row PSIS (amortised)
@dataclass
class RowDiagnostic:
    """PSIS k-hat of an amortised guide, one per data row.

    For a model whose latent variables are all local (one z_i per row, as in a
    VAE or ProdLDA) and whose guide is amortised, the posterior factorises over
    rows and the importance ratio of row i is ``p(x_i, z_i) / q(z_i | x_i)``.
    The joint k-hat over many rows grows with their number whatever the guide's
    quality; the per-row k-hats are the meaningful check.

    Attributes
    ----------
    khat : numpy.ndarray, shape (n_rows,)
    num_samples : int
        Guide draws per row.
    plate : str
        The data plate the rows come from.
    """

    khat: np.ndarray = field(repr=False)
    num_samples: int
    plate: str

    def _quantile(self, q: float) -> float:
        # Rows whose ratios are constant (exact guide) have k-hat −inf; quantiles need finite numbers.
        return float(np.quantile(np.maximum(np.asarray(self.khat, dtype=float), -1.0), q))

    @property
    def shares(self) -> dict[str, float]:
        """Share of rows whose k-hat is good (< 0.5), usable (0.5–0.7) and unreliable (> 0.7)."""
        k = np.asarray(self.khat, dtype=float)
        return {
            "good": float(np.mean(k < KHAT_GOOD)),
            "usable": float(np.mean((k >= KHAT_GOOD) & (k <= KHAT_USABLE))),
            "unreliable": float(np.mean(k > KHAT_USABLE)),
        }

    @property
    def verdict(self) -> str:
        """ "unreliable" when more than 10 % of rows are, else the verdict of the 90th-percentile row."""
        if self.shares["unreliable"] > 0.1:
            return "unreliable"
        return _verdict(self._quantile(0.9))

    def message(self) -> str:
        """One line for a report or the CLI."""
        s = self.shares
        return (
            f"per-row PSIS k-hat over {len(self.khat)} {self.plate}s ({self.num_samples} draws each): median "
            f"{self._quantile(0.5):.2f}, 90th percentile {self._quantile(0.9):.2f}; share of rows with k-hat "
            f"< {KHAT_GOOD}: {s['good']:.0%}, {KHAT_GOOD}–{KHAT_USABLE}: {s['usable']:.0%}, > {KHAT_USABLE}: "
            f"{s['unreliable']:.0%} (verdict: {self.verdict})"
        )


def _guide_draws(guide_trace: poutine.Trace, nesting: int) -> dict[str, torch.Tensor]:
    """The guide's latent values, batch dims padded to ``nesting`` so that dim 0 is the draws' (size 1 or all)."""
    out = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            v = site["value"]
            for _ in range(nesting - (v.dim() - len(site["fn"].event_shape))):
                v = v.unsqueeze(0)
            out[name] = v
    return out


def _row_log_ratios(model_trace: poutine.Trace, guide_trace: poutine.Trace, plate: str, nesting: int) -> torch.Tensor:
    """log p(x_i, z_i) − log q(z_i | x_i) per row of ``plate``, shape (draws or 1, rows).

    ``nesting``: batch dims of the traces' log-densities, the leftmost for the draws (absent in a plain trace).
    """
    total = None
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
            if frame is None:
                raise ValueError(
                    f"site {name!r} is outside the plate {plate!r}: per-row k-hat needs every "
                    "latent and observed site to be local to a row; use vi_khat for this model"
                )
            if trace is model_trace and not site["is_observed"] and name not in guide_trace.nodes:
                raise ValueError(
                    f"latent site {name!r} is in the model and not the guide (an enumerated site?): "
                    "per-row k-hat needs the guide to draw every latent site; use vi_khat, which "
                    "sums enumerated sites out"
                )
            lp = site["log_prob"]
            while lp.dim() < nesting:
                lp = lp.unsqueeze(0)
            keep = (0, nesting + frame.dim)
            other = [d for d in range(lp.dim()) if d not in keep]
            if other:  # torch sums every dim when given an empty list
                lp = lp.sum(dim=other)
            total = sign * lp if total is None else total + sign * lp
    if total is None:
        raise ValueError("the model has no sample sites")
    return total


def _first_draw_agrees(
    model: ModelFn,
    guide: ModelFn,
    args: tuple,
    kwargs: dict,
    draws: dict[str, torch.Tensor],
    ratios: torch.Tensor,
    plate: str,
    nesting: int,
) -> bool:
    """Do the first vectorised draw's per-row ratios (``ratios``, shape (rows,)) match a plain pass on it?"""
    natural = poutine.trace(guide).get_trace(*args, **kwargs)
    first = {
        name: value[0].reshape(natural.nodes[name]["value"].shape)
        for name, value in draws.items()
        if name in natural.nodes
    }
    g = poutine.trace(poutine.condition(guide, data=first)).get_trace(*args, **kwargs)
    m = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    m.compute_log_prob()
    g.compute_log_prob()
    plain = _row_log_ratios(m, g, plate, nesting)[0]
    return plain.shape == ratios.shape and bool(torch.allclose(plain.double(), ratios.double(), rtol=1e-4, atol=1e-3))


def vi_khat_rows(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    plate: str,
    num_samples: int = 500,
    param_state: dict | None = None,
    max_plate_nesting: int = 1,
    seed: int | None = 0,
    device: DeviceLike | None = None,
    warn: bool = True,
    **kwargs: Any,
) -> RowDiagnostic:
    """Per-row PSIS k-hat of an amortised guide (see :class:`RowDiagnostic`).

    Parameters
    ----------
    model, guide : callable
        A pair whose every latent and observed site lies inside the plate named
        ``plate`` (network weights are parameters, not latent sites).
    *args, **kwargs
        Their arguments: the rows to check.
    plate : str
        Name of the data plate.
    num_samples : int, default 500
        Guide draws per row (at least 100).
    param_state : dict, optional
    max_plate_nesting : int, default 1
    seed : int or None, default 0
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        As for :func:`vi_khat`; None: the device of the model's tensor arguments.
    warn : bool, default True
        Warn when the verdict is "unreliable".

    Returns
    -------
    RowDiagnostic

    Raises
    ------
    ValueError
        A sample site outside the plate (a global latent: the ratios do not
        factorise over rows), a latent site the guide does not draw, a
        point-mass guide site, a plate that evaluates fewer rows than its
        size, or too few draws.

    Notes
    -----
    A pair whose shapes do not broadcast over a plate of draws (``torch.mm``,
    a reshape to the rows) is evaluated one draw at a time, and so is one
    whose first vectorised draw gives other ratios than a plain pass on it
    (a reduction over a plate, such as ``z.mean(0)``, would span the draws).
    """
    num_samples = check_count(num_samples, "num_samples", minimum=2)
    from pyro.infer.enum import get_importance_trace

    from bayesgen.infer import param_scope

    if int(num_samples) < 100:
        raise ValueError(f"num_samples must be at least 100 for a k-hat estimate, got {num_samples}")
    nesting = int(max_plate_nesting) + 1

    def vectorize(fn: ModelFn) -> ModelFn:
        def _fn(*a: Any, **k: Any) -> Any:
            with pyro.plate("_particles", int(num_samples), dim=-nesting):
                return fn(*a, **k)

        return _fn

    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    dev = target_device(device, args, kwargs)
    with scope, seeded(seed, dev), tensors_on(dev), torch.no_grad():
        try:
            traces = get_importance_trace("flat", nesting, vectorize(model), vectorize(guide), args, kwargs)
        except (RuntimeError, ValueError, IndexError, NotImplementedError) as err:
            # A model or guide whose shapes do not broadcast over the draws (torch.mm, a reshape to the rows).
            logger.info(
                "vectorised per-row importance ratios failed (%s: %s); drawing %d samples one at a time",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                int(num_samples),
            )
            traces = None
        if traces is not None:
            draws = _guide_draws(traces[1], nesting)
            _check_judgeable(*traces, draws)
            total = _row_log_ratios(*traces, plate, nesting)
            if not _first_draw_agrees(model, guide, args, kwargs, draws, total[0], plate, nesting):
                logger.warning(
                    "vectorised per-row importance ratios disagree with a plain pass on the same draw "
                    "(the model or guide reduces over a plate, which in a vectorised pass also spans the "
                    "draws); drawing %d samples one at a time",
                    int(num_samples),
                )
                traces = None
        if traces is None:
            first, ratios, draws = None, [], []
            for _ in range(int(num_samples)):
                g = poutine.trace(guide).get_trace(*args, **kwargs)
                m = poutine.trace(poutine.replay(model, trace=g)).get_trace(*args, **kwargs)
                m.compute_log_prob()
                g.compute_log_prob()
                if first is None:
                    first = (m, g)
                    _check_judgeable(m, g, {})  # the plates now; point masses once the draws are in
                ratios.append(_row_log_ratios(m, g, plate, nesting))
                draws.append(_guide_draws(g, nesting))
            _check_judgeable(*first, {k: torch.cat([d[k] for d in draws]) for k in draws[0]})
            total = torch.cat(ratios)
    log_w = to_numpy(total.expand(int(num_samples), -1)).astype(float).T  # (rows, draws)
    if not np.isfinite(log_w).all():
        raise ValueError("some importance ratios are not finite; the guide puts mass where the model has none")
    _, khat = _psis(log_w, torch.finfo(total.dtype).eps)
    result = RowDiagnostic(khat=khat, num_samples=int(num_samples), plate=plate)
    if warn and result.verdict == "unreliable":
        warnings.warn(result.message(), UserWarning, stacklevel=2)
    return result


def element_labels(estimator: Any, name: str, shape: tuple[int, ...]) -> list[str]:
    """Labels of a site's scalars as ArviZ's summary writes them: ``rate[white]``, ``loc[3, p12]``.

    Uses the estimator's dims and coords where they fit the shape, else indices.
    """
    dims, coords = estimator._arviz_dims() if estimator is not None else ({}, {})
    site_dims = list(dims.get(name, []))[-len(shape) :] if shape else []
    axes = []
    for size, dim in zip(shape, [None] * (len(shape) - len(site_dims)) + site_dims, strict=True):
        values = coords.get(dim) if dim is not None else None
        axes.append(
            [str(v) for v in values] if values is not None and len(values) == size else [str(i) for i in range(size)]
        )
    if not shape:
        return [name]
    return [f"{name}[{', '.join(axes[k][i] for k, i in enumerate(index))}]" for index in np.ndindex(*shape)]


def psis_summary(diag: VIDiagnostic, *, max_rows: int = 500, estimator: Any = None) -> Any:
    """PSIS-corrected posterior means next to the guide's, one row per scalar parameter.

    Parameters
    ----------
    diag : VIDiagnostic
        With k-hat ≤ 0.7 (else ValueError: the correction would not be reliable).
    max_rows : int, default 500
        At most this many scalars (the first ones of each site, in order).
    estimator : BayesianEstimator, optional
        Names the scalars by its coords (``rate[white]``, as in the ArviZ
        summary); without it, by index.

    Returns
    -------
    pandas.DataFrame
        Index ``parameter``; columns ``guide_mean``, ``guide_sd``, ``psis_mean``,
        ``psis_sd`` and ``shift_sd`` = (PSIS mean − guide mean) / guide sd.
    """
    import pandas as pd

    if diag.khat > KHAT_USABLE:
        raise ValueError(f"k-hat = {diag.khat:.2f} > {KHAT_USABLE}: PSIS-corrected expectations are unreliable")
    w = np.exp(diag.log_weights - np.logaddexp.reduce(diag.log_weights))
    rows = []
    for name, draws in diag.draws.items():
        flat = np.asarray(draws, dtype=float).reshape(diag.num_samples, -1)
        shape = np.shape(draws)[1:]
        labels = (
            element_labels(estimator, name, shape)
            if estimator is not None
            else [name if flat.shape[1] == 1 else f"{name}[{j}]" for j in range(flat.shape[1])]
        )
        for j in range(flat.shape[1]):
            if len(rows) >= max_rows:
                break
            v = flat[:, j]
            m, sd = v.mean(), v.std(ddof=1)
            pm = float(w @ v)
            psd = float(np.sqrt(max(w @ (v - pm) ** 2, 0.0)))
            rows.append(
                {
                    "parameter": labels[j],
                    "guide_mean": m,
                    "guide_sd": sd,
                    "psis_mean": pm,
                    "psis_sd": psd,
                    "shift_sd": (pm - m) / sd if sd > 0 else 0.0,
                }
            )
    return pd.DataFrame(rows).set_index("parameter") if rows else pd.DataFrame()


# --------------------------------------------------------------- convergence
def convergence_report(
    losses: Any,
    *,
    converged: bool | None = None,
    max_steps: int | None = None,
    window: int = 100,
    check: ConvergenceCheck | None = None,
) -> dict[str, Any]:
    """Verdict on the optimisation from its loss trace, by the runner's own rule.

    The verdict is :meth:`bayesgen.infer.ConvergenceCheck.assess`, the rule
    that sets :func:`~bayesgen.infer.run_svi`'s ``converged`` flag: each of the
    last ``patience`` windows is compared with the last one, relative to the
    loss and to the Monte Carlo noise of the ELBO. Verdicts: ``"converged"``,
    ``"still improving"`` (the loss still falls by more than its noise: fit
    longer), ``"getting worse"`` (it rises: lower the learning rate),
    ``"not finite"`` (NaN or infinite losses at the end) and ``"too short"``.

    Parameters
    ----------
    losses : array_like
    converged : bool, optional
        The runner's flag (``SVIResult.converged``, an estimator's ``converged_``), computed by the same rule
        with the fit's own settings; it decides between ``"converged"`` and not when given. A fit the rule did
        not pass while the report's settings would have is ``"still improving"`` or ``"getting worse"`` by the
        sign of the change, never ``"converged"``.
    max_steps : int, optional
        The step limit; says whether the fit stopped by it.
    window : int, default 100
        Window of the default rule; shortened to fit ``patience + 1`` windows into a shorter trace.
    check : bayesgen.infer.ConvergenceCheck, optional
        The rule's settings (the fit's own, to judge exactly as its runner did); ``window`` is then unused.

    Returns
    -------
    dict
        ``verdict``, ``steps``, ``stopped_by_step_limit``, ``final_loss`` (mean of the last window),
        ``last_change`` (mean of the last window minus that of the window ``patience`` windows before),
        ``last_change_se``, ``converged_at`` and ``message``.
    """
    from bayesgen.infer import ConvergenceCheck

    y = np.asarray(losses, dtype=float).ravel()
    n = len(y)
    if check is None:
        patience = ConvergenceCheck.patience
        check = ConvergenceCheck(window=max(2, min(int(window), n // (patience + 1))), early_stop=False)
    result = check.assess(y)
    out: dict[str, Any] = {
        "steps": n,
        "stopped_by_step_limit": None if max_steps is None else n >= int(max_steps),
        "last_change": result.change,
        "last_change_se": result.change_se,
        "converged_at": result.converged_at,
    }
    tail = y[-check.window :]
    out["final_loss"] = float(tail[np.isfinite(tail)].mean()) if np.isfinite(tail).any() else None
    verdict, message = result.verdict, result.message
    if converged is not None and verdict in ("converged", "still improving", "getting worse"):
        if converged and verdict != "converged":
            verdict = "converged"
            message = f"optimisation converged: the runner's convergence check passed (at its own settings; {message})"
        elif not converged and verdict == "converged":
            verdict = "still improving" if (result.change or 0.0) <= 0 else "getting worse"
            message = (
                f"optimisation {verdict}: the runner's convergence check was not met with the fit's own "
                f"window and patience, although {message.split(': ', 1)[1]}"
            )
    out["verdict"] = verdict
    stop = " (stopped by the step limit)" if out["stopped_by_step_limit"] and verdict != "converged" else ""
    out["message"] = message.replace(f"optimisation {verdict}", f"optimisation {verdict}{stop}", 1)
    return out


# ------------------------------------------------------------------ verdicts
#: The checks of a ``diagnostics.json`` report, in the order a report shows them.
CHECKS: tuple[str, ...] = ("convergence", "psis", "psis_rows", "psis_means", "reference", "predictive", "nuts", "sbc")

_STATUS_RANK = {"info": 0, "ok": 1, "caution": 2, "fail": 3}


@dataclass(frozen=True)
class CheckVerdict:
    """What one diagnostic says, in the words of a report.

    Attributes
    ----------
    status : {"ok", "caution", "fail", "info"}
        ``"info"``: a figure that is no verdict by itself (an amortised
        model's joint k-hat, the PSIS-corrected means), or a check that did not
        run or does not apply to the model.
    label : str
        A few words for a table cell ("converged", "k-hat 0.12 good").
    message : str
        The diagnostic's one-line message.
    advice : str
        For ``"caution"`` and ``"fail"``: one plain sentence saying why the
        check flags this run and what to do about it; empty otherwise.
    """

    status: str
    label: str
    message: str
    advice: str = ""

    def warning(self) -> str:
        """The message followed by the advice: one line for ``diagnostics.json`` warnings and the CLI."""
        return f"{self.message.rstrip('.')}. {self.advice}" if self.advice else self.message


def _convergence_verdict(part: dict[str, Any]) -> CheckVerdict:
    verdict, message = part.get("verdict"), part.get("message", "")
    if verdict in ("converged", "flat", "exact"):
        label = {"converged": "converged", "flat": "loss flat", "exact": "exact posterior (no optimisation)"}[verdict]
        return CheckVerdict("ok", label, message)
    advice = {
        "still improving": "The loss was still falling when the fit stopped, so the fitted posterior may not have "
        "settled yet: raise num_steps (or num_epochs) in the spec's [inference] table and fit "
        "again.",
        "getting worse": "The loss rose at the end of the fit, which usually means the step size is too large for "
        "this model: lower learning_rate in the spec's [inference] table and fit again.",
        "too short": "The fit ran too few steps to tell whether the optimisation settled: fit for at least a few "
        "hundred steps.",
        "not finite": "A NaN or infinite loss means the fitted parameters are meaningless: lower learning_rate and "
        "check the data for missing, infinite or extreme values.",
    }
    if verdict not in advice:
        return CheckVerdict("info", "no verdict", message or str(part.get("error", "")))
    label = "NaN or infinite loss" if verdict == "not finite" else str(verdict)
    return CheckVerdict("fail" if verdict == "not finite" else "caution", label, message, advice[verdict])


def _khat_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if part.get("scope") == "joint":
        return CheckVerdict("info", f"joint k-hat {part.get('khat', float('nan')):.2f} (no verdict)", message)
    verdict, khat = part.get("verdict"), part.get("khat", float("nan"))
    ess, draws = part.get("ess"), part.get("num_samples")
    if verdict in ("good", "usable") and ess is not None and draws and ess < 0.5 * draws:
        # k-hat cannot see a guide that is too wide (its ratios are bounded); a low ESS can.
        return CheckVerdict(
            "caution",
            f"k-hat {khat:.2f} {verdict}, but ESS {ess / draws:.0%} of draws",
            message,
            "Only a small share of the guide's draws carry weight, which k-hat cannot flag, so the "
            "guide may be too wide or off-centre: fit for more steps and compare with the "
            "PSIS-corrected means in psis_summary.csv.",
        )
    if verdict == "good":
        return CheckVerdict("ok", f"k-hat {khat:.2f} good", message)
    if verdict == "usable":
        return CheckVerdict(
            "caution",
            f"k-hat {khat:.2f} usable",
            message,
            "A k-hat between 0.5 and 0.7 means the guide is close to the posterior but not exact, so "
            "its raw means and intervals are slightly off: use the PSIS-corrected means in "
            "psis_summary.csv, or fit for more steps.",
        )
    if verdict == "unreliable":
        return CheckVerdict(
            "fail",
            f"k-hat {khat:.2f} unreliable",
            message,
            "A k-hat above 0.7 means the guide's draws miss part of the posterior, so its intervals "
            "are too narrow to trust: fit for more steps, or cross-check the posterior with NUTS "
            "(bayesgen diagnose RUN_DIR --nuts).",
        )
    return CheckVerdict("info", "k-hat not computed", message or str(part.get("error", "")))


def _rows_verdict(part: dict[str, Any]) -> CheckVerdict:
    message, verdict = part.get("message", ""), part.get("verdict")
    if verdict == "good":
        return CheckVerdict("ok", f"per-row k-hat good ({part.get('good', 0.0):.0%} of rows below 0.5)", message)
    if verdict == "usable":
        return CheckVerdict(
            "caution",
            f"per-row k-hat usable (90th percentile {part.get('khat_p90', 0.0):.2f})",
            message,
            "For some rows the encoder's posterior is close to the exact one but not equal to it, so "
            "their uncertainty is slightly off: train for more epochs if per-row uncertainty matters.",
        )
    if verdict == "unreliable":
        return CheckVerdict(
            "fail",
            f"per-row k-hat: {part.get('unreliable', 0.0):.0%} of rows above 0.7",
            message,
            part.get("advice")
            or "For more than a tenth of the rows the encoder's approximate posterior misses part of the "
            "exact one, so per-row uncertainty is understated: train for more epochs or give the "
            "encoder more capacity, and compare the IWAE bound with the ELBO.",
        )
    return CheckVerdict("info", "per-row k-hat not computed", message or str(part.get("error", "")))


def _reference_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part or not part.get("checked"):
        return CheckVerdict("info", "no exact posterior to compare", message or str(part.get("error", "")))
    if part.get("agree"):
        return CheckVerdict("ok", "agrees with the exact posterior", message)
    return CheckVerdict(
        "fail",
        "differs from the exact posterior",
        message,
        "The fitted posterior is away from the exact closed-form posterior of the same model, so the "
        "fit has not reached the answer: fit for more steps or lower learning_rate (the A/B test also "
        "offers method='exact').",
    )


def _predictive_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict(
            "caution",
            "not run",
            f"predictive check not run: {part['error']}",
            "The predictive check could not run, so nothing here says whether the model reproduces "
            "the data: run bayesgen diagnose RUN_DIR to see the full error.",
        )
    n = part.get("statistics", 0)
    if part.get("passed"):
        return CheckVerdict("ok", f"passed ({n} statistics)", message)
    return CheckVerdict(
        "fail",
        f"failed: {len(part.get('failed', []))} of {n} statistics",
        message,
        "The fitted model does not reproduce the statistics named, so conclusions that depend on "
        "them are suspect: look at them in ppc_statistics.png and consider a model that can express "
        "them (more components, another likelihood).",
    )


def _nuts_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict("info", "NUTS not run", f"NUTS cross-check not run: {part['error']}")
    if not part.get("reliable"):
        cause = part.get("cause") or ("divergences" if part.get("divergences") else "mixing")
        label = {"divergences": "NUTS diverged", "label switching": "NUTS chains switched labels"}.get(
            cause, "NUTS did not mix"
        )
        advice = {
            "divergences": "NUTS hit divergent transitions, so its draws are biased and the comparison is no "
            "evidence either way: reparameterise the model (non-centred scales) or raise "
            "target_accept_prob toward 0.95; more draws do not help.",
            "label switching": "The NUTS chains settled on different labellings of the same components, so R-hat "
            "is high although each chain may be fine: compare with nuts_compare(..., "
            "relabel=...) in one labelling, or break the symmetry in the model.",
        }.get(
            cause,
            "NUTS itself did not mix (R-hat above 1.05 or a small ESS), so the comparison is no evidence "
            "either way yet: run it with more warm-up steps and draws (--nuts-warmup, --nuts-samples).",
        )
        return CheckVerdict("caution", label, message, advice)
    if part.get("agree"):
        return CheckVerdict("ok", "NUTS agrees", message)
    return CheckVerdict(
        "fail",
        "NUTS disagrees",
        message,
        "NUTS samples the exact posterior and disagrees with the SVI posterior, so the guide is off: "
        "fit for more steps, and use the NUTS draws in nuts.nc meanwhile.",
    )


def _sbc_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict("info", "SBC not run", f"simulation-based calibration not run: {part['error']}")
    if part.get("calibrated"):
        return CheckVerdict("ok", "SBC calibrated", message)
    return CheckVerdict(
        "fail",
        "SBC miscalibrated",
        message,
        "On data simulated from the prior the fitted posteriors are systematically off, so credible "
        "intervals do not have their stated coverage: fit each refit for more steps (--sbc-steps).",
    )


def _means_verdict(part: dict[str, Any]) -> CheckVerdict:
    shift = part.get("largest_shift_sd")
    label = "PSIS-corrected means" if shift is None else f"PSIS-corrected means move ≤ {shift:.2f} sd"
    return CheckVerdict("info", label, part.get("message", ""))


_VERDICTS: dict[str, Callable[[dict[str, Any]], CheckVerdict]] = {
    "convergence": _convergence_verdict,
    "psis": _khat_verdict,
    "psis_rows": _rows_verdict,
    "psis_means": _means_verdict,
    "reference": _reference_verdict,
    "predictive": _predictive_verdict,
    "nuts": _nuts_verdict,
    "sbc": _sbc_verdict,
}


def check_verdicts(report: dict[str, Any]) -> dict[str, CheckVerdict]:
    """The verdict of every check in a ``diagnostics.json`` report (see :data:`CHECKS`).

    This is the one rule that turns the diagnostics' numbers into ok /
    caution / fail: the report's colours, its overall table and the
    ``warnings`` of :func:`diagnose` all come from it.

    Parameters
    ----------
    report : dict
        What :func:`diagnose` or :func:`write_diagnostics` returns (or a
        ``diagnostics.json`` read back).

    Returns
    -------
    dict
        Check name → :class:`CheckVerdict`, for the checks the report holds,
        in the order of :data:`CHECKS`.
    """
    return {key: _VERDICTS[key](report[key]) for key in CHECKS if isinstance(report.get(key), dict)}


def overall_verdicts(report: dict[str, Any]) -> dict[str, CheckVerdict]:
    """Three verdicts for a report's summary table: optimisation, posterior quality, predictive check.

    ``posterior`` is the worst of the k-hat, exact-reference, NUTS and SBC
    checks that gave a verdict (their labels joined); a part with nothing to
    judge is a caution ("not checked").

    Parameters
    ----------
    report : dict
        A ``diagnostics.json`` report.

    Returns
    -------
    dict
        ``"optimisation"``, ``"posterior"`` and ``"predictive"`` → :class:`CheckVerdict`.
    """
    checks = check_verdicts(report)

    def combine(keys: tuple[str, ...], missing: str) -> CheckVerdict:
        parts = [checks[k] for k in keys if k in checks and checks[k].status != "info"]
        if not parts:
            return CheckVerdict(
                "caution",
                missing,
                "; ".join(checks[k].message for k in keys if k in checks),
                "Nothing checked this part of the fit, so it is unknown whether it can be trusted: "
                "run bayesgen diagnose RUN_DIR (with --nuts or --sbc where the model allows).",
            )
        worst = max(parts, key=lambda v: _STATUS_RANK[v.status])
        return CheckVerdict(
            worst.status, "; ".join(v.label for v in parts), "; ".join(v.message for v in parts), worst.advice
        )

    return {
        "optimisation": combine(("convergence",), "not recorded"),
        "posterior": combine(("psis", "psis_rows", "reference", "nuts", "sbc"), "not checked"),
        "predictive": combine(("predictive",), "not run"),
    }


def _warnings(report: dict[str, Any]) -> list[str]:
    """The messages an analyst must read: every check that is a caution or a failure, with what to do."""
    return [v.warning() for v in check_verdicts(report).values() if v.status in ("caution", "fail")]


def diagnose(estimator: Any, *, num_samples: int = 1000, seed: int | None = 0) -> dict[str, Any]:
    """Every quick diagnostic of a fitted estimator, as a JSON-ready dict (what ``diagnostics.json`` holds).

    Returns
    -------
    dict
        ``convergence`` (:func:`convergence_report`); ``psis`` (joint k-hat,
        verdict, ESS, message, or the error that prevented it); for amortised
        models (VAE, ProdLDA) ``psis_rows`` (:func:`vi_khat_rows`: per-row
        k-hat, which then sets the verdict, since the joint k-hat over many rows
        grows with their number: ``psis`` then has ``scope: "joint"`` and only
        ``psis_rows`` raises a warning) and ``amortised`` (the estimator's
        ``reliability_notes``: plain sentences on what the fit gives as point
        estimates, the share of rows whose approximate posterior is unreliable,
        and what to do); ``psis_means`` (the largest shift of a
        PSIS-corrected mean, where k-hat ≤ 0.7; the table is :func:`psis_summary`
        and ``psis_summary.csv`` in a run folder); ``reference`` (every global
        site with a closed-form posterior against it, :func:`reference_check`,
        and the sites without one); and ``warnings`` (the messages an analyst
        must read: every check that :func:`check_verdicts` calls a caution or
        a failure, each followed by one sentence on why and what to do). The
        slow cross-checks, NUTS and SBC, are options of :func:`write_diagnostics`.
    """
    return _diagnose(estimator, num_samples=num_samples, seed=seed)[0]


def _diagnose(estimator: Any, *, num_samples: int, seed: int | None) -> tuple[dict[str, Any], Any]:
    """:func:`diagnose`, plus the PSIS summary table (or None)."""
    estimator._check_fitted()
    table = None
    max_steps = getattr(estimator, "num_steps", None)
    from bayesgen.registry import entry_for

    if getattr(entry_for(estimator), "amortised", False):
        max_steps = None  # epoch-based fits stop by epochs or early stopping
    conv = convergence_report(estimator.losses_, converged=estimator.converged_, max_steps=max_steps)
    report: dict[str, Any] = {"model": type(estimator).__name__, "convergence": conv, "warnings": []}
    if len(estimator.losses_) == 0:
        report["convergence"]["message"] = "exact posterior: no optimisation"
        report["convergence"]["verdict"] = "exact"
    amortised = getattr(estimator, "_row_plate", None) is not None
    try:
        diag = estimator.vi_diagnostic(num_samples=num_samples, seed=seed, warn=False)
        report["psis"] = {
            "khat": diag.khat,
            "verdict": diag.verdict,
            "ess": diag.ess,
            "num_samples": diag.num_samples,
            "message": diag.message(),
        }
        if amortised:
            plate = estimator._row_plate
            report["psis"]["scope"] = "joint"
            report["psis"]["message"] = (
                f"The joint PSIS k-hat over all checked {plate}s together ({diag.khat:.2f}) is not a verdict: it grows "
                f"with the number of {plate}s even when each {plate}'s guide is good; the per-{plate} k-hat is the "
                "check."
            )
        if diag.khat <= KHAT_USABLE:
            table = psis_summary(diag, estimator=estimator)
            if len(table):
                worst = table["shift_sd"].abs()
                report["psis_means"] = {
                    "largest_shift_sd": float(worst.max()),
                    "parameter": str(worst.idxmax()),
                    "message": (
                        f"PSIS-corrected means move at most {worst.max():.2f} guide sds "
                        f"({worst.idxmax()}); table in psis_summary.csv"
                    ),
                }
    except (ValueError, RuntimeError) as err:
        report["psis"] = {"error": str(err).splitlines()[0]}
    if amortised:
        try:
            rows = estimator.vi_diagnostic_rows(num_samples=max(100, min(int(num_samples), 500)), seed=seed, warn=False)
            report["psis_rows"] = {
                "verdict": rows.verdict,
                **rows.shares,
                "num_rows": len(rows.khat),
                "khat_median": rows._quantile(0.5),
                "khat_p90": rows._quantile(0.9),
                "message": rows.message(),
            }
            notes = estimator.reliability_notes(rows)
            report["amortised"] = notes
            report["psis_rows"]["advice"] = notes["advice"]
        except (ValueError, RuntimeError) as err:
            report["psis_rows"] = {"error": str(err).splitlines()[0]}
    try:
        ref = reference_check(estimator, num_samples=max(100, min(int(num_samples), 2000)), seed=seed)
        report["reference"] = {
            "agree": ref.agree,
            "checked": sorted(set(ref.table["site"])) if len(ref.table) else [],
            "unchecked": ref.unchecked,
            "message": ref.message(),
        }
        if len(ref.table):
            report["reference"]["largest_abs_smd"] = _finite_or_none(ref.table["smd"].abs().max())
            report["reference"]["sd_ratio_range"] = [
                _finite_or_none(ref.table["sd_ratio"].min()),
                _finite_or_none(ref.table["sd_ratio"].max()),
            ]
    except (ValueError, RuntimeError) as err:
        report["reference"] = {"error": str(err).splitlines()[0]}
    report["warnings"] = _warnings(report)
    return report, table


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


# ------------------------------------------------------ predictive statistics
@dataclass
class PredictiveCheck:
    """Posterior predictive check of named statistics of the data.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per statistic (``count[white]``, ``mean[x, p12]``): ``observed``,
        the replicated data sets' ``replicated_mean`` and ``replicated_sd``,
        ``z`` = (observed − replicated mean) / replicated sd and the two-sided
        posterior predictive ``p_value`` (normal approximation of the
        replicated statistic), and ``ok``.
    alpha : float
        Family-wise level: a statistic fails when its p-value is below
        ``alpha`` / (number of statistics) (Bonferroni).
    replicated : dict
        Statistic → its values in every replicated data set (for plots).
    """

    table: Any
    alpha: float = 0.01
    replicated: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        """No statistic outside what the fitted model replicates."""
        return bool(self.table["ok"].all()) if len(self.table) else True

    def message(self) -> str:
        """One line: the statistics checked, the smallest p-value, and those that fail."""
        if not len(self.table):
            return "posterior predictive check: no statistic to check"
        bad = self.table[~self.table["ok"]]
        worst = self.table["p_value"].idxmin()
        text = (
            f"posterior predictive check of {len(self.table)} statistics: smallest p-value "
            f"{self.table.loc[worst, 'p_value']:.3g} ({worst})"
        )
        if len(bad):
            return (
                text + f"; {len(bad)} outside what the model replicates (p < {self.alpha:g}/"
                f"{len(self.table)}): "
                + ", ".join(map(str, bad.index[:5]))
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
            ax.hist(self.replicated[name], bins=30, color="#9db4cc", label="replicated data sets")
            ax.axvline(row["observed"], color="#c0392b", lw=2, label="observed")
            ax.set_title(
                f"{name}: p = {row['p_value']:.3g}", fontsize="small", color="black" if row["ok"] else "#c0392b"
            )
            ax.set_xlabel(name, fontsize="small")
            ax.set_ylabel("replicates")
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        if names:
            axes[0].legend(fontsize="x-small")
        return fig


def _default_statistics(data: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean and sd of every observed site's values."""
    out = {}
    for site, values in data.items():
        out[f"mean[{site}]"] = float(np.mean(values))
        out[f"sd[{site}]"] = float(np.std(values))
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
    posterior predictive; its p-value is two-sided.

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
    rows, draws = [], {}
    for name, value in obs.items():
        values = np.array([r[name] for r in reps], dtype=float)
        mean, sd = values.mean(), values.std(ddof=1)
        z = (value - mean) / sd if sd > 0 else (0.0 if value == mean else np.inf)
        p = float(2 * sps.norm.sf(abs(z)))
        rows.append(
            {"statistic": name, "observed": value, "replicated_mean": mean, "replicated_sd": sd, "z": z, "p_value": p}
        )
        draws[name] = values
    table = pd.DataFrame(rows).set_index("statistic")
    table["ok"] = table["p_value"] >= alpha / max(len(table), 1)
    return PredictiveCheck(table=table, alpha=alpha, replicated=draws)


def write_diagnostics(
    estimator: Any,
    folder: Any,
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    nuts: bool = False,
    nuts_samples: int = 1000,
    nuts_warmup: int = 500,
    sbc_simulations: int = 0,
    sbc_steps: int | None = None,
) -> dict:
    """Write every diagnostic of a fitted estimator into a run folder.

    Always: ``diagnostics.json`` (see :func:`diagnose`), ``psis_summary.csv``
    (where k-hat ≤ 0.7), ``plots/diagnostics_loss.png`` (loss, smoothed curve
    and verdict) and the prior/posterior predictive check plots. On request:
    the NUTS cross-check (``nuts=True``: ``nuts_comparison.csv``, ``nuts.nc``
    with chain/draw dims) and simulation-based calibration
    (``sbc_simulations > 0``: ``sbc_ranks.csv``, ``plots/sbc_ecdf.png``).
    A check that does not apply to the model (NUTS on a VAE) is recorded with
    its reason instead of failing the rest.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.
    folder : str or os.PathLike
    num_samples : int, default 1000
        Guide draws for PSIS.
    seed : int or None, default 0
    nuts : bool, default False
    nuts_samples, nuts_warmup : int
        NUTS draws and warm-up steps per chain (two chains).
    sbc_simulations : int, default 0
        Number of SBC refits (0: skip).
    sbc_steps : int, optional
        SVI steps per SBC refit (default: the estimator's, at most 1000).

    Returns
    -------
    dict
        What ``diagnostics.json`` holds.

    Raises
    ------
    ValueError
        A count out of its range, before anything is computed or written.
    """
    from pathlib import Path

    from bayesgen.io import atomic_path, write_json
    from bayesgen.plots import plot_loss

    # Checked here, before any work: the checks themselves record their own errors instead of failing.
    check_count(num_samples, "num_samples", minimum=2)
    check_count(nuts_samples, "nuts_samples", minimum=2)
    check_count(nuts_warmup, "nuts_warmup", minimum=0)
    check_count(sbc_simulations, "sbc_simulations", minimum=0)
    if sbc_steps is not None:
        check_count(sbc_steps, "sbc_steps")

    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    # Results of an earlier call must not survive next to a new diagnostics.json that does not list them.
    for stale in (
        "psis_summary.csv",
        "nuts_comparison.csv",
        "nuts.nc",
        "sbc_ranks.csv",
        "plots/sbc_ecdf.png",
        "ppc_statistics.csv",
        "plots/ppc_statistics.png",
    ):
        (folder / stale).unlink(missing_ok=True)
    report, table = _diagnose(estimator, num_samples=num_samples, seed=seed)
    if table is not None and len(table):
        with atomic_path(folder / "psis_summary.csv") as tmp:
            table.to_csv(tmp)
    try:  # one set of predictive draws serves the plots and the statistics
        tree = estimator.to_arviz(200, seed=seed, prior=True)
        report["predictive_checks"] = plot_predictive_checks(estimator, folder / "plots", seed=seed, tree=tree)
        ppc = predictive_check(estimator, seed=seed, tree=tree)
        with atomic_path(folder / "ppc_statistics.csv") as tmp:
            ppc.table.to_csv(tmp)
        with atomic_path(folder / "plots" / "ppc_statistics.png") as tmp:
            ppc.plot().savefig(tmp, dpi=110)
        report["predictive"] = {
            "passed": ppc.passed,
            "statistics": len(ppc.table),
            "smallest_p_value": _finite_or_none(ppc.table["p_value"].min()),
            "failed": [str(v) for v in ppc.table.index[~ppc.table["ok"]]],
            "message": ppc.message(),
        }
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        report.setdefault("predictive_checks", {"error": message})
        report["predictive"] = {"error": message}
    if nuts:
        try:
            cmp = estimator.nuts_check(
                num_samples=int(nuts_samples), num_warmup=int(nuts_warmup), seed=0 if seed is None else int(seed)
            )
            with atomic_path(folder / "nuts_comparison.csv") as tmp:
                cmp.table.to_csv(tmp)
            with atomic_path(folder / "nuts.nc") as tmp:
                cmp.tree.to_netcdf(tmp, engine="netcdf4")
            report["nuts"] = {
                "agree": cmp.agree,
                "reliable": cmp.reliable,
                "divergences": cmp.divergences,
                "largest_abs_smd": _finite_or_none(cmp.table["smd"].abs().max(skipna=False)),
                "max_r_hat": _finite_or_none(cmp.max_r_hat),
                "min_ess_bulk": cmp.min_ess_bulk,
                "cause": cmp.cause,
                "label_switching": cmp.label_switching,
                "message": cmp.message(),
            }
        except (ValueError, RuntimeError) as err:
            report["nuts"] = {"error": str(err).splitlines()[0]}
    if sbc_simulations:
        try:
            res = estimator.sbc_check(int(sbc_simulations), num_steps=sbc_steps, seed=0 if seed is None else int(seed))
            with atomic_path(folder / "sbc_ranks.csv") as tmp:
                res.ranks.to_csv(tmp, index=False)
            with atomic_path(folder / "plots" / "sbc_ecdf.png") as tmp:
                res.plot().savefig(tmp, dpi=110)
            report["sbc"] = {
                "calibrated": res.calibrated,
                "simulations": len(res.ranks),
                "p_values": res.p_values.to_dict(),
                "message": res.message(),
            }
        except (ValueError, RuntimeError) as err:
            report["sbc"] = {"error": str(err).splitlines()[0]}
    report["warnings"] = _warnings(report)
    write_json(folder / "diagnostics.json", report, default=float)
    if len(estimator.losses_):
        fig = plot_loss(estimator.losses_, window=max(2, min(100, len(estimator.losses_) // 10)))
        fig.suptitle(report["convergence"]["message"][:110], fontsize="small")
        with atomic_path(folder / "plots" / "diagnostics_loss.png") as tmp:
            fig.savefig(tmp, dpi=110)
    return report


# ------------------------------------------------------- exact reference check
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
                f"SVI vs exact posterior of {self.table['site'].nunique()} global sites: largest |mean gap| "
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
        mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
        ref_mean, ref_sd = np.broadcast_to(ref_mean, mean.shape), np.broadcast_to(ref_sd, mean.shape)
        labels = element_labels(estimator, name, mean.shape)
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
    table = pd.DataFrame(rows).set_index("parameter")
    return ReferenceCheck(table, dict(unchecked), mean_tolerance, sd_tolerance)


def dirichlet_moments(concentration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of every coordinate of Dirichlet(``concentration``) (shape (..., K))."""
    a = np.asarray(concentration, dtype=float)
    a0 = a.sum(axis=-1, keepdims=True)
    return a / a0, np.sqrt(a * (a0 - a) / (a0**2 * (a0 + 1.0)))


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


def _label_switched_sites(samples: dict[str, np.ndarray]) -> list[str]:
    """Sites whose chains disagree (R-hat > 1.05) only because their components are ordered differently.

    For each axis of a site's element shape, each chain's components are put in the order of their mean
    (averaged over the other axes) and R-hat is computed again; a site is label-switched when that brings
    every R-hat to at most 1.05 and the chains needed different orders.
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


def _finite_or_none(value: float) -> float | None:
    """For JSON reports: an undefined (NaN) or infinite figure is null, never NaN/Infinity."""
    value = float(value)
    return value if math.isfinite(value) else None


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
    import sys

    import arviz as az
    import pandas as pd
    from arviz_base import from_dict
    from pyro.infer import MCMC, NUTS, Predictive

    from bayesgen.infer import param_scope

    def relabelled(draws: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        if relabel is None:
            return draws
        out = relabel({k: v.copy() for k, v in draws.items()})
        if (
            not isinstance(out, dict)
            or set(out) != set(draws)
            or any(np.shape(out[k]) != draws[k].shape for k in draws)
        ):
            raise ValueError(
                f"relabel must return the same sites with the same shapes ({what}: "
                f"{ {k: v.shape for k, v in draws.items()} })"
            )
        return {k: np.asarray(v) for k, v in out.items()}

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
                kernel = NUTS(model, jit_compile=False, target_accept_prob=float(target_accept_prob))
                mcmc = MCMC(
                    kernel,
                    num_samples=int(num_samples),
                    warmup_steps=int(num_warmup),
                    num_chains=1,
                    disable_progbar=True,
                    hook_fn=hook if bar is not None else None,
                )
                mcmc.run(*args, **kwargs)
                chains.append(relabelled({k: to_numpy(v) for k, v in mcmc.get_samples().items()}, f"chain {c}"))
                div = mcmc.diagnostics().get("divergences", {})
                divergences += int(sum(len(v) for v in div.values()))
    finally:
        if bar is not None:
            bar.close()
    samples = {k: np.stack([ch[k] for ch in chains]) for k in chains[0]}
    switched = _label_switched_sites(samples)
    tree = from_dict({"posterior": samples})
    nuts = az.summary(tree, kind="all", round_to="none")
    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    with scope, seeded(seed, torch.device("cpu")), torch.no_grad():
        pred = Predictive(model, guide=guide, num_samples=int(svi_samples), return_sites=list(samples))
        svi = {
            k: to_numpy(v).reshape(int(svi_samples), *samples[k].shape[2:]) for k, v in pred(*args, **kwargs).items()
        }
    svi = relabelled(svi, "guide draws")
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
    table = pd.DataFrame(rows).set_index("parameter")
    n_svi = float(svi_samples)
    mcse = (table["nuts_mcse_mean"] / table["nuts_sd"]).fillna(1.0 / np.sqrt(num_samples * num_chains))
    ess = table["nuts_ess_bulk"].fillna(float(num_samples * num_chains)).clip(lower=2.0)
    table["smd_allowed"] = tolerance + 3.0 * np.sqrt(mcse**2 + table["sd_ratio"] ** 2 / n_svi)
    table["sd_ratio_allowed"] = 2 * tolerance + 3.0 * table["sd_ratio"] * np.sqrt(1 / (2 * ess) + 1 / (2 * n_svi))
    agree = bool(
        (table["smd"].abs() <= table["smd_allowed"]).all()
        and (np.abs(table["sd_ratio"] - 1) <= table["sd_ratio_allowed"]).all()
    )
    result = NUTSComparison(
        table=table, divergences=divergences, tree=tree, agree=agree, tolerance=tolerance, label_switching=switched
    )
    if warn and not (agree and result.reliable):
        warnings.warn(result.message(), UserWarning, stacklevel=2)
    return result


# ------------------------------------------------- simulation-based calibration
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
    from pyro.infer import Predictive
    from scipy import stats

    from bayesgen.arviz import _UnconditionData
    from bayesgen.infer import param_scope, run_svi

    # The model's structure is static: find its observed sites once.
    with torch.no_grad():
        observed = {
            n
            for n, s in poutine.trace(model).get_trace(*args, **kwargs).nodes.items()
            if s["type"] == "sample" and s["is_observed"]
        }
    rows = []
    for i in range(int(num_simulations)):
        with seeded(seed + i, torch.device("cpu")), torch.no_grad():
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
            seed=seed + i,
            **(fit_kwargs or {}),
            **kwargs,
        )
        with param_scope(fit.param_state), seeded(seed + 10_000 + i, torch.device("cpu")), torch.no_grad():
            post = Predictive(
                conditioned, guide=fresh, num_samples=int(num_posterior_samples), return_sites=list(truth)
            )(*args, **kwargs)
        row = {}
        for name, value in truth.items():
            draws = to_numpy(post[name]).reshape(int(num_posterior_samples), -1)
            true = to_numpy(value).reshape(-1)
            for j in range(len(true)):
                row[f"{name}[{j}]" if len(true) > 1 else name] = int((draws[:, j] < true[j]).sum())
        rows.append(row)
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

"""PSIS k-hat: does the guide cover the posterior? The diagnostic of Yao, Vehtari, Simpson & Gelman (2018).

Draw z_s from the guide, form the importance ratios
``log w_s = log p(x, z_s) − log q(z_s)``, and fit a generalised Pareto
distribution to their upper tail: its shape k̂ says how heavy the tail is.
k̂ < 0.5: the guide is close to the posterior and importance sampling is
reliable; 0.5–0.7: usable, with PSIS-corrected expectations; > 0.7: the guide
misses posterior mass and neither it nor importance sampling can be trusted.
The smoothing is ArviZ's (``arviz_stats``), not a reimplementation.

Here: the joint k-hat of any model/guide pair (:func:`vi_khat`), the per-row
k-hats of an amortised guide (:func:`vi_khat_rows`), and PSIS-corrected
expectations and means (:func:`psis_expectation`, :func:`psis_summary`).

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
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from bayesgen._runtime import check_count, is_out_of_memory, seeded, target_device, tensors_on, to_numpy
from bayesgen._typing import DeviceLike, ModelFn
from bayesgen.diagnostics.labels import element_labels

__all__ = [
    "KHAT_GOOD",
    "KHAT_USABLE",
    "RowDiagnostic",
    "VIDiagnostic",
    "psis_expectation",
    "psis_summary",
    "vi_khat",
    "vi_khat_rows",
]

logger = logging.getLogger(__name__)

#: k-hat below this is "good": the guide is close to the posterior and importance sampling is reliable.
KHAT_GOOD = 0.5
#: k-hat up to this is "usable" (with PSIS-corrected expectations); above it, "unreliable".
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

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the rows' k-hats (0.5: the median), a row with k-hat −inf counted as −1.

        Rows whose ratios are constant (an exact guide) have k-hat −inf; quantiles need finite numbers.
        """
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
        return _verdict(self.quantile(0.9))

    def message(self) -> str:
        """One line for a report or the CLI."""
        s = self.shares
        return (
            f"per-row PSIS k-hat over {len(self.khat)} {self.plate}s ({self.num_samples} draws each): median "
            f"{self.quantile(0.5):.2f}, 90th percentile {self.quantile(0.9):.2f}; share of rows with k-hat "
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


def _row_log_ratios_vectorised(
    model: ModelFn, guide: ModelFn, args: tuple, kwargs: dict, plate: str, nesting: int, num_samples: int
) -> torch.Tensor | None:
    """Per-row log ratios of ``num_samples`` draws in one pass over a plate of draws, shape (draws or 1, rows).

    None where that pass cannot be trusted: a model or guide whose shapes do not broadcast over the draws,
    or whose first draw gives other ratios than a plain pass on it.
    """
    from pyro.infer.enum import get_importance_trace

    def vectorize(fn: ModelFn) -> ModelFn:
        def _fn(*a: Any, **k: Any) -> Any:
            with pyro.plate("_particles", num_samples, dim=-nesting):
                return fn(*a, **k)

        return _fn

    try:
        traces = get_importance_trace("flat", nesting, vectorize(model), vectorize(guide), args, kwargs)
    except (RuntimeError, ValueError, IndexError, NotImplementedError) as err:
        # A model or guide whose shapes do not broadcast over the draws (torch.mm, a reshape to the rows).
        logger.info(
            "vectorised per-row importance ratios failed (%s: %s); drawing %d samples one at a time",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            num_samples,
        )
        return None
    draws = _guide_draws(traces[1], nesting)
    _check_judgeable(*traces, draws)
    total = _row_log_ratios(*traces, plate, nesting)
    if not _first_draw_agrees(model, guide, args, kwargs, draws, total[0], plate, nesting):
        logger.warning(
            "vectorised per-row importance ratios disagree with a plain pass on the same draw "
            "(the model or guide reduces over a plate, which in a vectorised pass also spans the "
            "draws); drawing %d samples one at a time",
            num_samples,
        )
        return None
    return total


def _row_log_ratios_one_at_a_time(
    model: ModelFn, guide: ModelFn, args: tuple, kwargs: dict, plate: str, nesting: int, num_samples: int
) -> torch.Tensor:
    """Per-row log ratios of ``num_samples`` draws, one plain pass per draw, shape (draws, rows)."""
    first, ratios, draws = None, [], []
    for _ in range(num_samples):
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
    return torch.cat(ratios)


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
    from bayesgen.infer import param_scope

    if int(num_samples) < 100:
        raise ValueError(f"num_samples must be at least 100 for a k-hat estimate, got {num_samples}")
    nesting = int(max_plate_nesting) + 1
    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    dev = target_device(device, args, kwargs)
    with scope, seeded(seed, dev), tensors_on(dev), torch.no_grad():
        total = _row_log_ratios_vectorised(model, guide, args, kwargs, plate, nesting, int(num_samples))
        if total is None:
            total = _row_log_ratios_one_at_a_time(model, guide, args, kwargs, plate, nesting, int(num_samples))
    log_w = to_numpy(total.expand(int(num_samples), -1)).astype(float).T  # (rows, draws)
    if not np.isfinite(log_w).all():
        raise ValueError("some importance ratios are not finite; the guide puts mass where the model has none")
    _, khat = _psis(log_w, torch.finfo(total.dtype).eps)
    result = RowDiagnostic(khat=khat, num_samples=int(num_samples), plate=plate)
    if warn and result.verdict == "unreliable":
        warnings.warn(result.message(), UserWarning, stacklevel=2)
    return result


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

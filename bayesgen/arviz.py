"""Pyro model/guide pair → ArviZ 1.x DataTree, for bayesgen's models and for yours.

ArviZ 1.x ships no Pyro converter; :func:`to_datatree` is bayesgen's. Given a
model, a fitted guide and the model's arguments it draws from the guide and
returns an :class:`xarray.DataTree` with the groups ArviZ expects:

``posterior``
    Every latent sample site of the model (and ``pyro.deterministic`` sites),
    drawn from the guide.
``posterior_predictive``
    Every observed site, re-simulated from the model under each guide draw.
``log_likelihood``
    ``log p(y_i | θ)`` per observation for every observed site, read from the
    model trace, so ``arviz_stats.loo``/``compare`` work.

``observed_data``
    The observed values.
``prior``, ``prior_predictive``
    Optional: draws from the model with observations removed.

Discrete sites that the model enumerates (``config_enumerate``, trained with
``TraceEnum_ELBO``) and the guide does not draw, as in Pyro's Gaussian-mixture
tutorial, are summed out of ``log_likelihood`` (``log Σ_z p(z | θ) p(y_i | z, θ)``
per row), drawn from ``p(z | y, θ)`` into ``posterior`` (Pyro's
``infer_discrete``), and drawn from ``p(z | θ)`` for ``posterior_predictive``.
Such models are drawn one guide draw at a time (about 15 ms per draw for a
100-row mixture on a CPU). A per-row likelihood needs every enumerated site to
be local to the rows (inside the observation's plates) and one observed site
per group of enumerated sites; other models get a ``ValueError`` saying which.

Guide draws are independent, unlike MCMC draws. By default they are split
into equal chains (4 where ``num_samples`` allows chains of at least 4 draws,
else 2, else 1), so ArviZ's summary and diagnostics accept them as they are;
``sample_dims="sample"`` stores them along one ``sample`` dimension instead
(ArviZ's layout for NumPyro SVI). The root attributes record
``inference_method = "svi"``, and :func:`summary` reports statistics and the
exact Monte Carlo standard error of independent draws (``sd / sqrt(n)``)
rather than R-hat, which diagnoses Markov chains. A point-mass guide (every
site a ``Delta``, as ``AutoDelta``) is drawn once and stored as one draw.

Log-likelihoods are computed and stored in float64 (the observed site's
distribution is rebuilt with float64 parameters): float32 rounds the
log-density of a confidently predicted row to exactly 0, which PSIS-LOO
refuses. Observed and replicated values of discrete sites (Binomial, Poisson,
Bernoulli, Categorical) are stored as integers.

Dimensions are named after the ``pyro.plate`` each site sits in; other
dimensions get ArviZ's ``{site}_dim_{i}``. Rename them with ``dims``
(``{"rate": ["variant"]}``) and label them with ``coords``
(``{"variant": ["A", "B"]}``). ``predictions={...}`` adds a ``predictions``
group for new inputs, and ``joint_log_likelihood="plate"`` a per-row
log-likelihood summed over every observed site in that plate.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import site_is_subsample

from bayesgen._runtime import (
    check_ci_prob,
    check_count,
    is_out_of_memory,
    move_to_device,
    seeded,
    target_device,
    tensors_on,
    to_numpy,
)
from bayesgen._typing import DeviceLike, ModelFn

__all__ = ["to_datatree", "summary", "draw_sites", "draw_guide"]

logger = logging.getLogger(__name__)

_DRAW_PLATE = "_bayesgen_draws"


def _is_latent(site: Mapping[str, Any]) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("_do_not_trace")
    )


def _is_observed(site: Mapping[str, Any]) -> bool:
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic")
        and not site_is_subsample(site)
    )


def _is_deterministic(site: Mapping[str, Any]) -> bool:
    return site["type"] == "sample" and bool(site["infer"].get("_deterministic"))


def _max_plate_nesting(trace: poutine.Trace) -> int:
    nesting = 0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        nesting = max(nesting, len(site["fn"].batch_shape) if hasattr(site["fn"], "batch_shape") else 0)
    return nesting


class _UnconditionData(UnconditionMessenger):
    """``poutine.uncondition`` for data only: ``pyro.deterministic`` sites stay as computed.

    Re-sampling a deterministic site's Delta breaks the shapes of everything
    downstream of it, and it is no observation anyway.
    """

    def _pyro_sample(self, msg: Any) -> None:
        if msg["infer"].get("_deterministic"):
            return
        super()._pyro_sample(msg)


def _vectorize(fn: ModelFn, num: int, dim: int) -> ModelFn:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_DRAW_PLATE, num, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def draw_guide(
    guide: ModelFn, *args: Any, num_samples: int, max_plate_nesting: int | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site of ``guide``, each of shape ``(num_samples, *site_shape)``.

    One vectorised pass (a plate over draws outside the guide's own plates, at
    ``-(max_plate_nesting + 1)``; None: found from a plain pass). A guide that
    does not broadcast over that plate is drawn in a loop instead. No gradients.
    """

    def latent(trace: poutine.Trace) -> dict[str, torch.Tensor]:
        return {
            name: site["value"]
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and name != _DRAW_PLATE
            and not site_is_subsample(site)
        }

    with torch.no_grad():
        plain_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        plain = latent(plain_trace)
        if max_plate_nesting is None:
            max_plate_nesting = max(
                (
                    -f.dim
                    for s in plain_trace.nodes.values()
                    if s["type"] == "sample"
                    for f in s["cond_indep_stack"]
                    if f.vectorized and f.dim is not None
                ),
                default=0,
            )
        try:
            trace = poutine.trace(_vectorize(guide, num_samples, -(max_plate_nesting + 1))).get_trace(*args, **kwargs)
            return {name: value.reshape(num_samples, *plain[name].shape) for name, value in latent(trace).items()}
        except (RuntimeError, ValueError):  # a guide whose shapes do not broadcast over the draws
            loop = [latent(poutine.trace(guide).get_trace(*args, **kwargs)) for _ in range(num_samples - 1)]
            return {name: torch.stack([value] + [d[name] for d in loop]) for name, value in plain.items()}


class _LogitBernoulli(pyro.distributions.Bernoulli):
    """Bernoulli whose log-density keeps its digits for confident predictions.

    ``log p(y) = -softplus((1 - 2y) logit)``; torch's ``log(1 + exp(-|logit|))`` rounds to exactly 0 once
    ``exp(-|logit|)`` is below the float64 epsilon (``|logit| > 37``).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -torch.nn.functional.softplus((1 - 2 * value) * logits)


def _float64(fn: Any) -> Any:
    """``fn`` rebuilt with float64 parameters, or None where it cannot be rebuilt faithfully.

    Wrappers (``Independent``, ``expand``, ``mask``) are unwrapped; a leaf distribution is rebuilt from the
    constructor arguments it validates (``arg_constraints``), preferring logits to probabilities, which
    round to exactly 1 in float32 for a confident prediction.
    """
    import inspect

    from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

    if isinstance(fn, torch.distributions.Independent):
        base = _float64(fn.base_dist)
        return None if base is None else type(fn)(base, fn.reinterpreted_batch_ndims)
    if isinstance(fn, ExpandedDistribution):
        base = _float64(fn.base_dist)
        return None if base is None else base.expand(fn.batch_shape)
    if isinstance(fn, MaskedDistribution):
        base = _float64(fn.base_dist)
        return None if base is None else type(fn)(base, fn._mask)
    if not isinstance(fn, torch.distributions.Distribution) or not fn.arg_constraints:
        return None
    params = list(inspect.signature(type(fn).__init__).parameters)
    names = [name for name in params if name in fn.arg_constraints]
    if "probs" in names and "logits" in names:
        names.remove("probs" if "logits" in fn.__dict__ else "logits")
    try:
        values = {name: getattr(fn, name) for name in names}
        values = {
            name: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for name, v in values.items()
        }
        if isinstance(fn, torch.distributions.Bernoulli) and "logits" in values:
            rebuilt = _LogitBernoulli(logits=values["logits"], validate_args=False)
        else:
            rebuilt = type(fn)(**values, validate_args=False)
    except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError):
        return None
    if rebuilt.batch_shape != fn.batch_shape or rebuilt.event_shape != fn.event_shape:
        return None
    return rebuilt


def _site_log_lik(site: Mapping[str, Any]) -> torch.Tensor:
    """``log p(value | θ)`` of a sample site, in float64.

    The site's distribution is evaluated with float64 parameters and value: a float32 log-density rounds a
    confidently predicted observation's ``log p`` to exactly 0 (PSIS-LOO then refuses the draws) and
    loses digits in the tails that LOO's importance ratios amplify. A distribution that cannot be rebuilt
    in float64, or whose rebuilt log-density disagrees with its own, is evaluated as given and widened.
    """
    fn, value = site["fn"], site["value"]
    log_lik = fn.log_prob(value)
    if value.dtype != torch.float64 or log_lik.dtype != torch.float64:
        own = log_lik.double()
        rebuilt = _float64(fn) if fn.batch_shape == log_lik.shape else None
        wide = None
        if rebuilt is not None:
            try:
                wide = rebuilt.log_prob(value.double() if value.is_floating_point() else value)
            except (ValueError, RuntimeError):
                wide = None
        # the float32 log-density has about 7 digits; a rebuilt distribution that misses a parameter is off by more
        if (
            wide is not None
            and wide.shape == own.shape
            and bool(((wide - own).abs() <= 1e-3 + 1e-4 * own.abs()).logical_or(own == wide).all())
        ):
            log_lik = wide
        else:
            log_lik = own
    if site.get("mask") is not None:
        log_lik = log_lik.masked_fill(~site["mask"].expand_as(log_lik), 0.0)
    return log_lik


def _one_pass(
    model: ModelFn,
    guide: ModelFn | None,
    args: tuple,
    kwargs: dict,
    predictive: bool,
    enumerated: tuple[list[str], int] | None = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], poutine.Trace | None, poutine.Trace]:
    """Trace guide → model once; return latents, log-likelihoods, predictive draws and the traces.

    ``enumerated``: (names, plate nesting) of discrete sites the model enumerates and the guide does not
    draw. They are summed out of the log-likelihoods and drawn from their posterior given the data.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs) if guide is not None else None
    conditioned = poutine.replay(model, trace=guide_trace) if guide_trace is not None else model
    model_trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    out: dict[str, dict[str, torch.Tensor]] = {"latent": {}, "log_lik": {}, "predictive": {}, "observed": {}}
    for name, site in model_trace.nodes.items():
        if _is_latent(site) or _is_deterministic(site):
            out["latent"][name] = site["value"]
        elif _is_observed(site):
            try:
                out["log_lik"][name] = _site_log_lik(site)
            except ValueError as err:  # name the site, as Pyro's own message does
                raise ValueError(f"Error while computing log_prob at site '{name}':\n{err}") from err
            out["observed"][name] = site["value"]
    if enumerated:
        _sum_out_enumerated(conditioned, args, kwargs, out, *enumerated)
    if predictive:
        # Enumerated sites are drawn from p(z | θ) here, so the replicated data are p(y_rep | θ)'s.
        pred_trace = poutine.trace(_UnconditionData()(conditioned)).get_trace(*args, **kwargs)
        for name in out["log_lik"]:
            out["predictive"][name] = pred_trace.nodes[name]["value"]
    return out, guide_trace, model_trace


def _enumerated_sites(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> list[str]:
    """Discrete sites the model enumerates (config_enumerate) and the guide does not draw.

    Raises ValueError for sequential enumeration, which Pyro's TraceEnum_ELBO does not implement on the
    model side either: such a site would be drawn from its prior, giving conditional likelihoods.
    """
    names = [
        name
        for name, site in model_trace.nodes.items()
        if _is_latent(site) and site["infer"].get("enumerate") and name not in guide_trace.nodes
    ]
    sequential = [name for name in names if model_trace.nodes[name]["infer"]["enumerate"] != "parallel"]
    if sequential:
        raise ValueError(
            f"sites {sequential} are enumerated sequentially in the model, which is summed out neither here nor "
            "by TraceEnum_ELBO; enumerate them in parallel (config_enumerate(model) or "
            "infer={'enumerate': 'parallel'})"
        )
    return names


def _plates(site: Mapping[str, Any]) -> set[str]:
    return {f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != _DRAW_PLATE}


def _sum_out_enumerated(
    conditioned: ModelFn,
    args: tuple,
    kwargs: dict,
    out: dict[str, dict[str, torch.Tensor]],
    names: list[str],
    nesting: int,
) -> None:
    """Replace ``out``'s log-likelihoods by ones with the enumerated sites summed out, and their prior
    draws by draws from p(z | y, θ) (Pyro's ``infer_discrete``), for the parameters ``conditioned`` replays.

    Observed sites and enumerated sites are grouped by the enumeration dimensions their log-densities
    share; a group's per-row log-likelihood is ``logsumexp`` over those dimensions of the sum of its
    log-densities. That is the observation's marginal likelihood when every enumerated site of its group
    sits inside all of its plates (local, one per row) and the group has one observed site.
    """
    from pyro.infer import infer_discrete

    first_dim = -nesting - 1
    try:
        trace = poutine.trace(poutine.enum(conditioned, first_available_dim=first_dim)).get_trace(*args, **kwargs)
        terms = {
            name: _site_log_lik(site) for name, site in trace.nodes.items() if name in names or (name in out["log_lik"])
        }
        posterior_trace = poutine.trace(
            infer_discrete(conditioned, first_available_dim=first_dim, temperature=1)
        ).get_trace(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as err:
        if is_out_of_memory(err):
            raise
        raise ValueError(
            f"summing out the enumerated sites {names} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); under enumeration each site's value gets an "
            "extra dimension left of the plates, so the model must broadcast (index with z as in Pyro's "
            "Gaussian-mixture tutorial, and give plates their dim or let Pyro assign them)"
        ) from err

    def enum_dims(name: str) -> set[int]:
        t = terms[name]
        dims = {d for d in range(-t.dim(), first_dim + 1) if t.shape[d] > 1}
        if name in names:
            dims.add(trace.nodes[name]["infer"]["_enumerate_dim"])
        return dims

    dims = {name: enum_dims(name) for name in terms}
    groups: list[tuple[set[str], set[int]]] = []  # connected by a shared enumeration dimension
    for name in terms:
        merged, shared = {name}, set(dims[name])
        for group in [g for g in groups if g[1] & shared]:
            groups.remove(group)
            merged |= group[0]
            shared |= group[1]
        groups.append((merged, shared))
    for members, shared in groups:
        observed = sorted(m for m in members if m in out["log_lik"])
        if not observed or not shared:
            continue
        if len(observed) > 1:
            raise ValueError(
                f"observed sites {observed} depend on the same enumerated sites "
                f"{sorted(m for m in members if m in names)}, so their per-row likelihoods are joint, not "
                "one per site; observe them in one site (e.g. with .to_event) to convert this model"
            )
        obs = observed[0]
        for z in sorted(m for m in members if m in names):
            outside = _plates(trace.nodes[obs]) - _plates(trace.nodes[z])
            if outside:
                raise ValueError(
                    f"enumerated site {z!r} is outside plate(s) {sorted(outside)} that observed site {obs!r} is "
                    f"in, so {obs!r}'s rows are not independent given the parameters and a per-row "
                    "log-likelihood is not defined"
                )
        total = sum(terms[m] for m in members)
        total = total.logsumexp(dim=tuple(range(total.dim() + first_dim + 1)))
        out["log_lik"][obs] = total.reshape(out["log_lik"][obs].shape)
    for name in names:
        value, shape = posterior_trace.nodes[name]["value"], out["latent"][name].shape
        while value.dim() > len(shape) and value.shape[0] == 1:  # enumeration's padding
            value = value[0]
        out["latent"][name] = torch.broadcast_to(value, shape).clone()  # one category is not expanded


def _check_not_subsampled(trace: poutine.Trace) -> None:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site) and len(site["value"]) < site["fn"].size:
            raise ValueError(
                f"plate {name!r} subsamples {len(site['value'])} of its {site['fn'].size} rows, so every draw "
                "would see different observations; convert with the full data (no subsample_size, or "
                "subsample=None)"
            )


def _first_draw_agrees(
    model: ModelFn,
    args: tuple,
    kwargs: dict,
    vtrace: poutine.Trace,
    plain_trace: poutine.Trace,
    draws: Mapping[str, Mapping[str, torch.Tensor]],
) -> bool:
    """Replay the first vectorised draw through the plain model: same log-likelihoods and deterministic sites?"""
    first = {
        name: site["value"].reshape(-1, *plain_trace.nodes[name]["value"].shape)[0]
        for name, site in vtrace.nodes.items()
        if _is_latent(site) and name in plain_trace.nodes
    }
    trace = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    for name, site in trace.nodes.items():
        if _is_observed(site) and name in draws["log_lik"]:
            mine, theirs = _site_log_lik(site), draws["log_lik"][name][0]
        elif _is_deterministic(site) and name in draws["latent"]:
            mine, theirs = site["value"], draws["latent"][name][0]
        else:
            continue
        if mine.shape != theirs.shape or not torch.allclose(
            mine.double(), theirs.double(), rtol=1e-4, atol=1e-4, equal_nan=True
        ):
            return False
    return True


def draw_sites(
    model: ModelFn,
    guide: ModelFn | None,
    *args: Any,
    num_samples: int = 1000,
    predictive: bool = True,
    parallel: bool = True,
    **kwargs: Any,
) -> dict[str, dict[str, torch.Tensor]]:
    """Draw latent sites, per-observation log-likelihoods and predictive draws.

    The low-level engine of :func:`to_datatree`. With ``guide=None`` the
    latents come from the prior (and "predictive" is the prior predictive).

    Parameters
    ----------
    model, guide : callable
        Pyro model and guide with the same signature; ``guide`` may be None.
    *args, **kwargs
        Model arguments, including the observed data.
    num_samples : int, default 1000
    predictive : bool, default True
        Also re-simulate the observed sites.
    parallel : bool, default True
        Draw all samples in one vectorised pass (a plate over draws outside the
        model's plates). Models that do not broadcast fall back to a loop, and
        so do models whose first vectorised draw gives other log-likelihoods or
        deterministic values than a plain pass of the model on that draw (a
        reduction over a plate, such as ``theta - theta.mean()``, would
        otherwise also span the draws).

    Returns
    -------
    dict
        ``{"latent": {...}, "log_lik": {...}, "predictive": {...}, "observed": {...}}``;
        each value has shape ``(num_samples, *site_shape)`` except "observed".
        Log-likelihoods are float64; observed and replicated values of sites
        with a discrete support (Binomial, Poisson, Bernoulli, Categorical) are
        int64 where they are integer-valued.
    """
    return _draw_sites(model, guide, args, kwargs, num_samples=num_samples, predictive=predictive, parallel=parallel)[0]


def _draw_sites(
    model: ModelFn,
    guide: ModelFn | None,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    predictive: bool,
    parallel: bool,
) -> tuple[dict[str, dict[str, torch.Tensor]], poutine.Trace, poutine.Trace | None]:
    """:func:`draw_sites`, and the plain model and guide traces (each site's natural shape, plates, distribution)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    plain, guide_trace, model_trace = _plain_pass(model, guide, args, kwargs, predictive)
    _check_not_subsampled(model_trace)
    enumerated = _enumerated_sites(model_trace, guide_trace) if guide_trace is not None else []
    observed = plain.pop("observed")
    _warn_unusable_log_liks(model_trace, plain["log_lik"], observed)
    draws: dict[str, dict[str, torch.Tensor]] | None = None
    # Enumerated sites are summed out draw by draw, in _draw_in_loop: in one vectorised pass the
    # enumeration dimensions and the draws' plate would have to be told apart in every log-density.
    summed = (enumerated, _max_plate_nesting(model_trace)) if enumerated else None
    if parallel and num_samples > 1 and not enumerated:
        draws = _draw_vectorised(model, guide, args, kwargs, num_samples, predictive, plain, model_trace, guide_trace)
    if draws is None:
        draws = _draw_in_loop(model, guide, args, kwargs, num_samples, predictive, summed)
    draws["observed"] = observed
    _keep_integers(model_trace, draws)
    return draws, model_trace, guide_trace


def _plain_pass(
    model: ModelFn, guide: ModelFn | None, args: tuple, kwargs: dict, predictive: bool
) -> tuple[dict[str, dict[str, torch.Tensor]], poutine.Trace | None, poutine.Trace]:
    """One pass of guide and model without a plate over draws: the natural shape of every site and the plate depth.

    A model whose distributions reject the data raises a ValueError that says which values are invalid.
    """
    try:
        return _one_pass(model, guide, args, kwargs, predictive)
    except ValueError as err:
        if "invalid values" not in str(err):
            raise
        from bayesgen.infer import _describe_invalid_values

        raise ValueError(f"the model cannot be evaluated on these data: {_describe_invalid_values(str(err))}") from None


def _warn_unusable_log_liks(
    model_trace: poutine.Trace, log_liks: Mapping[str, torch.Tensor], observed: Mapping[str, torch.Tensor]
) -> None:
    """Log the observed sites whose log-likelihoods LOO cannot use as one value per observation."""
    if not observed:
        logger.info("the model has no observed sites; log_likelihood and observed_data will be empty")
    for name, log_lik in log_liks.items():
        if log_lik.numel() == 1 and observed[name].numel() > 1:
            logger.warning(
                "observed site %r gives one log-likelihood for all its %d values (no pyro.plate over its rows, "
                "or .to_event over them): LOO and compare need one per observation; observe the rows inside a "
                "pyro.plate",
                name,
                observed[name].numel(),
            )
    for name, site in model_trace.nodes.items():
        mask = site.get("mask") if name in log_liks else None
        if isinstance(mask, torch.Tensor) and not bool(mask.all()):
            left_out = log_liks[name].numel() - int(mask.expand_as(log_liks[name]).sum())
            logger.warning(
                "observed site %r is masked (poutine.mask): %d of its %d values are not in the likelihood and get "
                "log-likelihood 0, which LOO counts as observations with elpd 0; to compare models by LOO, drop "
                "those rows from the data instead",
                name,
                left_out,
                log_liks[name].numel(),
            )


def _draw_vectorised(
    model: ModelFn,
    guide: ModelFn | None,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    predictive: bool,
    plain: Mapping[str, Mapping[str, torch.Tensor]],
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace | None,
) -> dict[str, dict[str, torch.Tensor]] | None:
    """All draws in one pass under a plate over draws outside every plate of model and guide.

    Returns None, with a logged warning, where the pass fails or its first draw disagrees with a plain pass
    of the model on that draw; ``plain`` (from :func:`_plain_pass`) gives each site's natural shape.
    """
    dim = -_max_plate_nesting(model_trace) - 1
    if guide_trace is not None:
        dim = min(dim, -_max_plate_nesting(guide_trace) - 1)
    try:
        vguide = _vectorize(guide, num_samples, dim) if guide is not None else None
        raw, _, vtrace = _one_pass(_vectorize(model, num_samples, dim), vguide, args, kwargs, predictive)
        raw.pop("observed")
        # A vectorised value is (num_samples, 1, ..., 1, *natural shape); the plain
        # pass gives the natural shape, so a reshape drops the broadcast padding.
        draws = {
            group: {name: value.reshape(num_samples, *plain[group][name].shape) for name, value in sites.items()}
            for group, sites in raw.items()
        }
        if not _first_draw_agrees(model, args, kwargs, vtrace, model_trace, draws):
            logger.warning(
                "vectorised draws disagree with a plain pass of the model on the same draw (the model "
                "reduces over a plate, e.g. theta.mean() or a softmax over a plate's values, which in a "
                "vectorised pass also spans the draws); drawing %d samples one at a time",
                num_samples,
            )
            return None
    except (RuntimeError, ValueError, IndexError, KeyError, NotImplementedError) as err:
        logger.warning(
            "vectorised draws failed (%s: %s); drawing %d samples one at a time",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            num_samples,
        )
        return None
    return draws


def _draw_in_loop(
    model: ModelFn,
    guide: ModelFn | None,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    predictive: bool,
    summed: tuple[list[str], int] | None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``num_samples`` plain passes, stacked along a leading draw dim.

    ``summed``: the enumerated sites to sum out, as :func:`_one_pass`'s ``enumerated``.
    """
    passes = [_one_pass(model, guide, args, kwargs, predictive, summed)[0] for _ in range(num_samples)]
    for p in passes:
        p.pop("observed")
    return {
        group: {name: torch.stack([p[group][name] for p in passes]) for name in passes[0][group]} for group in passes[0]
    }


def _is_discrete(site: Mapping[str, Any]) -> bool:
    support = getattr(site["fn"], "support", None)
    return bool(getattr(support, "is_discrete", False))


def _keep_integers(trace: poutine.Trace, draws: dict[str, dict[str, torch.Tensor]]) -> None:
    """Observed and replicated values of discrete sites (counts, categories) as int64, where integer-valued.

    Pyro's Binomial, Poisson and Bernoulli return floats; ArviZ's count plots (rootograms) want integers.
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not _is_discrete(site):
            continue
        for group in ("observed", "predictive"):
            value = draws.get(group, {}).get(name)
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and bool(torch.isfinite(value).all())
                and bool((value == value.round()).all())
            ):
                draws[group][name] = value.long()


def _is_point_mass(guide_trace: poutine.Trace) -> bool:
    """Every latent site of the guide is a Delta (AutoDelta, AutoMAP-style guides): all draws are equal."""
    from pyro.distributions import Delta

    def leaf(fn: Any) -> Any:
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        return fn

    sites = [
        site
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    return bool(sites) and all(isinstance(leaf(site["fn"]), Delta) for site in sites)


def _plate_dims(trace: poutine.Trace, taken: set[str]) -> dict[str, list[str]]:
    """Dimension names of each sample site from the ``pyro.plate`` it sits in, as ArviZ's NumPyro converter does.

    A batch dimension takes the name of the plate at that dim (when the sizes agree); other dimensions get
    ArviZ's default ``{site}_dim_{i}``. A ``pyro.deterministic`` value has no batch shape of its own: its
    trailing dimensions are matched against the plates. A plate named like a variable is not used (xarray
    cannot hold a variable with a dimension of its own name).
    """
    out: dict[str, list[str]] = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or name == _DRAW_PLATE:
            continue
        value, fn = site["value"], site["fn"]
        if not isinstance(value, torch.Tensor):
            continue
        batch, event = tuple(getattr(fn, "batch_shape", ())), tuple(getattr(fn, "event_shape", ()))
        batch_ndim = len(batch) if tuple(value.shape) == batch + event else value.dim()
        frames = {
            f.dim: f
            for f in site["cond_indep_stack"]
            if f.vectorized and f.dim is not None and f.name != _DRAW_PLATE and f.name not in taken
        }
        names = [None] * value.dim()
        for i in range(batch_ndim):
            frame = frames.get(i - batch_ndim)
            if frame is not None and frame.size == value.shape[i]:
                names[i] = frame.name
        if any(names):
            out[name] = [n if n is not None else f"{name}_dim_{i}" for i, n in enumerate(names)]
    return out


def _predict(
    model: ModelFn,
    new_kwargs: Mapping[str, Any],
    draws: Mapping[str, torch.Tensor],
    guide_sites: set[str],
    num_samples: int,
    parallel: bool,
) -> tuple[dict[str, torch.Tensor], poutine.Trace]:
    """Every site of ``model(**new_kwargs)`` under each posterior draw, bar the guide's sites that it takes
    from ``draws``: the guide sites whose shape the new inputs leave unchanged (global parameters). Observed
    sites are drawn, not conditioned. Returns the draws, shape ``(num_samples, *site_shape)``, and a plain trace.
    """

    def wanted(site: Mapping[str, Any]) -> bool:
        return site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get("_do_not_trace")

    free = poutine.trace(_UnconditionData()(model)).get_trace(**new_kwargs)
    fixed = {
        name
        for name in guide_sites
        if name in free.nodes
        and name in draws
        and tuple(free.nodes[name]["value"].shape) == tuple(draws[name].shape[1:])
    }
    names = [name for name, site in free.nodes.items() if wanted(site) and name not in fixed]

    def one(i: int) -> poutine.Trace:
        data = {name: draws[name][i] for name in fixed}
        return poutine.trace(poutine.condition(_UnconditionData()(model), data=data)).get_trace(**new_kwargs)

    first = one(0)
    if parallel and num_samples > 1:
        dim = -max(_max_plate_nesting(free), _max_plate_nesting(first)) - 1
        try:
            data = {}
            for name in fixed:
                natural = draws[name].shape[1:]
                batch = len(getattr(free.nodes[name]["fn"], "batch_shape", ()))
                data[name] = draws[name].reshape(num_samples, *[1] * (-dim - 1 - batch), *natural)
            vmodel = _vectorize(poutine.condition(_UnconditionData()(model), data=data), num_samples, dim)
            vtrace = poutine.trace(vmodel).get_trace(**new_kwargs)
            out = {
                name: vtrace.nodes[name]["value"].reshape(num_samples, *first.nodes[name]["value"].shape)
                for name in names
            }
            agree = all(
                torch.allclose(out[name][0].double(), first.nodes[name]["value"].double(), rtol=1e-4, atol=1e-4)
                for name in names
                if _is_deterministic(first.nodes[name])
            )
            if agree:
                return out, first
        except (RuntimeError, ValueError, IndexError, KeyError, NotImplementedError) as err:
            if is_out_of_memory(err):
                raise
    traces = [first] + [one(i) for i in range(1, num_samples)]
    return {name: torch.stack([t.nodes[name]["value"] for t in traces]) for name in names}, first


def _joint_log_lik(trace: poutine.Trace, log_lik: Mapping[str, torch.Tensor], plate: str) -> torch.Tensor:
    """Sum over every observed site inside ``plate`` of its log-likelihood, per draw and row of the plate."""
    total = None
    sites = []
    for name, value in log_lik.items():
        frame = next((f for f in trace.nodes[name]["cond_indep_stack"] if f.name == plate and f.vectorized), None)
        if frame is None:
            continue
        axis = value.dim() + frame.dim  # the plate's dim counts from the right of the batch shape
        if axis < 1 or value.shape[axis] != frame.size:
            raise ValueError(
                f"observed site {name!r} is in plate {plate!r} but its log-likelihood has shape "
                f"{tuple(value.shape[1:])}, without the plate's {frame.size} rows"
            )
        rows = value.movedim(axis, 1).reshape(value.shape[0], frame.size, -1).sum(-1)
        total = rows if total is None else total + rows
        sites.append(name)
    if total is None:
        plates = sorted({f.name for name in log_lik for f in trace.nodes[name]["cond_indep_stack"] if f.vectorized})
        raise ValueError(
            f"joint_log_likelihood={plate!r} names no plate that an observed site is in; "
            f"the observed sites' plates: {plates}"
        )
    logger.info("joint log-likelihood over plate %r sums observed sites %s", plate, sites)
    return total


def _check_layout(sample_dims: str | Sequence[str], num_chains: int | None, num_samples: int) -> tuple[str, int]:
    """``("sample", 1)`` or ``("chain", number of chains)`` for ``num_samples`` independent draws."""
    layout = (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims)
    if layout not in (("chain", "draw"), ("sample",)):
        raise ValueError(f"sample_dims must be ('chain', 'draw') or 'sample', got {sample_dims!r}")
    if num_chains is not None and (isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1):
        raise ValueError(f"num_chains must be an integer >= 1 or None, got {num_chains!r}")
    if layout == ("sample",):
        if num_chains not in (None, 1):
            raise ValueError(
                f"num_chains={num_chains} needs sample_dims=('chain', 'draw'); a 'sample' dim has no chains"
            )
        return "sample", 1
    if num_chains is None:
        # ArviZ's diagnostics want at least 2 chains of 4 draws; independent draws split into equal chains.
        num_chains = next((c for c in (4, 2) if num_samples % c == 0 and num_samples // c >= 4), 1)
    elif num_samples % num_chains:
        raise ValueError(f"num_samples={num_samples} does not split into num_chains={num_chains} equal chains")
    return "chain", num_chains


def to_datatree(
    model: ModelFn,
    guide: ModelFn,
    *args: Any,
    num_samples: int = 1000,
    param_state: dict | None = None,
    seed: int | None = 0,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence[Any]] | None = None,
    prior: bool = False,
    predictions: Mapping[str, Any] | None = None,
    joint_log_likelihood: str | None = None,
    sample_dims: str | Sequence[str] = ("chain", "draw"),
    num_chains: int | None = None,
    parallel: bool = True,
    device: DeviceLike | None = None,
    attrs: Mapping[str, Any] | None = None,
    unknown_dims: str = "ignore",
    **kwargs: Any,
) -> Any:
    """Convert a fitted Pyro model/guide pair to an ArviZ DataTree.

    Parameters
    ----------
    model, guide : callable
        Any Pyro model and its fitted guide (a function using ``pyro.param``,
        an autoguide or a ``PyroModule``), with the same signature.
    *args, **kwargs
        The model's arguments, observed data included.
    num_samples : int, default 1000
        Guide draws. A point-mass guide (every site a ``Delta``, as
        ``AutoDelta`` gives) is drawn once and stored as one draw.
    param_state : dict, optional
        The param-store state holding the guide's parameters (an estimator's,
        or ``SVIResult.param_state``). None reads the global param store, as
        a hand-written Pyro script leaves it.
    seed : int or None, default 0
        Seed for the draws; the caller's RNG is left alone.
    dims : dict of {str: list of str}, optional
        Names of each variable's dimensions, e.g. ``{"rate": ["variant"]}``.
        Applies to every group holding that variable and overrides the names
        taken from the model's ``pyro.plate`` names. Entries naming no site
        of the model are ignored (one table serves several variants of a model).
    coords : dict of {str: list}, optional
        Coordinate values of named dimensions, e.g. ``{"variant": ["A", "B"]}``.
    prior : bool, default False
        Add ``prior`` and ``prior_predictive`` groups drawn from the model.
    predictions : dict, optional
        The model's keyword arguments for new inputs, e.g. ``{"x": x_new}``
        (the model is called as ``model(**predictions)``; leave the
        observations out or None). Adds a ``predictions`` group: each site of
        that call under each posterior draw, the guide's sites that the new
        inputs leave unchanged in shape taken from the draws, the observed
        sites and the rest drawn from the model. ``coords`` apply where their
        length fits the new inputs.
    joint_log_likelihood : str, optional
        A plate name: add ``log_likelihood["{plate}_joint"]``, per row of the
        plate the summed log-likelihood of every observed site in it (and of
        their other dimensions), for leave-one-group-out with
        ``arviz_stats.loo(tree, var_name="{plate}_joint")``.
    sample_dims : ("chain", "draw") or "sample", default ("chain", "draw")
        How the independent draws are stored: split into ``num_chains``
        chains, or along one ``sample`` dimension (ArviZ's layout for NumPyro
        SVI; pass ``sample_dims="sample"`` to ArviZ functions that take it;
        ``arviz_stats.loo`` needs chains).
    num_chains : int, optional
        Chains to split the draws into. None: 4 where ``num_samples`` splits
        into 4 chains of at least 4 draws, else 2, else 1, so that ArviZ's
        summary and diagnostics accept the tree.
    parallel : bool, default True
        Vectorise the draws (falls back to a loop for models that do not broadcast).
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Move tensor arguments there first; None leaves them where they are.
    attrs : dict, optional
        Extra attributes for the root of the tree.
    unknown_dims : {"ignore", "raise"}, default "ignore"
        What to do with ``dims`` entries that name no site of the model;
        "raise" catches typos.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``posterior_predictive``, ``log_likelihood``,
        ``observed_data`` (and ``prior``, ``prior_predictive``, ``predictions``).
        Log-likelihoods are float64; observed and replicated values of
        discrete sites are integers.

    Examples
    --------
    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.infer.autoguide import AutoNormal
    >>> from bayesgen.infer import run_svi
    >>> y = torch.tensor([1.2, 0.4, 0.9, 1.6])
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    ...     with pyro.plate("obs", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> guide = AutoNormal(model)
    >>> fit = run_svi(model, guide, y, num_steps=300, learning_rate=0.05)
    >>> tree = to_datatree(model, guide, y, param_state=fit.param_state)
    >>> sorted(tree.children)
    ['log_likelihood', 'observed_data', 'posterior', 'posterior_predictive']
    >>> tree.log_likelihood["y"].dims
    ('chain', 'draw', 'obs')
    """
    num_samples = check_count(num_samples, "num_samples")
    layout, chains = _check_layout(sample_dims, num_chains, num_samples)
    _check_options(unknown_dims, predictions, joint_log_likelihood)
    from arviz_base import from_dict

    rng_device = target_device(device, args, kwargs)
    if device is not None:
        args, kwargs = move_to_device(args, rng_device), move_to_device(kwargs, rng_device)
        if predictions is not None:
            predictions = move_to_device(dict(predictions), rng_device)
    scope = _param_context(param_state)
    prior_draws = predicted = predicted_trace = None
    # tensors_on: a user's model that builds constants without a device still draws on the data's GPU.
    with scope, seeded(seed, rng_device), tensors_on(rng_device), torch.no_grad():
        post, model_trace, guide_trace, point_mass = _draw_posterior(
            model, guide, args, kwargs, num_samples=num_samples, param_state=param_state, parallel=parallel
        )
        drawn = 1 if point_mass else num_samples
        if prior:
            prior_draws = _draw_sites(
                model, None, args, kwargs, num_samples=num_samples, predictive=True, parallel=parallel
            )
        if predictions is not None:
            predicted, predicted_trace = _draw_predictions(model, predictions, post, guide_trace, drawn, parallel)
        if joint_log_likelihood is not None:
            _add_joint_log_lik(post, model_trace, joint_log_likelihood)

    groups = _group_arrays(post, prior_draws, predicted, layout, chains=chains, post_chains=1 if point_mass else chains)
    _check_site_names(groups, ["sample"] if layout == "sample" else ["chain", "draw"])
    root_attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "inference_method": "svi",
        "draws_are_independent": 1,
        "num_samples": int(drawn),
        "point_estimate": int(point_mass),
        **(dict(attrs) if attrs else {}),
    }
    traces = {
        "main": model_trace,
        "prior": None if prior_draws is None else prior_draws[1],
        "predictions": predicted_trace,
    }
    return from_dict(
        groups,
        sample_dims=["sample"] if layout == "sample" else ["chain", "draw"],
        **_dims_and_coords(
            groups,
            traces,
            dims or {},
            coords or {},
            joint_log_likelihood=joint_log_likelihood,
            strict=unknown_dims == "raise",
            sample_ndim=1 if layout == "sample" else 2,
        ),
        attrs={"/": root_attrs},
    )


def _check_options(unknown_dims: str, predictions: Mapping[str, Any] | None, joint_log_likelihood: str | None) -> None:
    """Type and value checks of :func:`to_datatree`'s options that need no draws."""
    if unknown_dims not in ("raise", "ignore"):
        raise ValueError(f"unknown_dims must be 'raise' or 'ignore', got {unknown_dims!r}")
    if predictions is not None and not isinstance(predictions, Mapping):
        raise TypeError(
            f"predictions must be a dict of the model's keyword arguments, got {type(predictions).__name__}"
        )
    if joint_log_likelihood is not None and not isinstance(joint_log_likelihood, str):
        raise TypeError(f"joint_log_likelihood must be a plate name, got {joint_log_likelihood!r}")


def _param_context(param_state: dict | None) -> contextlib.AbstractContextManager:
    """A scope holding ``param_state`` as the param store; None: the global param store, left as it is."""
    from bayesgen.infer import param_scope

    if param_state is not None and not (
        isinstance(param_state, Mapping) and set(param_state) == {"params", "constraints"}
    ):
        raise TypeError(
            "param_state must be a param-store state, {'params': ..., 'constraints': ...} "
            f"(e.g. SVIResult.param_state), got {type(param_state).__name__} "
            f"{sorted(param_state) if isinstance(param_state, Mapping) else ''}"
        )
    return param_scope(param_state) if param_state is not None else contextlib.nullcontext()


def _draw_posterior(
    model: ModelFn,
    guide: ModelFn | None,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    param_state: dict | None,
    parallel: bool,
) -> tuple[dict[str, dict[str, torch.Tensor]], poutine.Trace, poutine.Trace | None, bool]:
    """:func:`_draw_sites` for the guide's draws, and whether the guide is a point mass (then drawn once).

    Logs a warning where the guide creates parameters (``param_state`` did not hold the fit's) or its draws
    have no spread.
    """
    before = set(pyro.get_param_store().keys())
    point_mass = guide is not None and _is_point_mass(poutine.trace(guide).get_trace(*args, **kwargs))
    drawn = 1 if point_mass else num_samples
    post, model_trace, guide_trace = _draw_sites(
        model, guide, args, kwargs, num_samples=drawn, predictive=True, parallel=parallel
    )
    created = sorted(set(pyro.get_param_store().keys()) - before)
    if created and guide is not None:
        logger.warning(
            "the guide created parameters %s that %s did not hold, so these draws use their initial "
            "values; pass the fit's param_state (run_svi keeps parameters out of the global store)",
            created[:5],
            "param_state" if param_state is not None else "the global param store",
        )
    if point_mass:
        logger.warning(
            "the guide is a point mass (every site a Delta, as AutoDelta gives): the tree holds its one draw "
            "instead of %d equal copies; it has no posterior spread (summary sds are NaN), and "
            "arviz_stats.loo and compare cannot use it (PSIS-LOO needs log-likelihoods that vary over draws); "
            "fit a guide with spread (AutoNormal) to compare models by LOO",
            num_samples,
        )
    else:
        latents = [v for v in post["latent"].values() if v.is_floating_point()]
        if guide is not None and drawn > 1 and latents and all(bool((v == v[:1]).all()) for v in latents):
            logger.warning(
                "every guide draw is the same: the posterior has no spread, summary sds are 0, and "
                "arviz_stats.loo and compare cannot use this tree (PSIS-LOO needs log-likelihoods that vary "
                "over draws)"
            )
    return post, model_trace, guide_trace, point_mass


def _draw_predictions(
    model: ModelFn,
    predictions: Mapping[str, Any],
    post: Mapping[str, Mapping[str, torch.Tensor]],
    guide_trace: poutine.Trace | None,
    num_samples: int,
    parallel: bool,
) -> tuple[dict[str, torch.Tensor], poutine.Trace]:
    """:func:`_predict` under the posterior draws ``post``, with the observed sites' discrete values as integers."""
    guide_sites = (
        set()
        if guide_trace is None
        else {
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        }
    )
    predicted, predicted_trace = _predict(model, predictions, post["latent"], guide_sites, num_samples, parallel)
    observed_names = set(post["observed"])
    for name, site in predicted_trace.nodes.items():
        if name in predicted and name in observed_names and _is_discrete(site):
            value = predicted[name]
            if value.is_floating_point() and bool((value == value.round()).all()):
                predicted[name] = value.long()
    return predicted, predicted_trace


def _add_joint_log_lik(post: dict[str, dict[str, torch.Tensor]], model_trace: poutine.Trace, plate: str) -> None:
    """Add ``post["log_lik"]["{plate}_joint"]``, the per-row log-likelihood summed over the plate's observed sites."""
    joint_name = f"{plate}_joint"
    if joint_name in post["log_lik"]:
        raise ValueError(f"the model has a site named {joint_name!r}; it cannot hold the joint log-likelihood")
    post["log_lik"][joint_name] = _joint_log_lik(model_trace, post["log_lik"], plate)


def _draw_arrays(values: Mapping[str, torch.Tensor], layout: str, n_chains: int) -> dict[str, np.ndarray]:
    """NumPy arrays of draws, shape ``(num_samples, ...)`` for a ``sample`` layout, else ``(chain, draw, ...)``."""
    out = {name: to_numpy(v) for name, v in values.items()}
    if layout == "sample":
        return out
    return {name: v.reshape(n_chains, v.shape[0] // n_chains, *v.shape[1:]) for name, v in out.items()}


def _group_arrays(
    post: Mapping[str, Mapping[str, torch.Tensor]],
    prior_draws: tuple[Mapping[str, Mapping[str, torch.Tensor]], poutine.Trace, Any] | None,
    predicted: Mapping[str, torch.Tensor] | None,
    layout: str,
    *,
    chains: int,
    post_chains: int,
) -> dict[str, dict[str, np.ndarray]]:
    """The DataTree's groups as NumPy arrays by variable; groups without variables are left out."""
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": _draw_arrays(post["latent"], layout, post_chains),
        "posterior_predictive": _draw_arrays(post["predictive"], layout, post_chains),
        "log_likelihood": _draw_arrays(post["log_lik"], layout, post_chains),
        "observed_data": {name: to_numpy(v) for name, v in post["observed"].items()},
    }
    if prior_draws is not None:
        groups["prior"] = _draw_arrays(prior_draws[0]["latent"], layout, chains)
        groups["prior_predictive"] = _draw_arrays(prior_draws[0]["predictive"], layout, chains)
    if predicted is not None:
        groups["predictions"] = _draw_arrays(predicted, layout, post_chains)
    return {k: v for k, v in groups.items() if v}


def _check_site_names(groups: Mapping[str, Mapping[str, np.ndarray]], sample_dims: Sequence[str]) -> None:
    """A site named like a sample dimension would replace that dimension's index in the DataTree."""
    for group, arrays in groups.items():
        for name in arrays:
            if name in sample_dims:
                raise ValueError(
                    f"the model has a site named {name!r}, which is also the name of a sample dimension "
                    f"({', '.join(sample_dims)}) of the DataTree's {group!r} group; rename the site"
                )


def _dims_and_coords(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    traces: Mapping[str, poutine.Trace | None],
    dims: Mapping[str, Sequence[str]],
    coords: Mapping[str, Sequence[Any]],
    *,
    joint_log_likelihood: str | None,
    strict: bool,
    sample_ndim: int,
) -> dict[str, Any]:
    """``from_dict``'s ``dims``, ``coords``, ``pred_dims`` and ``pred_coords``.

    Dimension names come from the plates in ``traces`` (``"main"``: the model's, ``"prior"`` and
    ``"predictions"``: None where that group is not drawn), overridden by the user's ``dims``.
    """
    taken = {name for values in groups.values() for name in values}
    inferred = _plate_dims(traces["main"], taken)
    if traces["prior"] is not None:
        inferred = {**_plate_dims(traces["prior"], taken), **inferred}
    if joint_log_likelihood is not None:
        inferred[f"{joint_log_likelihood}_joint"] = [joint_log_likelihood]
    main = {k: v for k, v in groups.items() if k != "predictions"}
    user = _fit_dims(main, dims, strict=strict, sample_ndim=sample_ndim)
    dims_clean = {**_fit_dims(main, inferred, strict=False, sample_ndim=sample_ndim), **user}
    pred_dims = pred_coords = None
    if traces["predictions"] is not None:
        pred = {"predictions": groups["predictions"]} if "predictions" in groups else {}
        pred_inferred = _plate_dims(traces["predictions"], taken)
        pred_dims = {
            **_fit_dims(pred, pred_inferred, strict=False, sample_ndim=sample_ndim),
            **_fit_dims(pred, dict(dims), strict=False, sample_ndim=sample_ndim),
        }
        pred_coords = _fit_coords(pred, pred_dims, coords, sample_ndim=sample_ndim, drop_misfits=True)
    return {
        "dims": dims_clean,
        "coords": _fit_coords(main, dims_clean, coords, sample_ndim=sample_ndim),
        "pred_dims": pred_dims,
        "pred_coords": pred_coords,
    }


def _fit_dims(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, Sequence[str]],
    strict: bool = True,
    sample_ndim: int = 2,
) -> dict:
    """Check dims against the variables' ranks, and say clearly when they cannot fit.

    A site's log-likelihood has its event dims summed away, so it may use only
    the leading names (ArviZ does that); the dims must fit the largest rank.
    With ``strict=False`` entries naming no variable are dropped.
    """
    out: dict[str, list[str]] = {}
    known = {name for values in groups.values() for name in values}
    unknown = sorted(set(dims) - known)
    if unknown and strict:
        raise ValueError(
            f"dims names {unknown}, which are not sites of the model (a typo?); its sites: "
            f"{sorted(known)}; unknown_dims='ignore' allows it"
        )
    for name, names in dims.items():
        if name not in known:
            continue
        ranks = {
            group: values[name].ndim - (0 if group == "observed_data" else sample_ndim)
            for group, values in groups.items()
            if name in values
        }
        if ranks and len(names) > max(ranks.values()):
            group, rank = max(ranks.items(), key=lambda kv: kv[1])
            raise ValueError(
                f"dims[{name!r}] = {list(names)} names {len(names)} dimensions, but the "
                f"site {name!r} has {rank} in group {group!r}"
            )
        out[name] = list(names)
    return out


def _fit_coords(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, Sequence[str]],
    coords: Mapping[str, Sequence[Any]],
    sample_ndim: int = 2,
    drop_misfits: bool = False,
) -> dict[str, list]:
    """Check each coordinate's length against the dimension it labels (xarray's own error names neither).

    ``drop_misfits``: leave out coordinates whose length does not fit (new inputs of another size) instead.
    """
    out = {}
    for dim, values in coords.items():
        if isinstance(values, str) or not hasattr(values, "__len__"):
            raise ValueError(f"coords[{dim!r}] must be a sequence of labels, got {values!r}")
        labels = list(values)
        fits = True
        for name, names in dims.items():
            if dim not in names:
                continue
            axis = list(names).index(dim)
            for group, variables in groups.items():
                if name not in variables:
                    continue
                shape = variables[name].shape[(0 if group == "observed_data" else sample_ndim) :]
                if axis < len(shape) and shape[axis] != len(labels):
                    if not drop_misfits:
                        raise ValueError(
                            f"coords[{dim!r}] has {len(labels)} labels, but dimension {dim!r} of "
                            f"{name!r} ({group}) has size {shape[axis]}"
                        )
                    fits = False
        if fits:
            out[dim] = labels
    return out


def summary(
    data: Any,
    var_names: Sequence[str] | None = None,
    *,
    group: str = "posterior",
    ci_prob: float = 0.94,
    ci_kind: str = "eti",
    round_to: int | str = "none",
) -> pd.DataFrame:
    """Summary table suited to how the draws were made.

    For independent guide draws (``inference_method == "svi"``) it reports
    mean, sd and the credible interval from :func:`arviz.summary` with
    ``kind="stats"``, plus ``mcse_mean = sd / sqrt(n)`` — exact for
    independent draws — and the number of draws. R-hat and ESS are left out:
    they diagnose Markov chains, which SVI draws are not. For MCMC output it
    returns ArviZ's full summary, diagnostics included.

    Parameters
    ----------
    data : xarray.DataTree
        From :func:`to_datatree` or any ArviZ-converted source.
    var_names : list of str, optional
    group : str, default "posterior"
    ci_prob : float, default 0.94
    ci_kind : {"eti", "hdi"}, default "eti"
    round_to : int or "none", default "none"

    Returns
    -------
    pandas.DataFrame
        One row per scalar (``rate[A]``), columns ``mean``, ``sd``,
        ``{ci_kind}{pct}_lb``, ``{ci_kind}{pct}_ub``, ``mcse_mean``, ``n_draws``.
    """
    if not hasattr(data, "attrs") or not hasattr(data, "children"):
        raise TypeError(f"data must be an ArviZ DataTree (from to_datatree or to_arviz), got {type(data).__name__}")
    if group not in data.children:
        raise ValueError(f"data has no group {group!r}; it has {sorted(data.children)}")
    ci_prob = check_ci_prob(ci_prob)
    if var_names is not None:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        missing = [v for v in names if v.lstrip("~") not in data[group].data_vars]
        if missing:
            raise ValueError(
                f"var_names {missing} are not in the {group} group; it has {sorted(data[group].data_vars)}"
            )
    import arviz

    independent = bool(data.attrs.get("draws_are_independent", 0))
    ds = data[group]
    sample_dims = ["sample"] if "sample" in ds.dims and "chain" not in ds.dims else ["chain", "draw"]
    kind = "stats" if independent else "all"
    table = arviz.summary(
        data,
        var_names=var_names,
        group=group,
        sample_dims=sample_dims,
        kind=kind,
        ci_prob=ci_prob,
        ci_kind=ci_kind,
        round_to=round_to,
    )
    table = pd.DataFrame(table)
    if independent:
        n = int(np.prod([ds.sizes[d] for d in sample_dims]))
        table["mcse_mean"] = table["sd"].astype(float) / math.sqrt(n)
        table["n_draws"] = n
    return table

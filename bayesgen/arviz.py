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

Discrete sites that the model enumerates (``config_enumerate``, trained with
``TraceEnum_ELBO``) and the guide does not draw, as in Pyro's Gaussian-mixture
tutorial, are summed out of ``log_likelihood`` (``log Σ_z p(z | θ) p(y_i | z, θ)``
per row), drawn from ``p(z | y, θ)`` into ``posterior`` (Pyro's
``infer_discrete``), and drawn from ``p(z | θ)`` for ``posterior_predictive``.
Such models are drawn one guide draw at a time (about 15 ms per draw for a
100-row mixture on a CPU). A per-row likelihood needs every enumerated site to
be local to the rows (inside the observation's plates) and one observed site
per group of enumerated sites; other models get a ``ValueError`` saying which.
``observed_data``
    The observed values.
``prior``, ``prior_predictive``
    Optional: draws from the model with observations removed.

Guide draws are independent, unlike MCMC draws. They are stored as one chain
(``chain`` of length 1, ``draw`` of length ``num_samples``) so every ArviZ
function accepts them, and the root attributes record ``inference_method =
"svi"``. :func:`summary` therefore reports statistics and the exact Monte
Carlo standard error of independent draws (``sd / sqrt(n)``) rather than
R-hat, which means nothing for independent draws.

Sample-site names become variable names. Name the dimensions with ``dims``
(``{"rate": ["variant"]}``) and label them with ``coords``
(``{"variant": ["A", "B"]}``).
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
        return {name: site["value"] for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"] and name != _DRAW_PLATE
                and not site_is_subsample(site)}

    with torch.no_grad():
        plain_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        plain = latent(plain_trace)
        if max_plate_nesting is None:
            max_plate_nesting = max((-f.dim for s in plain_trace.nodes.values() if s["type"] == "sample"
                                     for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None),
                                    default=0)
        try:
            trace = poutine.trace(_vectorize(guide, num_samples, -(max_plate_nesting + 1))).get_trace(
                *args, **kwargs)
            return {name: value.reshape(num_samples, *plain[name].shape) for name, value in latent(trace).items()}
        except (RuntimeError, ValueError):  # a guide whose shapes do not broadcast over the draws
            loop = [latent(poutine.trace(guide).get_trace(*args, **kwargs)) for _ in range(num_samples - 1)]
            return {name: torch.stack([value] + [d[name] for d in loop]) for name, value in plain.items()}


def _site_log_lik(site: Mapping[str, Any]) -> torch.Tensor:
    log_lik = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        log_lik = log_lik.masked_fill(~site["mask"].expand_as(log_lik), 0.0)
    return log_lik


def _one_pass(
    model: ModelFn, guide: ModelFn | None, args: tuple, kwargs: dict, predictive: bool,
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
    names = [name for name, site in model_trace.nodes.items()
             if _is_latent(site) and site["infer"].get("enumerate") and name not in guide_trace.nodes]
    sequential = [name for name in names if model_trace.nodes[name]["infer"]["enumerate"] != "parallel"]
    if sequential:
        raise ValueError(
            f"sites {sequential} are enumerated sequentially in the model, which is summed out neither here nor "
            "by TraceEnum_ELBO; enumerate them in parallel (config_enumerate(model) or "
            "infer={'enumerate': 'parallel'})")
    return names


def _plates(site: Mapping[str, Any]) -> set[str]:
    return {f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != _DRAW_PLATE}


def _sum_out_enumerated(
    conditioned: ModelFn, args: tuple, kwargs: dict, out: dict[str, dict[str, torch.Tensor]],
    names: list[str], nesting: int,
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
        terms = {name: _site_log_lik(site) for name, site in trace.nodes.items()
                 if name in names or (name in out["log_lik"])}
        posterior_trace = poutine.trace(
            infer_discrete(conditioned, first_available_dim=first_dim, temperature=1)).get_trace(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as err:
        if is_out_of_memory(err):
            raise
        raise ValueError(
            f"summing out the enumerated sites {names} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); under enumeration each site's value gets an "
            "extra dimension left of the plates, so the model must broadcast (index with z as in Pyro's "
            "Gaussian-mixture tutorial, and give plates their dim or let Pyro assign them)") from err

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
                "one per site; observe them in one site (e.g. with .to_event) to convert this model")
        obs = observed[0]
        for z in sorted(m for m in members if m in names):
            outside = _plates(trace.nodes[obs]) - _plates(trace.nodes[z])
            if outside:
                raise ValueError(
                    f"enumerated site {z!r} is outside plate(s) {sorted(outside)} that observed site {obs!r} is "
                    f"in, so {obs!r}'s rows are not independent given the parameters and a per-row "
                    "log-likelihood is not defined")
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
                "subsample=None)")


def _first_draw_agrees(
    model: ModelFn, args: tuple, kwargs: dict, vtrace: poutine.Trace, plain_trace: poutine.Trace,
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
                mine.double(), theirs.double(), rtol=1e-4, atol=1e-4, equal_nan=True):
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
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    # One plain pass gives the natural shape of every site and the plate depth.
    try:
        plain, guide_trace, model_trace = _one_pass(model, guide, args, kwargs, predictive)
    except ValueError as err:
        if "invalid values" not in str(err):
            raise
        from bayesgen.infer import _describe_invalid_values

        raise ValueError(f"the model cannot be evaluated on these data: {_describe_invalid_values(str(err))}") from None
    _check_not_subsampled(model_trace)
    enumerated = _enumerated_sites(model_trace, guide_trace) if guide_trace is not None else []
    observed = plain.pop("observed")
    if not observed:
        logger.info("the model has no observed sites; log_likelihood and observed_data will be empty")
    for name, log_lik in plain["log_lik"].items():
        if log_lik.numel() == 1 and observed[name].numel() > 1:
            logger.warning(
                "observed site %r gives one log-likelihood for all its %d values (no pyro.plate over its rows, "
                "or .to_event over them): LOO and compare need one per observation; observe the rows inside a "
                "pyro.plate", name, observed[name].numel())
    for name, site in model_trace.nodes.items():
        mask = site.get("mask") if name in plain["log_lik"] else None
        if isinstance(mask, torch.Tensor) and not bool(mask.all()):
            left_out = plain["log_lik"][name].numel() - int(mask.expand_as(plain["log_lik"][name]).sum())
            logger.warning(
                "observed site %r is masked (poutine.mask): %d of its %d values are not in the likelihood and get "
                "log-likelihood 0, which LOO counts as observations with elpd 0; to compare models by LOO, drop "
                "those rows from the data instead", name, left_out, plain["log_lik"][name].numel())
    draws: dict[str, dict[str, torch.Tensor]] | None = None
    # Enumerated sites are summed out draw by draw, in the loop below: in one vectorised pass the
    # enumeration dimensions and the draws' plate would have to be told apart in every log-density.
    summed = (enumerated, _max_plate_nesting(model_trace)) if enumerated else None
    if parallel and num_samples > 1 and not enumerated:
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
                group: {
                    name: value.reshape(num_samples, *plain[group][name].shape)
                    for name, value in sites.items()
                }
                for group, sites in raw.items()
            }
            if not _first_draw_agrees(model, args, kwargs, vtrace, model_trace, draws):
                logger.warning(
                    "vectorised draws disagree with a plain pass of the model on the same draw (the model "
                    "reduces over a plate, e.g. theta.mean() or a softmax over a plate's values, which in a "
                    "vectorised pass also spans the draws); drawing %d samples one at a time", num_samples)
                draws = None
        except (RuntimeError, ValueError, IndexError, KeyError, NotImplementedError) as err:
            logger.warning(
                "vectorised draws failed (%s: %s); drawing %d samples one at a time",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                num_samples,
            )
            draws = None
    if draws is None:
        passes = [_one_pass(model, guide, args, kwargs, predictive, summed)[0] for _ in range(num_samples)]
        for p in passes:
            p.pop("observed")
        draws = {
            group: {name: torch.stack([p[group][name] for p in passes]) for name in passes[0][group]}
            for group in passes[0]
        }
    draws["observed"] = observed
    return draws


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
    parallel: bool = True,
    device: DeviceLike | None = None,
    attrs: Mapping[str, Any] | None = None,
    unknown_dims: str = "raise",
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
        Guide draws (stored as 1 chain × ``num_samples`` draws).
    param_state : dict, optional
        The param-store state holding the guide's parameters (an estimator's,
        or ``SVIResult.param_state``). None reads the global param store, as
        a hand-written Pyro script leaves it.
    seed : int or None, default 0
        Seed for the draws; the caller's RNG is left alone.
    dims : dict of {str: list of str}, optional
        Names of each variable's dimensions, e.g. ``{"rate": ["variant"]}``.
        Applies to every group holding that variable.
    coords : dict of {str: list}, optional
        Coordinate values of named dimensions, e.g. ``{"variant": ["A", "B"]}``.
    prior : bool, default False
        Add ``prior`` and ``prior_predictive`` groups drawn from the model.
    parallel : bool, default True
        Vectorise the draws (falls back to a loop for models that do not broadcast).
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Move tensor arguments there first; None leaves them where they are.
    attrs : dict, optional
        Extra attributes for the root of the tree.
    unknown_dims : {"raise", "ignore"}, default "raise"
        What to do with ``dims`` entries that name no site of the model (a
        typo, usually); "ignore" lets one table serve several model variants.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``posterior_predictive``, ``log_likelihood``,
        ``observed_data`` (and ``prior``, ``prior_predictive``).

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
    >>> tree = to_datatree(model, guide, y, param_state=fit.param_state, dims={"y": ["obs"]})
    >>> sorted(tree.children)
    ['log_likelihood', 'observed_data', 'posterior', 'posterior_predictive']
    """
    num_samples = check_count(num_samples, "num_samples")
    from arviz_base import from_dict

    rng_device = target_device(device, args, kwargs)
    if device is not None:
        args, kwargs = move_to_device(args, rng_device), move_to_device(kwargs, rng_device)

    from bayesgen.infer import param_scope

    if param_state is not None and not (isinstance(param_state, Mapping)
                                        and set(param_state) == {"params", "constraints"}):
        raise TypeError("param_state must be a param-store state, {'params': ..., 'constraints': ...} "
                        f"(e.g. SVIResult.param_state), got {type(param_state).__name__} "
                        f"{sorted(param_state) if isinstance(param_state, Mapping) else ''}")
    scope = param_scope(param_state) if param_state is not None else contextlib.nullcontext()
    # tensors_on: a user's model that builds constants without a device still draws on the data's GPU.
    with scope, seeded(seed, rng_device), tensors_on(rng_device), torch.no_grad():
        before = set(pyro.get_param_store().keys())
        post = draw_sites(model, guide, *args, num_samples=num_samples, parallel=parallel, **kwargs)
        created = sorted(set(pyro.get_param_store().keys()) - before)
        if created and guide is not None:
            logger.warning(
                "the guide created parameters %s that %s did not hold, so these draws use their initial "
                "values; pass the fit's param_state (run_svi keeps parameters out of the global store)",
                created[:5], "param_state" if param_state is not None else "the global param store")
        latents = [v for v in post["latent"].values() if v.is_floating_point()]
        if guide is not None and num_samples > 1 and latents and all(bool((v == v[:1]).all()) for v in latents):
            logger.warning(
                "every guide draw is the same (a point-estimate guide such as AutoDelta): the posterior has no "
                "spread, summary sds are 0, and LOO treats the fitted values as certain")
        prior_draws = (
            draw_sites(model, None, *args, num_samples=num_samples, parallel=parallel, **kwargs)
            if prior
            else None
        )

    def chain(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {name: to_numpy(v)[None, ...] for name, v in values.items()}

    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": chain(post["latent"]),
        "posterior_predictive": chain(post["predictive"]),
        "log_likelihood": chain(post["log_lik"]),
        "observed_data": {name: to_numpy(v) for name, v in post["observed"].items()},
    }
    if prior_draws is not None:
        groups["prior"] = chain(prior_draws["latent"])
        groups["prior_predictive"] = chain(prior_draws["predictive"])
    groups = {k: v for k, v in groups.items() if v}
    root_attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "inference_method": "svi",
        "draws_are_independent": 1,
        "num_samples": int(num_samples),
        **(dict(attrs) if attrs else {}),
    }
    if unknown_dims not in ("raise", "ignore"):
        raise ValueError(f"unknown_dims must be 'raise' or 'ignore', got {unknown_dims!r}")
    dims_clean = _fit_dims(groups, dims or {}, strict=unknown_dims == "raise")
    return from_dict(
        groups,
        dims=dims_clean,
        coords=_fit_coords(groups, dims_clean, coords or {}),
        attrs={"/": root_attrs},
    )


def _fit_dims(groups: Mapping[str, Mapping[str, np.ndarray]], dims: Mapping[str, Sequence[str]],
              strict: bool = True) -> dict:
    """Check user dims against the variables' ranks, and say clearly when they cannot fit.

    A site's log-likelihood has its event dims summed away, so it may use only
    the leading names (ArviZ does that); the dims must fit the largest rank.
    """
    out: dict[str, list[str]] = {}
    known = {name for values in groups.values() for name in values}
    unknown = sorted(set(dims) - known)
    if unknown and strict:
        raise ValueError(f"dims names {unknown}, which are not sites of the model (a typo?); its sites: "
                         f"{sorted(known)}; unknown_dims='ignore' allows it")
    for name, names in dims.items():
        if name not in known:
            continue
        ranks = {
            group: values[name].ndim - (0 if group == "observed_data" else 2)
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


def _fit_coords(groups: Mapping[str, Mapping[str, np.ndarray]], dims: Mapping[str, Sequence[str]],
                coords: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """Check each coordinate's length against the dimension it labels (xarray's own error names neither)."""
    out = {}
    for dim, values in coords.items():
        if isinstance(values, str) or not hasattr(values, "__len__"):
            raise ValueError(f"coords[{dim!r}] must be a sequence of labels, got {values!r}")
        out[dim] = list(values)
        for name, names in dims.items():
            if dim not in names:
                continue
            axis = list(names).index(dim)
            for group, variables in groups.items():
                if name not in variables:
                    continue
                shape = variables[name].shape[(0 if group == "observed_data" else 2):]
                if axis < len(shape) and shape[axis] != len(out[dim]):
                    raise ValueError(f"coords[{dim!r}] has {len(out[dim])} labels, but dimension {dim!r} of "
                                     f"{name!r} ({group}) has size {shape[axis]}")
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
            raise ValueError(f"var_names {missing} are not in the {group} group; it has {sorted(data[group].data_vars)}")
    import arviz

    independent = bool(data.attrs.get("draws_are_independent", 0))
    kind = "stats" if independent else "all"
    table = arviz.summary(
        data, var_names=var_names, group=group, kind=kind, ci_prob=ci_prob, ci_kind=ci_kind, round_to=round_to
    )
    table = pd.DataFrame(table)
    if independent:
        ds = data[group]
        n = int(np.prod([ds.sizes[d] for d in ("chain", "draw") if d in ds.sizes]))
        table["mcse_mean"] = table["sd"].astype(float) / math.sqrt(n)
        table["n_draws"] = n
    return table


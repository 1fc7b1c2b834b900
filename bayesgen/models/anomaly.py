"""Mixture anomaly detector: normal components plus a broad anomaly component.

Generative story, for rows i = 1..n of standardised features (d of them)::

    anomaly_fraction  ~ Beta(a, b)                       (prior mean a / (a + b))
    weights           ~ Dirichlet(1, ..., 1)             (among the K normal components)
    loc_k, cov_k      ~ priors below, k = 1..K
    z_i               ~ Categorical([(1 - f) w_1, ..., (1 - f) w_K, f])
    x_i | z_i = k     ~ MultivariateNormal(loc_k, cov_k)             (normal behaviour)
    x_i | z_i = K + 1 ~ the broad anomaly component:

* ``anomaly="inflated"`` (default): ``MultivariateNormal(anomaly_loc, (1 + anomaly_excess) Σ)``
  with ``anomaly_loc ~ Normal(0, 3)`` per feature, ``anomaly_excess ~ LogNormal(log 4, 1.5)``
  and Σ the covariance of the normal part (Σ_k w_k cov_k plus the spread of the loc_k). Its
  centre and breadth are learnt, and it is broader than the normal part taken as a whole (with
  one component: than normal behaviour in every direction), whatever the columns' shapes: a
  contaminated normal model (Punzo & McNicholas 2016) with its own centre.
* ``anomaly="student_t"``: ``StudentT(df=3, 0, anomaly_scale)`` per feature, fixed: centred
  on the data, ``anomaly_scale`` times its robust spread, heavy-tailed.

Features are standardised inside the estimator (median and MAD; the transform is saved),
so both are broad whatever the units. Covariance of the normal components: ``"diag"``
(LogNormal scales), ``"full"`` (LKJ correlation × LogNormal scales) or
``"lowrank"`` (Normal factors plus a diagonal).

The discrete z is handled two ways that give the same ELBO: *marginalised* in
the likelihood (a log-sum-exp over components, ``Trace_ELBO``) or *enumerated*
(``TraceEnum_ELBO`` with ``config_enumerate``, z a sample site). From the EM start
(the default) the guide is a multivariate normal over all the global parameters'
unconstrained values, started at the Laplace approximation (:func:`laplace_start`)
and refined by SVI; from the k-means start it is mean-field. The posterior probability that row i
is an anomaly, ``p(z_i = K + 1 | x_i, θ)``, is averaged over guide draws of θ.

References
----------
Bishop (2006), Pattern recognition and machine learning, ch. 9 (mixtures).
Lewandowski, Kurowicka & Joe (2009), Generating random correlation matrices (LKJ).
Punzo & McNicholas (2016), Parsimonious mixtures of multivariate contaminated normal
distributions, Biometrical Journal 58(6).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch.distributions import biject_to, constraints

from bayesgen._runtime import (
    as_feature_matrix,
    check_ci_prob,
    check_count,
    check_flag,
    check_labels,
    check_real,
    match_columns,
    seeded,
    to_numpy,
)
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.models._base import BayesianEstimator
from bayesgen.models._gaussian_distributions import row_chunks

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.runs.spec import SpecFit

__all__ = [
    "ComponentMixture",
    "MixtureAnomalyDetector",
    "anomaly_distribution",
    "guide",
    "mixture_log_weights",
    "binary_labels",
    "model",
    "platt_scaling",
    "fit_anomaly_spec",
]

Covariance = Literal["diag", "full", "lowrank"]
AnomalyKind = Literal["inflated", "student_t"]


# ------------------------------------------------------------- distribution
class ComponentMixture(dist.TorchDistribution):
    """Rows under K + 1 components given as a table of log-densities.

    ``table_fn(x)`` returns log p(x | component k) with shape (..., n, K + 1).
    With ``index`` None the distribution is the mixture with ``log_weights``
    (log-sum-exp: the marginalised path); with ``index`` (a component per row,
    possibly enumerated) it is that component's density (the enumerated path).
    ``sample_fn(index)`` draws rows from given components.
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real_vector

    def __init__(
        self,
        table_fn: Callable[[torch.Tensor], torch.Tensor],
        sample_fn: Callable[[torch.Tensor], torch.Tensor],
        log_weights: torch.Tensor,
        batch_shape: torch.Size,
        event_shape: torch.Size,
        index: torch.Tensor | None = None,
    ) -> None:
        self.table_fn, self.sample_fn, self.log_weights, self.index = table_fn, sample_fn, log_weights, index
        super().__init__(batch_shape, event_shape, validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> ComponentMixture:
        return ComponentMixture(
            self.table_fn, self.sample_fn, self.log_weights, torch.Size(batch_shape), self.event_shape, self.index
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        table = self.table_fn(value)
        if self.index is None:
            # Global sites carry the row plate's dim as size 1, so log_weights (..., 1, K+1) or (K+1,) broadcasts.
            return torch.logsumexp(table + self.log_weights, dim=-1)
        shape = torch.broadcast_shapes(self.index.shape, table.shape[:-1])
        idx = self.index.expand(shape).unsqueeze(-1)
        return table.expand(*shape, table.shape[-1]).gather(-1, idx).squeeze(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        index = self.index
        if index is None:
            probs = self.log_weights.exp().expand(*self.batch_shape, self.log_weights.shape[-1])
            index = torch.distributions.Categorical(probs=probs).sample(sample_shape)
        return self.sample_fn(index)


# ------------------------------------------------------------ model / guide
_START_ROWS = 10_000  # rows of a larger table that EM and L-BFGS see when they place the start
_HESSIAN_ROWS = 1_000  # rows of a larger table whose curvature, scaled up, gives the Laplace covariance
_SITE_SUPPORT = {
    "loc": constraints.real,
    "scale": constraints.positive,
    "corr_tril": constraints.corr_cholesky,
    "cov_factor": constraints.real,
    "anomaly_loc": constraints.real,
    "anomaly_excess": constraints.positive,
}


def _component_params(hyper: dict[str, torch.Tensor], covariance: Covariance, d: int, rank: int) -> dict:
    """Sample the normal components' parameters (inside the component plate)."""
    loc = pyro.sample("loc", dist.Normal(hyper["loc_center"].expand(d), hyper["loc_scale"]).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(hyper["log_scale_center"].expand(d), hyper["log_scale_sd"]).to_event(1))
    params = {"loc": loc, "scale": scale}
    if "scale_floor" in hyper:  # present only when some column has a rounding error
        params["scale_floor"] = hyper["scale_floor"]
    if covariance == "full":
        params["corr_tril"] = pyro.sample("corr_tril", dist.LKJCholesky(d, hyper["lkj_concentration"]))
    elif covariance == "lowrank":
        zeros = hyper["factor_scale"].new_zeros(d, rank)
        params["cov_factor"] = pyro.sample("cov_factor", dist.Normal(zeros, hyper["factor_scale"]).to_event(2))
    return params


def component_sd(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The components' standard deviations per feature: ``scale``, or with ``scale_floor`` (the features' recorded
    resolution, see :func:`resolution_floor`) ``sqrt(scale² + scale_floor²)``."""
    floor = params.get("scale_floor")
    return params["scale"] if floor is None else torch.hypot(params["scale"], floor)


def component_tril(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cholesky factors (..., K, d, d) of the full-covariance components: ``diag(scale) corr_tril``, or with
    ``scale_floor`` the factor of ``diag(scale) C diag(scale) + diag(scale_floor²)`` (C = corr_tril corr_trilᵀ),
    whose determinant stays above the rounding error's however degenerate C is."""
    tril = params["scale"].unsqueeze(-1) * params["corr_tril"]
    floor = params.get("scale_floor")
    if floor is None:
        return tril
    rounding = torch.diag_embed(floor.square().expand_as(params["scale"]))
    return torch.linalg.cholesky(tril @ tril.transpose(-1, -2) + rounding)


def resolution_floor(arr: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each feature's rounding error as a standard deviation on the standardised scale: ``δ / (scale √12)``.

    ``δ`` is the smallest gap between two distinct values of the column (1 for integer codes, 0.01 for
    values recorded to two decimals): a value recorded as v stands for one anywhere within ``δ / 2`` of it,
    an error of variance ``δ² / 12`` (Sheppard). With it in every normal component's variance, a component
    cannot shrink onto rows that share a recorded value (its density would grow without bound). A floor
    under 0.001 (measurements with many digits) changes no density that matters and is set to 0.
    """
    floor = np.zeros(arr.shape[1])
    for j in range(arr.shape[1]):
        gaps = np.diff(np.unique(arr[:, j]))
        gaps = gaps[gaps > 0]
        if len(gaps):
            floor[j] = gaps.min() / (scale[j] * math.sqrt(12.0))
    return np.where(floor < 1e-3, 0.0, floor)


def normal_log_prob(x: torch.Tensor, params: dict[str, torch.Tensor], covariance: Covariance) -> torch.Tensor:
    """log N(x | component k) for every row and component: shape (..., n, K)."""
    xi = x.unsqueeze(-2)  # (n, 1, d)
    loc = params["loc"].unsqueeze(-3)  # (..., 1, K, d)
    scale = component_sd(params).unsqueeze(-3)
    if covariance == "diag":
        return dist.Normal(loc, scale).to_event(1).log_prob(xi)
    if covariance == "full":
        return dist.MultivariateNormal(loc, scale_tril=component_tril(params).unsqueeze(-4)).log_prob(xi)
    factor = params["cov_factor"].unsqueeze(-4)
    return dist.LowRankMultivariateNormal(loc, factor, scale.pow(2)).log_prob(xi)


def _pick(t: torch.Tensor, index: torch.Tensor, event_ndim: int) -> torch.Tensor:
    """Component ``index`` of ``t`` for every row: t (*B, K, *E), index (*B2, n) → (*B ∨ B2, n, *E)."""
    event = t.shape[t.dim() - event_ndim :]
    t = t.unsqueeze(-event_ndim - 2)
    idx = index.reshape(*index.shape, 1, *([1] * event_ndim))
    shape = torch.broadcast_shapes(t.shape[: -event_ndim - 1], idx.shape[: -event_ndim - 1])
    t = t.expand(*shape, t.shape[-event_ndim - 1], *event)
    return t.gather(-event_ndim - 1, idx.expand(*shape, 1, *event)).squeeze(-event_ndim - 1)


def _normal_sample(params: dict[str, torch.Tensor], covariance: Covariance, index: torch.Tensor) -> torch.Tensor:
    loc, scale = _pick(params["loc"], index, 1), _pick(component_sd(params), index, 1)
    eps = torch.randn_like(loc)
    if covariance == "diag":
        return loc + scale * eps
    if covariance == "full":
        tril = _pick(component_tril(params), index, 2)
        return loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
    factor = _pick(params["cov_factor"], index, 2)
    extra = torch.randn(*factor.shape[:-2], factor.shape[-1], 1, dtype=loc.dtype, device=loc.device)
    return loc + scale * eps + (factor @ extra).squeeze(-1)


def mixture_log_weights(frac: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log [(1 − f) w_1, ..., (1 − f) w_K, f]: the K normal components, then the anomaly component."""
    return torch.cat([torch.log1p(-frac).unsqueeze(-1) + weights.log(), frac.log().unsqueeze(-1)], dim=-1)


def anomaly_distribution(
    kind: AnomalyKind,
    hyper: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor],
    weights: torch.Tensor,
    covariance: Covariance,
    anomaly_loc: torch.Tensor | None = None,
    anomaly_excess: torch.Tensor | None = None,
) -> dist.TorchDistribution:
    """The broad anomaly component, batched like ``anomaly_loc`` (or unbatched for "student_t").

    ``"student_t"``: Student-t with 3 degrees of freedom, centred on the data, scale
    ``anomaly_scale`` per feature. ``"inflated"``: Normal with its own centre and
    ``1 + anomaly_excess`` times the covariance of the normal part (the components'
    weighted covariances plus the spread of their centres), so it is broader than
    the normal part taken as a whole (with one component: in every direction).
    """
    d = params["loc"].shape[-1]
    if kind == "student_t":
        loc = hyper["anomaly_scale"].new_zeros(d)
        return dist.StudentT(hyper["anomaly_df"], loc, hyper["anomaly_scale"]).to_event(1)
    if anomaly_loc is None or anomaly_excess is None:
        raise ValueError("the inflated anomaly component needs anomaly_loc and anomaly_excess")
    batch = anomaly_loc.shape[:-1]
    loc, scale = params["loc"], component_sd(params)  # (..., K, d)
    w = torch.broadcast_to(weights.squeeze(-2) if weights.dim() > 1 else weights, loc.shape[:-1]).unsqueeze(-1)
    centre = (w * loc).sum(-2, keepdim=True)
    between = ((loc - centre) * w.sqrt()).transpose(-1, -2)  # (..., d, K): the spread of the centres
    inflation = 1.0 + anomaly_excess
    if covariance == "full":
        tril = component_tril(params)
        if loc.shape[-2] == 1:  # one component: its own Cholesky factor, no decomposition to fail
            tril = tril.squeeze(-3)
        else:
            cov = (w.unsqueeze(-1) * tril @ tril.transpose(-1, -2)).sum(-3) + between @ between.transpose(-1, -2)
            tril = torch.linalg.cholesky(cov)
        tril = tril.reshape(*batch, d, d) * inflation.sqrt()[..., None, None]
        return dist.MultivariateNormal(anomaly_loc, scale_tril=tril)
    factors = [between]
    if covariance == "lowrank":
        f = params["cov_factor"] * w.unsqueeze(-1).sqrt()  # (..., K, d, r)
        factors.append(f.transpose(-3, -2).reshape(*f.shape[:-3], d, -1))
    factor = torch.cat(factors, -1)
    factor = factor.reshape(*batch, d, factor.shape[-1]) * inflation.sqrt()[..., None, None]
    diag = (w * scale.pow(2)).sum(-2).reshape(*batch, d) * inflation[..., None]
    return dist.LowRankMultivariateNormal(anomaly_loc, factor, diag)


def component_table(
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    covariance: Covariance,
    broad: dist.TorchDistribution,
    anomaly_loc: torch.Tensor | None = None,
    anomaly_excess: torch.Tensor | None = None,
) -> torch.Tensor:
    """log density of every row under each normal component, then the anomaly component ``broad``: (..., n, K+1).

    With one full-covariance component and the inflated anomaly component, both share the
    component's Cholesky factor L (the anomaly's is ``sqrt(1 + anomaly_excess) L``), so the
    rows are whitened by one triangular solve, ``w = L⁻¹ x``, and both densities are read
    off it; otherwise each density is computed on its own.
    """
    loc = params["loc"]
    if covariance == "full" and loc.shape[-2] == 1 and anomaly_loc is not None and anomaly_excess is not None:
        return _one_factor_table(x, params, anomaly_loc, anomaly_excess)
    normal = normal_log_prob(x, params, covariance)
    return torch.cat([normal, broad.log_prob(x).expand(normal.shape[:-1]).unsqueeze(-1)], dim=-1)


def _one_factor_table(
    x: torch.Tensor, params: dict[str, torch.Tensor], anomaly_loc: torch.Tensor, anomaly_excess: torch.Tensor
) -> torch.Tensor:
    """:func:`component_table` for one full-covariance component and the inflated anomaly component."""
    loc = params["loc"].squeeze(-2)  # (..., d)
    batch, d = loc.shape[:-1], loc.shape[-1]
    tril = component_tril(params).squeeze(-3)  # (..., d, d)
    # w = L⁻¹(x − loc) and c = L⁻¹(anomaly_loc − loc): |w|² and |w − c|² = |w|² − 2 w·c + |c|².
    white = torch.linalg.solve_triangular(tril, x.transpose(-1, -2) - loc.unsqueeze(-1), upper=False)  # (..., d, n)
    shift = torch.linalg.solve_triangular(tril, (anomaly_loc.reshape(*batch, d) - loc).unsqueeze(-1), upper=False)
    normal = torch.linalg.vector_norm(white, dim=-2).pow(2)  # (..., n)
    cross = (shift.transpose(-1, -2) @ white).squeeze(-2)  # (..., n)
    anomaly = (normal - 2.0 * cross + shift.pow(2).sum((-2, -1)).unsqueeze(-1)).clamp(min=0.0)
    inflation = 1.0 + anomaly_excess.reshape(*batch, 1)
    maha = torch.stack([normal, anomaly / inflation], -1)
    log_inflation = torch.stack([torch.zeros_like(inflation), inflation.log()], -1)  # (..., 1, 2)
    half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)[..., None, None]
    return -0.5 * (maha + d * (math.log(2 * math.pi) + log_inflation)) - half_log_det


def model(
    x: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    hyper: dict[str, torch.Tensor],
    num_components: int,
    covariance: Covariance = "diag",
    rank: int = 2,
    marginal: bool = True,
    anomaly: AnomalyKind = "inflated",
) -> None:
    """Mixture of normal components and a broad anomaly component.

    Parameters
    ----------
    x : Tensor, shape (n_rows, n_features)
        Standardised rows.
    subsample : Tensor of int64, optional
        Rows of this minibatch (given by the SVI runner).
    hyper : dict of Tensor
        Prior hyperparameters (see :meth:`MixtureAnomalyDetector.fit`).
    num_components : int
        K, the normal components.
    covariance : {"diag", "full", "lowrank"}
    rank : int
        Factors of "lowrank".
    marginal : bool, default True
        Sum z out in the likelihood (True, for ``Trace_ELBO``) or sample it as
        an enumerated site ``z`` (False, for ``TraceEnum_ELBO``).
    anomaly : {"inflated", "student_t"}, default "inflated"
        The anomaly component (see :func:`anomaly_distribution`). "inflated"
        adds two global sites: ``anomaly_loc`` (its centre) and
        ``anomaly_excess`` (its covariance is ``1 + anomaly_excess`` times the
        normal part's).
    """
    K, d = num_components, x.shape[-1]
    frac = pyro.sample("anomaly_fraction", dist.Beta(hyper["frac_a"], hyper["frac_b"]))
    if K > 1:
        weights = pyro.sample("weights", dist.Dirichlet(x.new_ones(K)))
    else:
        weights = x.new_ones(1)
    with pyro.plate("component", K):
        params = _component_params(hyper, covariance, d, rank)
    log_weights = mixture_log_weights(frac, weights)
    a_loc = a_excess = None
    if anomaly == "inflated":
        a_loc = pyro.sample("anomaly_loc", dist.Normal(hyper["loc_center"].expand(d), hyper["loc_scale"]).to_event(1))
        a_excess = pyro.sample("anomaly_excess", dist.LogNormal(hyper["excess_center"], hyper["excess_sd"]))
    broad = anomaly_distribution(anomaly, hyper, params, weights, covariance, a_loc, a_excess)

    def table(v: torch.Tensor) -> torch.Tensor:
        return component_table(v, params, covariance, broad, a_loc, a_excess)

    with pyro.plate("row", x.shape[0], subsample=subsample, device=x.device) as idx:
        xi = x.index_select(0, idx)

        def draw(index: torch.Tensor) -> torch.Tensor:
            normal = _normal_sample(params, covariance, index.clamp(max=K - 1))
            return torch.where((index == K).unsqueeze(-1), broad.expand(index.shape).sample(), normal)

        shape = torch.broadcast_shapes(log_weights.shape[:-1], (len(idx),))
        if marginal:
            fn = ComponentMixture(table, draw, log_weights, shape, torch.Size([d]))
        else:
            z = pyro.sample("z", dist.Categorical(logits=log_weights), infer={"enumerate": "parallel"})
            fn = ComponentMixture(table, draw, log_weights, shape, torch.Size([d]), index=z)
        pyro.sample("x", fn, obs=xi)


def guide(
    x: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    hyper: dict[str, torch.Tensor],
    num_components: int,
    covariance: Covariance = "diag",
    rank: int = 2,
    marginal: bool = True,
    anomaly: AnomalyKind = "inflated",
    init: dict[str, torch.Tensor] | None = None,
) -> None:
    """Guide for :func:`model` (same signature, plus ``init``: starting values of its parameters by name).

    With ``latent_loc`` and ``latent_tril`` in ``init`` (from :func:`laplace_start`) it is
    structured: the global sites' unconstrained values, joined in the order of
    :func:`latent_sites`, are ``u = latent_loc + latent_tril w`` with
    ``w ~ Normal(latent_offset, latent_spread)`` (learnt, starting at 0 and 1), a
    multivariate normal that keeps the posterior correlations between the sites; each
    site's value is its part of ``u`` mapped to its support.

    Otherwise it is mean-field (a Beta, Dirichlet, Normal or LogNormal per site), its
    parameters starting at the values in ``init`` or the defaults below. A centre
    ``<name>`` given in ``init`` together with ``<name>_unit`` (a spread per element)
    is preconditioned: the guide learns ``<name>_offset`` and uses
    ``init[<name>] + init[<name>_unit] * offset``, so one optimiser step moves each
    element by about the learning rate in units of its starting spread, however
    different the sites' posterior widths are.
    """
    K, d = num_components, x.shape[-1]
    pos = constraints.positive
    init = init or {}
    if "latent_loc" in init:
        _structured_guide(x, init, K, covariance, rank, anomaly)
        return

    def param(name: str, default: Callable[[], torch.Tensor], **kw: Any) -> torch.Tensor:
        start, unit = init.get(name), init.get(f"{name}_unit")
        if start is not None and unit is not None:
            return start + unit * pyro.param(f"{name}_offset", lambda: torch.zeros_like(start))
        return pyro.param(name, default if start is None else (lambda: start.clone()), **kw)

    a = param("anomaly_fraction_a", lambda: hyper["frac_a"].clone(), constraint=pos)
    b = param("anomaly_fraction_b", lambda: hyper["frac_b"].clone(), constraint=pos)
    pyro.sample("anomaly_fraction", dist.Beta(a, b))
    if K > 1:
        conc = param("weights_concentration", lambda: x.new_full((K,), 10.0), constraint=pos)
        pyro.sample("weights", dist.Dirichlet(conc))
    if anomaly == "inflated":
        a_loc = param("anomaly_loc_loc", lambda: x.new_zeros(d))
        a_sd = param("anomaly_loc_scale", lambda: x.new_full((d,), 0.1), constraint=pos)
        pyro.sample("anomaly_loc", dist.Normal(a_loc, a_sd).to_event(1))
        e_loc = param("anomaly_excess_loc", lambda: hyper["excess_center"].clone())
        e_sd = param("anomaly_excess_scale", lambda: x.new_tensor(0.1), constraint=pos)
        pyro.sample("anomaly_excess", dist.LogNormal(e_loc, e_sd))
    with pyro.plate("component", K):
        loc = param("loc_loc", lambda: x.new_zeros(K, d))
        loc_sd = param("loc_scale", lambda: x.new_full((K, d), 0.1), constraint=pos)
        pyro.sample("loc", dist.Normal(loc, loc_sd).to_event(1))
        s_loc = param("scale_loc", lambda: x.new_full((K, d), math.log(0.7)))
        s_sd = param("scale_scale", lambda: x.new_full((K, d), 0.1), constraint=pos)
        pyro.sample("scale", dist.LogNormal(s_loc, s_sd).to_event(1))
        if covariance == "full":
            m = d * (d - 1) // 2
            c_loc = param("corr_tril_loc", lambda: x.new_zeros(K, m))
            c_sd = param("corr_tril_scale", lambda: x.new_full((K, m), 0.1), constraint=pos)
            base = dist.Normal(c_loc, c_sd).to_event(1)
            pyro.sample("corr_tril", dist.TransformedDistribution(base, biject_to(constraints.corr_cholesky)))
        elif covariance == "lowrank":
            f_loc = param("cov_factor_loc", lambda: 0.1 * torch.randn(K, d, rank, dtype=x.dtype, device=x.device))
            f_sd = param("cov_factor_scale", lambda: x.new_full((K, d, rank), 0.05), constraint=pos)
            pyro.sample("cov_factor", dist.Normal(f_loc, f_sd).to_event(2))


def _structured_guide(
    x: torch.Tensor, init: dict[str, torch.Tensor], K: int, covariance: Covariance, rank: int, anomaly: AnomalyKind
) -> None:
    """Multivariate normal over the global sites' joined unconstrained values (see :func:`guide`)."""
    m0, tril0 = init["latent_loc"], init["latent_tril"]
    offset = pyro.param("latent_offset", lambda: torch.zeros_like(m0))
    spread = pyro.param("latent_spread", lambda: torch.ones_like(m0), constraint=constraints.positive)
    # Whitened coordinates w (u = m0 + tril0 w) make each optimiser step a move in posterior sds, and make a
    # draw and its density a product with tril0 rather than a triangular solve.
    w = pyro.sample("_latent", dist.Normal(offset, spread).to_event(1), infer={"is_auxiliary": True})
    u = m0 + (tril0 @ w.unsqueeze(-1)).squeeze(-1)
    sites = latent_sites(K, x.shape[-1], covariance, rank, anomaly)
    parts = _split_latent(u, sites)
    component = pyro.plate("component", K)
    for name, _, in_plate in sites:
        transform = biject_to(_LATENT_SUPPORT[name])
        value = transform(parts[name])
        # q(value) = q(w) |dw / du| |du / dvalue|: the Deltas carry the log Jacobians of the inverse maps
        # (the constant one of w -> u with the first site).
        log_density = -transform.log_abs_det_jacobian(parts[name], value)
        if name == "anomaly_fraction":
            log_density = log_density - tril0.diagonal().log().sum()
        extra = log_density.dim() - (value.dim() - _EVENT_DIM[name])
        if extra > 0:
            log_density = log_density.sum(tuple(range(-extra, 0)))
        delta = dist.Delta(value, log_density=log_density, event_dim=_EVENT_DIM[name])
        if in_plate:
            with component:
                pyro.sample(name, delta)
        else:
            pyro.sample(name, delta)


def _lloyd(x: np.ndarray, centres: np.ndarray, iterations: int = 25, floor: float = 0.05) -> tuple[np.ndarray, ...]:
    """k-means (Lloyd's algorithm) from ``centres``: the final centres and each cluster's per-feature
    standard deviation (at least ``floor``; a cluster that empties keeps its centre and gets scale 1)."""
    centres, norms = centres.copy(), (x**2).sum(1)[:, None]
    for _ in range(iterations):
        sq = norms - 2 * x @ centres.T + (centres**2).sum(1)[None]
        label = np.argmin(sq, axis=1)
        moved = np.array([x[label == k].mean(0) if (label == k).any() else centres[k] for k in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    scales = np.array(
        [
            np.maximum(x[label == k].std(0), floor) if (label == k).sum() > 1 else np.ones(x.shape[1])
            for k in range(len(centres))
        ]
    )
    return centres, scales


def _lowrank_approx(cov: torch.Tensor, rank: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor`` (..., d, rank) and ``diag`` (..., d) with ``factor @ factor.T + diag(diag)`` close to ``cov``
    (the leading eigenvectors, and the rest of the diagonal)."""
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(-1)[..., :rank], vectors.flip(-1)[..., :rank].contiguous()
    factor = vectors * (values - floor).clamp(min=0.0).sqrt().unsqueeze(-2)
    return factor, (torch.diagonal(cov, dim1=-2, dim2=-1) - factor.pow(2).sum(-1)).clamp(min=floor)


def _component_moments(
    loc: torch.Tensor, cov: torch.Tensor, covariance: Covariance, rank: int, floor: float
) -> dict[str, torch.Tensor]:
    """The model's component parameters (``loc``, ``scale`` and ``corr_tril`` or ``cov_factor``) closest to
    the covariance matrices ``cov`` (K, d, d) that ``covariance`` can express."""
    if covariance == "lowrank":
        factor, diag = _lowrank_approx(cov, rank, floor)
        return {"loc": loc, "scale": diag.sqrt(), "cov_factor": factor.contiguous()}
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    params = {"loc": loc, "scale": sd}
    if covariance == "full":
        params["corr_tril"] = torch.linalg.cholesky(cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2)))
    return params


_AUTO_MAX_COMPONENTS = 6  # num_components="auto" compares K = 1..6


def _start_centres(x: np.ndarray, K: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Starting centres (K, d) of the normal components and, with several, their spreads (K, d).

    k-means++-style starts spread over the data (the row nearest the middle first), then, with several,
    Lloyd's iterations from them and each cluster's spread as its starting scale. Started on single rows
    at scale 0.7, several components can fit the data worse than the anomaly component (the whole normal
    part's covariance, inflated) at step 0 and then lose every row to it (on scikit-learn's digits with
    K = 3, 99% of the rows).
    """
    start = [int(np.argmin(np.abs(x).sum(1)))]
    for _ in range(1, K):
        dist2 = np.min(((x[:, None, :] - x[start][None]) ** 2).sum(-1), axis=1)
        dist2 = np.minimum(dist2, np.quantile(dist2, 0.9))  # do not start on an outlier
        start.append(int(rng.choice(len(x), p=dist2 / dist2.sum())))
    if K == 1:
        return x[start], None
    return _lloyd(x, x[start])


def _parameter_count(K: int, d: int, covariance: Covariance, rank: int, anomaly: AnomalyKind) -> int:
    """Free parameters of :func:`model` with K normal components (for the BIC)."""
    per_component = d + {"diag": d, "full": d * (d + 1) // 2, "lowrank": d + d * rank}[covariance]
    return K * per_component + (K - 1) + 1 + (d + 1 if anomaly == "inflated" else 0)


def _collapsed(share: float, one_component_share: float, prior: tuple[float, float]) -> bool:
    """Whether an anomaly share with several normal components has collapsed relative to one component's.

    True when it is below half the share one normal component leaves to the anomaly component, and that
    one-component share is itself credible (at most the prior's 99 % quantile; above it the anomaly
    component is taking whole modes of normal behaviour, which more components rightly take back).
    """
    from scipy import stats

    credible = one_component_share <= float(stats.beta.ppf(0.99, *prior))
    return credible and share < 0.5 * one_component_share


def em_start(
    x: np.ndarray,
    centres: np.ndarray,
    *,
    hyper: dict[str, float],
    covariance: Covariance,
    rank: int,
    anomaly: AnomalyKind,
    max_iterations: int = 300,
    tol: float = 1e-8,
    floor: float = 1e-6,
    scale_floor: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Maximum a posteriori fit of :func:`model` by expectation-maximisation: where the guide starts.

    Starts with every row in the normal component of its nearest centre, except
    the prior mean's share of the rows farthest from every centre, which start
    as anomalies. Each iteration sets the anomaly fraction (Beta prior), the
    weights, each component's mean and covariance (weighted moments, ``floor``
    and the squared ``scale_floor`` added to the variances, then the nearest
    parameters ``covariance`` allows),
    and for ``anomaly="inflated"`` the anomaly centre and inflation (the anomaly
    rows' mean squared Mahalanobis distance under the normal part's covariance,
    per feature); then the rows' responsibilities for the K + 1 components,
    from the model's own densities (:func:`normal_log_prob`,
    :func:`anomaly_distribution`, :func:`mixture_log_weights`) in float64. It
    stops when the log posterior changes by less than ``tol`` per row.

    Parameters
    ----------
    x : ndarray, shape (n, d)
        Standardised rows.
    centres : ndarray, shape (K, d)
        Starting centres of the normal components.
    hyper : dict of float
        ``frac_a``, ``frac_b``, ``anomaly_df``, ``anomaly_scale`` (as in :func:`model`).
    covariance, rank, anomaly
        As in :func:`model`.
    scale_floor : ndarray, shape (d,), optional
        The features' rounding error (``hyper["scale_floor"]`` of :func:`model`); the
        returned ``scale_loc`` is the scale without it.

    Returns
    -------
    dict of ndarray
        The guide's centres at that fit, keyed by its parameter names (the Beta's
        and Dirichlet's concentrations from the expected counts; log scales;
        unconstrained correlations), plus ``responsibility`` (n, K + 1),
        ``iterations`` and ``log_likelihood`` (the rows' summed log-likelihood at the fit).
        :func:`laplace_start` takes it from there.
    """
    xt = torch.as_tensor(x, dtype=torch.float64)
    n, d = xt.shape
    K = len(centres)
    a0, b0 = float(hyper["frac_a"]), float(hyper["frac_b"])
    hyper_t = {k: xt.new_tensor(float(v)) for k, v in hyper.items()}
    sq = torch.cdist(xt, torch.as_tensor(centres, dtype=torch.float64)).pow(2)
    resp = xt.new_zeros(n, K + 1)
    resp[torch.arange(n), sq.argmin(1)] = 1.0
    far = torch.argsort(sq.min(1).values, descending=True)[: max(int(a0 / (a0 + b0) * n), 2)]
    resp[far] = torch.eye(K + 1, dtype=torch.float64)[K]
    a_loc, excess, previous, it = None, None, -math.inf, 0
    rounding = torch.zeros(d, dtype=torch.float64) if scale_floor is None else torch.as_tensor(scale_floor).double()
    jitter = floor * torch.eye(d, dtype=torch.float64) + torch.diag(rounding.square())
    for it in range(1, max_iterations + 1):  # noqa: B007
        counts = resp.sum(0) + 1e-9
        frac = ((counts[K] + a0 - 1) / (n + a0 + b0 - 2)).clamp(1e-6, 1 - 1e-6)
        weights = counts[:K] / counts[:K].sum()
        loc = resp[:, :K].T @ xt / counts[:K, None]
        centred = xt.unsqueeze(0) - loc.unsqueeze(1)  # (K, n, d)
        cov = torch.einsum("nk,kni,knj->kij", resp[:, :K], centred, centred) / counts[:K, None, None] + jitter
        params = _component_moments(loc, cov, covariance, rank, floor)
        if anomaly == "inflated":
            a_loc = resp[:, K] @ xt / counts[K]
            spread = anomaly_distribution(anomaly, hyper_t, params, weights, covariance, a_loc, xt.new_tensor(0.0))
            maha = -2.0 * (spread.log_prob(xt) - spread.log_prob(a_loc))  # squared Mahalanobis distances
            excess = (resp[:, K] @ maha / (d * counts[K]) - 1.0).clamp(min=0.05)
        broad = anomaly_distribution(anomaly, hyper_t, params, weights, covariance, a_loc, excess)
        joint = component_table(xt, params, covariance, broad, a_loc, excess)
        joint = joint + mixture_log_weights(frac, weights)
        norm = torch.logsumexp(joint, -1)
        resp = (joint - norm.unsqueeze(-1)).exp()
        objective = float(norm.sum() + (a0 - 1) * frac.log() + (b0 - 1) * torch.log1p(-frac))
        if abs(objective - previous) < tol * n:
            break
        previous = objective
    counts = resp.sum(0)
    # The model's parameters describe the spread beyond the rounding error (which it adds back).
    start = _component_moments(loc, cov - torch.diag(rounding.square()), covariance, rank, floor)
    out = {
        "responsibility": resp,
        "iterations": torch.tensor(it),
        "log_likelihood": norm.sum(),
        "anomaly_fraction_a": a0 + counts[K],
        "anomaly_fraction_b": b0 + n - counts[K],
        "loc_loc": start["loc"],
        "scale_loc": start["scale"].log(),
    }
    if K > 1:
        out["weights_concentration"] = 1.0 + counts[:K]
    if covariance == "full":
        out["corr_tril_loc"] = biject_to(constraints.corr_cholesky).inv(start["corr_tril"])
    elif covariance == "lowrank":
        out["cov_factor_loc"] = start["cov_factor"]
    if anomaly == "inflated":
        out["anomaly_loc_loc"], out["anomaly_excess_loc"] = a_loc, excess.log()
    return {k: v.numpy() for k, v in out.items()}


_GUIDE_LOCS = {
    "loc": "loc_loc",
    "scale": "scale_loc",
    "corr_tril": "corr_tril_loc",
    "cov_factor": "cov_factor_loc",
    "anomaly_loc": "anomaly_loc_loc",
    "anomaly_excess": "anomaly_excess_loc",
}


_LATENT_SUPPORT = {"anomaly_fraction": constraints.unit_interval, "weights": constraints.simplex, **_SITE_SUPPORT}
_EVENT_DIM = {
    "anomaly_fraction": 0,
    "weights": 1,
    "loc": 1,
    "scale": 1,
    "corr_tril": 2,
    "cov_factor": 2,
    "anomaly_loc": 1,
    "anomaly_excess": 0,
}


def latent_sites(
    num_components: int, d: int, covariance: Covariance, rank: int, anomaly: AnomalyKind
) -> list[tuple[str, tuple[int, ...], bool]]:
    """The global sites of :func:`model` in its order: (name, shape of the unconstrained value, in the component
    plate). Their unconstrained values, flattened and joined in this order, make the structured guide's vector."""
    K = num_components
    sites: list[tuple[str, tuple[int, ...], bool]] = [("anomaly_fraction", (), False)]
    if K > 1:
        sites.append(("weights", (K - 1,), False))
    sites += [("loc", (K, d), True), ("scale", (K, d), True)]
    if covariance == "full":
        sites.append(("corr_tril", (K, d * (d - 1) // 2), True))
    elif covariance == "lowrank":
        sites.append(("cov_factor", (K, d, rank), True))
    if anomaly == "inflated":
        sites += [("anomaly_loc", (d,), False), ("anomaly_excess", (), False)]
    return sites


def _split_latent(u: torch.Tensor, sites: list[tuple[str, tuple[int, ...], bool]]) -> dict[str, torch.Tensor]:
    """Unconstrained values by site from the joined vector ``u`` (..., D); a component-plate site's values take
    the plate's place (the last batch dim, size 1 or absent)."""
    out, start = {}, 0
    batch = u.shape[:-1]
    for name, shape, in_plate in sites:
        size = math.prod(shape)
        piece = u[..., start : start + size]
        start += size
        out[name] = piece.reshape((*batch[:-1], *shape) if in_plate and batch else (*batch, *shape))
    return out


def _energy_or_inf(energy: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> float:
    """``energy(v)``, or infinity where ``v`` gives a normal part whose covariance is not positive definite
    (a trial step too long: the mixture of several components can be singular there)."""
    try:
        return float(energy(v))
    except (torch.linalg.LinAlgError, ValueError):
        return math.inf


def laplace_start(
    x: torch.Tensor,
    start: dict[str, torch.Tensor],
    model_kwargs: dict[str, Any],
    *,
    subsample: torch.Tensor | None = None,
    hessian_subsample: torch.Tensor | None = None,
    max_iterations: int = 200,
    chunk: int = 64,
) -> tuple[dict[str, torch.Tensor], int]:
    """Laplace approximation of :func:`model`'s posterior in its unconstrained coordinates, from ``start``.

    Every global site (the fraction and weights too) is mapped to its unconstrained
    coordinates (``biject_to`` of its support, as NUTS uses) and joined into one
    vector in the order of :func:`latent_sites`. L-BFGS (at most ``max_iterations``)
    approaches the mode of the log density there (the prior, the likelihood and the
    log Jacobian of the change of variables); the Hessian H of the negative log
    density where it stops (exact, by batched double backward) gives one Newton
    step towards the mode and the covariance H⁻¹ (eigenvalues taken by size, so a
    direction not yet at the mode still gets a positive variance).

    Parameters
    ----------
    x : Tensor, shape (n_rows, n_features)
        Standardised rows.
    start : dict of Tensor
        The guide's centres by name, as :func:`em_start` returns them.
    model_kwargs : dict
        Keyword arguments of :func:`model` (``hyper``, ``num_components``, ...).
    subsample : Tensor of int64, optional
        Rows of ``x`` that stand for all of them (their log-likelihood is scaled up by
        ``n_rows / len(subsample)``, as in the model's row plate).
    hessian_subsample : Tensor of int64, optional
        Rows whose Hessian, scaled up the same way, stands for all of them (default:
        ``subsample``): its cost grows with rows × parameters.

    Returns
    -------
    (dict of Tensor, int)
        ``latent_loc`` (D,), the mode, and ``latent_tril`` (D, D), the Cholesky factor of
        the covariance, in ``x``'s dtype; and the L-BFGS iterations.
    """
    from pyro.infer.autoguide import init_to_value
    from pyro.infer.mcmc.util import initialize_model

    kwargs = {**model_kwargs, "marginal": True}
    sites = latent_sites(
        int(kwargs["num_components"]), x.shape[-1], kwargs["covariance"], int(kwargs["rank"]), kwargs["anomaly"]
    )
    a, b = start["anomaly_fraction_a"], start["anomaly_fraction_b"]
    values: dict[str, torch.Tensor] = {"anomaly_fraction": a / (a + b)}
    if "weights_concentration" in start:
        values["weights"] = start["weights_concentration"] / start["weights_concentration"].sum()
    for site, name in _GUIDE_LOCS.items():
        if name in start:
            values[site] = biject_to(_SITE_SUPPORT[site])(start[name])
    _, potential_fn, transforms, _ = initialize_model(
        model, model_args=(x, subsample), model_kwargs=kwargs, init_strategy=init_to_value(values=values)
    )
    hessian_fn = potential_fn
    if hessian_subsample is not None:
        hessian_fn = initialize_model(
            model, model_args=(x, hessian_subsample), model_kwargs=kwargs, init_strategy=init_to_value(values=values)
        )[1]

    def energy(v: torch.Tensor, fn: Callable = potential_fn) -> torch.Tensor:
        return fn(_split_latent(v, sites))

    u = torch.cat([transforms[name](values[name]).reshape(-1) for name, _, _ in sites]).detach()
    before = u.clone()
    u.requires_grad_()
    opt = torch.optim.LBFGS(
        [u],
        max_iter=max_iterations,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = energy(u)
        value.backward()
        return value

    opt.step(closure)
    iterations = int(opt.state[u].get("n_iter", 0))
    u = u.detach()
    if not (torch.isfinite(u).all() and torch.isfinite(energy(u))):
        u = before
    u.requires_grad_()
    value = energy(u)
    full_grad = torch.autograd.grad(value, u)[0]
    grad = torch.autograd.grad(energy(u, hessian_fn), u, create_graph=True)[0]
    eye = torch.eye(len(u), dtype=u.dtype, device=u.device)
    # Hessian-vector products, a chunk of basis vectors at a time (in x's dtype: float32 changes the sds by
    # about 1e-4 against float64 on the breast-cancer spec), then the decomposition in float64.
    hessian = torch.cat(
        [
            torch.autograd.grad(grad, u, grad_outputs=eye[i : i + chunk], is_grads_batched=True, retain_graph=True)[0]
            for i in range(0, len(u), chunk)
        ]
    ).double()
    curvature, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.T))
    # A direction where the optimiser stopped short of the mode (curving down or flat) keeps its curvature's size.
    curvature = curvature.abs().clamp(min=float(curvature.abs().max()) * 1e-10)
    # One Newton step from where L-BFGS stopped, halved until it lowers the energy.
    with torch.no_grad():
        g = full_grad.double()
        step = (vectors @ ((vectors.T @ g) / curvature)).to(u.dtype)
        for _ in range(6):
            moved = u.detach() - step
            if torch.isfinite(moved).all() and _energy_or_inf(energy, moved) < value:
                u = moved
                break
            step = step / 2
    cov = (vectors / curvature) @ vectors.T
    tril = torch.linalg.cholesky(0.5 * (cov + cov.T))
    return {"latent_loc": u.detach(), "latent_tril": tril.to(u.dtype)}, iterations


# ----------------------------------------------------------------- estimator
def binary_labels(y: Any, n_rows: int, what: str = "y") -> np.ndarray:
    """``y`` as floats 0.0/1.0 (1 = anomaly), one per row, both classes present; else a clear error.

    Accepts bools, 0/1 numbers, and object arrays of them (what pandas reads from a
    True/False column with blanks, once the blanks are dropped).
    """
    labels = check_labels(y, n_rows, what)
    if labels.dtype.kind == "O" and all(isinstance(v, bool | np.bool_ | int | float | np.number) for v in labels):
        labels = labels.astype(float)
    values = np.unique(labels)
    if labels.dtype.kind not in "biuf" or not set(values.tolist()) <= {0, 1}:
        raise ValueError(f"{what} must be 1/True (anomaly) or 0/False (normal), got values {values[:10].tolist()}")
    if len(values) < 2:
        raise ValueError(f"{what} has only {'anomalies' if values[0] else 'normal rows'}; calibrating needs both")
    return labels.astype(float)


def platt_scaling(log_odds: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of ``P(label = 1) = sigmoid(slope · log_odds + intercept)`` (Platt 1999).

    Maximum likelihood with Platt's smoothed targets ((n₁ + 1) / (n₁ + 2) for
    the 1s, 1 / (n₀ + 2) for the 0s), which keeps the fit finite when the
    labelled rows are perfectly separated, as a handful of them often are.
    """
    from scipy.optimize import minimize
    from scipy.special import log_expit

    z = np.asarray(log_odds, dtype=float)
    y = np.asarray(labels, dtype=float)
    n1, n0 = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    centre, spread = z.mean(), max(z.std(), 1e-6)
    u = (z - centre) / spread  # well-conditioned: the log-odds may span hundreds

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        eta = w[0] * u + w[1]
        value = -(t * log_expit(eta) + (1 - t) * log_expit(-eta)).sum()
        r = np.exp(log_expit(eta)) - t
        return float(value), np.array([(r * u).sum(), r.sum()])

    w = minimize(loss, np.zeros(2), jac=True, method="BFGS").x
    slope = w[0] / spread
    return float(slope), float(w[1] - slope * centre)


class MixtureAnomalyDetector(BayesianEstimator):
    """Unsupervised anomaly detection with posterior anomaly probabilities.

    Parameters
    ----------
    num_components : int or "auto", default 1
        Gaussian components of normal behaviour (compare by LOO: ``to_arviz``
        stores the per-row log-likelihood). ``"auto"`` chooses K from 1 to 6
        on the EM start (the same at most 10,000 rows): the lowest BIC among
        the K whose anomaly share has not *collapsed*, that is fallen below
        half the share with K = 1 (a rule waived when the K = 1 share exceeds
        the prior's 99 % quantile, where the anomaly component takes whole
        modes); no K > 1 with as many free parameters as rows. The chosen K is
        ``num_components_``, the table behind it ``component_selection_``. BIC
        measures the density, not the ranking of anomalies: check a K above 1
        on labelled rows (docs/models/anomaly.md).
    covariance : {"diag", "full", "lowrank"}, default "full"
    rank : int, default 2
        Factors of "lowrank".
    anomaly : {"inflated", "student_t"}, default "inflated"
        The anomaly component: a Gaussian with a learnt centre and a learnt
        multiple (> 1) of the normal part's overall covariance, or a fixed
        Student-t (a saved file that records no ``anomaly`` loads with it).
    anomaly_prior : (float, float), default (1.0, 19.0)
        Beta prior on the anomaly fraction (mean 5 %).
    anomaly_scale : float, default 3.0
        Scale of the "student_t" anomaly component (3 degrees of freedom), in
        standardised units; unused by "inflated".
    enumerate : bool, default False
        Enumerate the assignment with ``TraceEnum_ELBO`` instead of summing it
        out in the likelihood with ``Trace_ELBO`` (same ELBO, both tested).
    init : {"em", "kmeans"}, default "em"
        Where the guide starts, and its shape. "em": the maximum a posteriori
        fit found by expectation-maximisation (:func:`em_start`), then the
        Laplace approximation from there (:func:`laplace_start`: L-BFGS on the
        same at most 10,000 rows, the Hessian on at most 1,000, in the
        unconstrained coordinates), which starts a multivariate normal guide over every global
        parameter that SVI only refines. "kmeans": a mean-field guide with the
        components' centres (and, with several, spreads) from k-means,
        everything else at fixed defaults.
    num_steps : int, default 300
        With ``init="em"`` the guide starts near its optimum and SVI only
        refines it; from ``init="kmeans"``, give it 1500 or more.
    learning_rate : float, default 0.05
    lr_schedule : {"exponential", "cosine"} or None, default "cosine"
    final_lr_factor : float, default 0.01
        1.0 keeps the learning rate constant: with a decaying rate the loss keeps falling as the steps'
        jitter about the optimum shrinks, which the convergence rule reads as still improving.
    num_particles : int, default 1
        Guide draws per ELBO estimate (vectorised); more make each step's gradient less noisy.
    batch_size : int or None, default 4096
        Rows per minibatch for tables with more rows (None: all rows every step).
    average_last : int, default 100
    num_samples : int, default 100
        Guide draws averaged in ``predict_proba`` and ``score_samples``.
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    num_threads : int, "auto" or None, default "auto"
        torch's CPU threads while fitting by SVI, the caller's count restored after: "auto" keeps a count
        you set (``OMP_NUM_THREADS``, ``torch.set_num_threads``) and otherwise uses one thread for a
        small step and the idle physical cores for a large one (:func:`bayesgen.infer.run_svi`); an int
        also applies to this estimator's other methods.
    seed : int, default 0
    progress : bool, default False

    Notes
    -----
    The inflated component learns where unusual rows are, so on multi-modal
    data it can take whole modes. Several normal components start from k-means
    clusters (Lloyd's algorithm from k-means++ starts; each cluster's spread as
    the starting scales): on scikit-learn's digits (10 classes, constant pixels
    dropped, defaults, seed 0) the anomaly component takes 4 % of the rows with
    one component and 4 % with three (benchmarks/RESULTS.md). ``fit`` warns
    when it takes more than half the rows (as on mlbench's Pima table, 53 %,
    where it still ranks the labelled rows best).

    The opposite failure: extra normal components take the rows that one
    component calls anomalous (small clusters of anomalies are, to the model,
    small modes of normal behaviour), and the anomaly component collapses.
    ``fit`` warns when the anomaly fraction's 94 % interval lies below its
    prior's 5 % quantile, and, with K > 1, when the anomaly share is below
    half of a K = 1 EM start's (an extra EM fit, on at most 10,000 rows).
    ``num_components="auto"`` refuses such a K.

    The probabilities are calibrated *for the model's notion of an anomaly*:
    on data drawn from it they match the true posterior (tested). Labels
    from elsewhere (a disease, a fault class) need not mean "unusual"; with a
    few labelled rows, :meth:`calibrate` maps the probability onto them.

    Attributes
    ----------
    feature_names_ : list of str
    fitted_on_frame_ : bool
        Fitted on a DataFrame: new DataFrames are matched to ``feature_names_``
        by column name (in any order); otherwise columns are taken by position.
    calibration_ : dict or None
        Set by :meth:`calibrate`: ``slope``, ``intercept``, ``rows``, ``anomalies``.
    num_components_ : int
        The normal components fitted (``num_components``, or the one ``"auto"`` chose).
    component_selection_ : DataFrame or None
        With ``num_components="auto"``: one row per K (``log_likelihood``, ``parameters``,
        ``bic``, ``anomaly_share``, ``collapsed``, ``chosen``); otherwise None (and after ``load``).
    losses_, converged_, n_steps_

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(size=(300, 2)), rng.uniform(-8, 8, size=(15, 2))])
    >>> det = MixtureAnomalyDetector(num_steps=300, seed=0).fit(X)
    >>> det.predict(X).sum() > 5
    np.True_
    """

    _model_name = "anomaly"

    def __init__(
        self,
        *,
        num_components: int = 1,
        covariance: Covariance = "full",
        rank: int = 2,
        anomaly: AnomalyKind = "inflated",
        anomaly_prior: tuple[float, float] = (1.0, 19.0),
        anomaly_scale: float = 3.0,
        enumerate: bool = False,
        init: Literal["em", "kmeans"] = "em",
        num_steps: int = 300,
        learning_rate: float = 0.05,
        lr_schedule: Literal["exponential", "cosine"] | None = "cosine",
        final_lr_factor: float = 0.01,
        num_particles: int = 1,
        batch_size: int | None = 4096,
        average_last: int = 100,
        num_samples: int = 100,
        device: DeviceLike = "auto",
        num_threads: int | Literal["auto"] | None = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.num_components = num_components
        self.covariance = covariance
        self.rank = rank
        self.anomaly = anomaly
        self.anomaly_prior = anomaly_prior
        self.anomaly_scale = anomaly_scale
        self.enumerate = enumerate
        self.init = init
        self.num_steps = num_steps
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.final_lr_factor = final_lr_factor
        self.num_particles = num_particles
        self.batch_size = batch_size
        self.average_last = average_last
        self.num_samples = num_samples
        self.device = device
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress

    _max_plate_nesting = 1

    @property
    def loss(self) -> str:
        return "trace_enum" if self.enumerate else "trace"

    # ------------------------------------------------------------- input
    def _validate_settings(self) -> None:
        if self.covariance not in ("diag", "full", "lowrank"):
            raise ValueError(f"covariance must be 'diag', 'full' or 'lowrank', got {self.covariance!r}")
        if self.anomaly not in ("inflated", "student_t"):
            raise ValueError(f"anomaly must be 'inflated' or 'student_t', got {self.anomaly!r}")
        if self.init not in ("em", "kmeans"):
            raise ValueError(f"init must be 'em' or 'kmeans', got {self.init!r}")
        super()._validate_settings()  # shared settings and device
        if not (isinstance(self.num_components, str) and self.num_components == "auto"):
            check_count(self.num_components, "num_components")
        check_count(self.rank, "rank")
        prior = self.anomaly_prior
        if isinstance(prior, str) or not hasattr(prior, "__len__") or len(prior) != 2:
            raise ValueError(f"anomaly_prior must be two positive numbers (a, b) of a Beta prior; got {prior!r}")
        for v in prior:
            check_real(v, "anomaly_prior", low=0.0)
        check_real(self.anomaly_scale, "anomaly_scale", low=0.0)
        check_flag(self.enumerate, "enumerate")

    def _check_new_x(self, X: Any) -> torch.Tensor:
        if isinstance(X, pd.DataFrame) and self.fitted_on_frame_:
            # Fitted on named columns: match new columns by name, never by position.
            X = match_columns(X, [str(c) for c in self.feature_names_], "the columns the detector was fitted on")
        arr, _ = as_feature_matrix(X)
        if arr.shape[1] != len(self.feature_names_):
            raise ValueError(
                f"X has {arr.shape[1]} columns; the detector was fitted on {len(self.feature_names_)} "
                f"({self.feature_names_[:10]})"
            )
        return torch.as_tensor((arr - self._shift) / self._scale, dtype=torch.get_default_dtype(), device=self.device_)

    # --------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        *,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> MixtureAnomalyDetector:
        """Fit the mixture to unlabelled rows.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features), or a DataFrame of numeric columns
        checkpoint, checkpoint_every, resume, distributed
            See :func:`bayesgen.infer.run_svi`; ``distributed=True`` fits data-parallel under ``torchrun``
            (``batch_size`` rows per rank).

        Returns
        -------
        MixtureAnomalyDetector
        """
        self._validate_settings()
        self.calibration_ = None  # a refit needs new labels
        self._ppc_reference = None  # the predictive check's centre and covariance are the new rows'
        arr, names = as_feature_matrix(X)
        self._check_table(arr, names)
        n = arr.shape[0]
        self.feature_names_ = names
        self.fitted_on_frame_ = isinstance(X, pd.DataFrame)
        self._x = torch.as_tensor(self._standardise(arr, names), dtype=torch.get_default_dtype(), device=self.device_)
        self._hyper = self._hyperparameters()
        x_np = self._x.cpu().numpy()
        self.component_selection_ = None
        if self.num_components == "auto":
            self.component_selection_ = self._select_components(x_np)
            self.num_components_ = int(self.component_selection_.index[self.component_selection_["chosen"]][0])
        else:
            self.num_components_ = int(self.num_components)
        self._place_start(x_np)
        minibatch = self.batch_size is not None and int(self.batch_size) < n
        self._run_svi(
            self._x,
            data_size=n if minibatch else None,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            distributed=distributed,
            **self._kwargs(),
        )
        self._warn_on_anomaly_share(x_np)
        return self

    def _check_table(self, arr: np.ndarray, names: list[str]) -> None:
        """Refuse a table this model cannot fit: too few rows, constant columns, settings it cannot hold."""
        n, d = arr.shape
        if n <= d:
            raise ValueError(f"X has {n} rows and {d} features; need more rows than features")
        sd = arr.std(axis=0)
        if (sd <= 1e-12 * (1 + np.abs(arr).max(axis=0))).any():
            bad = [names[j] for j in np.nonzero(sd <= 1e-12 * (1 + np.abs(arr).max(axis=0)))[0]]
            raise ValueError(f"columns {bad[:10]} are constant; drop them")
        if self.covariance == "full" and d < 2:
            raise ValueError("covariance='full' needs at least 2 features; with one feature use covariance='diag'")
        if self.covariance == "lowrank" and int(self.rank) >= d:
            raise ValueError(f"rank={self.rank} must be below the {d} features")
        if self.num_components != "auto" and int(self.num_components) * 2 > n:
            raise ValueError(f"num_components={self.num_components} is too many for {n} rows")

    def _standardise(self, arr: np.ndarray, names: list[str]) -> np.ndarray:
        """Rows standardised by median and MAD (anomalies should not set the scale); keeps the shift and scale."""
        sd = arr.std(axis=0)
        self._shift = np.median(arr, axis=0)
        mad = np.median(np.abs(arr - self._shift), axis=0) * 1.4826
        self._scale = np.where(mad > 1e-9 * sd, mad, sd)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (arr - self._shift) / self._scale
        if not (np.isfinite(self._scale).all() and np.isfinite(z).all()):
            bad = [names[j] for j in np.nonzero(~(np.isfinite(self._scale) & np.isfinite(z).all(axis=0)))[0]]
            raise ValueError(f"columns {bad[:10]} have values too large to standardise (overflow); rescale them")
        self._scale_floor = resolution_floor(arr, self._scale)
        return z

    def _hyperparameters(self) -> dict[str, torch.Tensor]:
        """The prior's hyperparameters, as tensors on the data's device and dtype."""
        t = self._x.new_tensor
        a, b = (float(v) for v in self.anomaly_prior)
        hyper = {
            "frac_a": t(a),
            "frac_b": t(b),
            "loc_center": t(0.0),
            "loc_scale": t(3.0),
            "log_scale_center": t(0.0),
            "log_scale_sd": t(1.0),
            "lkj_concentration": t(1.0),
            "factor_scale": t(0.5),
            "anomaly_df": t(3.0),
            "anomaly_scale": t(float(self.anomaly_scale)),
            "excess_center": t(math.log(4.0)),
            "excess_sd": t(1.5),
        }
        if (self._scale_floor > 0).any():  # decided once here, not on every step
            hyper["scale_floor"] = t(self._scale_floor)
        return hyper

    def _place_start(self, x_np: np.ndarray) -> None:
        """The guide's starting point (``self._init``): EM, then a Laplace approximation, or k-means centres."""
        n = len(x_np)
        a, b = (float(v) for v in self.anomaly_prior)
        K = self.num_components_
        rng = np.random.default_rng(self.seed)
        centres, scales = _start_centres(x_np, K, rng)
        as_tensor = functools.partial(torch.as_tensor, dtype=self._x.dtype, device=self.device_)
        if self.init == "em":
            # EM only finds the starting point: on a large table a random 10,000 rows place it as well.
            rows = rng.choice(n, _START_ROWS, replace=False) if n > _START_ROWS else slice(None)
            found = self._em(x_np[rows], centres)
            found["anomaly_fraction_a"] = (found["anomaly_fraction_a"] - a) * (n / len(x_np[rows])) + a
            found["anomaly_fraction_b"] = (found["anomaly_fraction_b"] - b) * (n / len(x_np[rows])) + b
            if "weights_concentration" in found:
                found["weights_concentration"] = (found["weights_concentration"] - 1) * (n / len(x_np[rows])) + 1
            self.em_iterations_ = int(found.pop("iterations"))
            found.pop("responsibility")
            found.pop("log_likelihood")
            subsample = torch.as_tensor(rows, device=self.device_) if n > _START_ROWS else None
            curvature_rows = None
            if n > _HESSIAN_ROWS:
                curvature_rows = torch.as_tensor(
                    np.sort(rng.choice(n, _HESSIAN_ROWS, replace=False)), device=self.device_
                )
            self._init, self.map_iterations_ = laplace_start(
                self._x,
                {k: as_tensor(v) for k, v in found.items()},
                self._kwargs(marginal=True),
                subsample=subsample,
                hessian_subsample=curvature_rows,
            )
        else:
            self.em_iterations_ = self.map_iterations_ = None
            self._init = {"loc_loc": as_tensor(centres)}
            if scales is not None:
                self._init["scale_loc"] = as_tensor(np.log(scales))

    def _warn_on_anomaly_share(self, x: np.ndarray) -> None:
        """Warn when the anomaly component took most rows, or collapsed (see :meth:`fit`'s Notes)."""
        from scipy import stats

        K, summary = self.num_components_, self.anomaly_fraction()
        frac, other = float(summary["mean"]), " or anomaly='student_t'" if self.anomaly == "inflated" else ""
        if frac > 0.5:
            warnings.warn(
                f"the anomaly component took {frac:.0%} of the rows, more than the normal part: normal behaviour "
                f"is probably multi-modal or far from Gaussian for num_components={K}; try more components "
                f"(compare fits with LOO via to_arviz){other}, and check the ranking you need on labelled rows",
                UserWarning,
                stacklevel=3,
            )
            return
        prior = (float(self.anomaly_prior[0]), float(self.anomaly_prior[1]))
        floor = float(stats.beta.ppf(0.05, *prior))
        if float(summary["high"]) < floor:
            warnings.warn(
                f"the anomaly fraction's posterior ({summary['ci_prob']:.0%} interval up to {summary['high']:.2%}) "
                f"lies below the 5% quantile ({floor:.2%}) of its prior Beta{prior}: the anomaly component has "
                f"collapsed with num_components={K}; use num_components='auto' or fewer components, or, if the "
                "data hold almost no anomalies, a prior with less mass on large fractions (anomaly_prior=(a, b) "
                "with a smaller mean a / (a + b))",
                UserWarning,
                stacklevel=3,
            )
        if K > 1:
            if self.component_selection_ is not None:
                one = float(self.component_selection_.loc[1, "anomaly_share"])
            else:
                one = float(self._em_for(x, 1)["responsibility"][:, -1].mean())
            if _collapsed(frac, one, prior):
                warnings.warn(
                    f"with num_components={K} the anomaly component takes {frac:.1%} of the rows, under half the "
                    f"{one:.1%} it takes with one normal component (EM start): the extra normal components have "
                    "absorbed the rows one component calls anomalous; use num_components='auto' (it refuses such "
                    "K) or fewer components, and check the ranking you need on labelled rows",
                    UserWarning,
                    stacklevel=3,
                )

    def _em(self, x: np.ndarray, centres: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """:func:`em_start` on standardised rows ``x`` with this estimator's settings (``options``: its own)."""
        return em_start(
            x.astype(float),
            centres,
            hyper={k: float(v) for k, v in self._hyper.items() if k != "scale_floor"},
            scale_floor=to_numpy(self._hyper["scale_floor"]) if "scale_floor" in self._hyper else None,
            covariance=self.covariance,
            rank=int(self.rank),
            anomaly=self.anomaly,
            **options,
        )

    def _em_for(self, x: np.ndarray, K: int, **options: Any) -> dict[str, np.ndarray]:
        """The EM fit ``fit`` starts from with K normal components (same starts, same rows)."""
        rng = np.random.default_rng(self.seed)
        centres, _ = _start_centres(x, K, rng)
        rows = rng.choice(len(x), _START_ROWS, replace=False) if len(x) > _START_ROWS else slice(None)
        return self._em(x[rows], centres, **options)

    def _select_components(self, x: np.ndarray) -> pd.DataFrame:
        """The table behind ``num_components="auto"``, indexed by K.

        For K = 1, ..., 6: the EM fit (:func:`em_start`) from the starts ``fit`` uses, on the same at most
        10,000 rows, stopped at 100 iterations or a change below 1e-6 per row (the BIC needs no more);
        its BIC; its anomaly share (the mean responsibility of the anomaly
        component); whether that share *collapsed* relative to K = 1's (see :func:`_collapsed`). The chosen
        K has the lowest BIC among the fits whose share did not collapse. A K > 1 with as many free
        parameters as rows is not tried (the BIC's approximation needs many more rows than parameters).
        """
        n, d = x.shape
        rows_used, prior = min(n, _START_ROWS), (float(self.anomaly_prior[0]), float(self.anomaly_prior[1]))
        records = []
        for K in range(1, min(_AUTO_MAX_COMPONENTS, n // 2) + 1):
            if K > 1 and _parameter_count(K, d, self.covariance, int(self.rank), self.anomaly) >= rows_used:
                break
            found = self._em_for(x, K, max_iterations=100, tol=1e-6)
            share = float(found["responsibility"][:, -1].mean())
            count = _parameter_count(K, d, self.covariance, int(self.rank), self.anomaly)
            loglik = float(found["log_likelihood"])
            collapsed = K > 1 and _collapsed(share, records[0]["anomaly_share"], prior)
            records.append(
                {
                    "num_components": K,
                    "log_likelihood": loglik,
                    "parameters": count,
                    "bic": -2.0 * loglik + count * math.log(rows_used),
                    "anomaly_share": share,
                    "collapsed": bool(collapsed),
                }
            )
        table = pd.DataFrame.from_records(records).set_index("num_components")
        allowed = table.loc[~table["collapsed"], "bic"]
        table["chosen"] = table.index == allowed.idxmin()
        return table

    def _kwargs(self, marginal: bool | None = None) -> dict[str, Any]:
        return {
            "hyper": self._hyper,
            "num_components": self.num_components_,
            "covariance": self.covariance,
            "rank": int(self.rank),
            "marginal": (not self.enumerate) if marginal is None else marginal,
            "anomaly": self.anomaly,
        }

    @property
    def params_(self) -> dict[str, Any]:
        """Fitted variational parameters (constrained), by the guide's names; a preconditioned centre
        (see :func:`guide`) is given as its value ``<name>``, not as the offset the optimiser moves."""
        out = BayesianEstimator.params_.fget(self)
        if "latent_loc" in self._init:
            return self._structured_params(out)
        for key in [k for k in out if k.endswith("_offset")]:
            name = key[: -len("_offset")]
            out[name] = to_numpy(
                self._init[name]
                + self._init[f"{name}_unit"]
                * torch.as_tensor(out.pop(key), dtype=self._init[name].dtype, device=self._init[name].device)
            )
        return out

    def _latent_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and Cholesky factor (D, D) of the structured guide's normal over the joined unconstrained
        values (see :func:`latent_sites`)."""
        from bayesgen.infer import param_scope

        with param_scope(self._param_state), torch.no_grad():
            store = pyro.get_param_store()
            offset, spread = store.get_param("latent_offset"), store.get_param("latent_spread")
        m0, tril0 = self._init["latent_loc"], self._init["latent_tril"]
        return m0 + tril0 @ offset, tril0 * spread  # the normal of u = m0 + tril0 w, w ~ N(offset, diag(spread²))

    def _structured_params(self, out: dict[str, Any]) -> dict[str, Any]:
        loc, tril = self._latent_moments()
        sd = tril.pow(2).sum(-1).sqrt()
        sites = latent_sites(
            self.num_components_, len(self.feature_names_), self.covariance, int(self.rank), self.anomaly
        )
        out = {"latent_loc": to_numpy(loc), "latent_scale_tril": to_numpy(tril), **out}
        for name, part in _split_latent(loc, sites).items():
            out[f"{name}_loc"] = to_numpy(part)
        for name, part in _split_latent(sd, sites).items():
            out[f"{name}_scale"] = to_numpy(part)
        return out

    def _model_and_guide(self, for_arviz: bool = False) -> tuple:
        m = config_enumerate(model) if self.enumerate and not for_arviz else model
        g = functools.partial(guide, init=getattr(self, "_init", None))
        functools.update_wrapper(g, guide)
        return m, g

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        # The bridge needs a per-row log-likelihood: always the marginalised model there.
        return (self._x,), self._kwargs(marginal=True if for_arviz else None)

    def _ppc_statistics(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """Every feature's mean and sd, and the median and 95th percentile of the rows' squared Mahalanobis
        distances from the observed rows' mean and covariance (standardised scale)."""
        if getattr(self, "_ppc_reference", None) is None:  # once per fit (reset by fit): it runs per replicate
            x = to_numpy(self._x).astype(float)
            cov = np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])
            self._ppc_reference = (x.mean(axis=0), np.linalg.cholesky(cov))
        centre, tril = self._ppc_reference
        x = data["x"]
        out = {}
        for j, name in enumerate(self.feature_names_):
            out[f"mean[{name}]"] = float(x[:, j].mean())
            out[f"sd[{name}]"] = float(x[:, j].std())
        d2 = (np.linalg.solve(tril, (x - centre).T) ** 2).sum(axis=0)
        out["mahalanobis²[median]"] = float(np.median(d2))
        out["mahalanobis²[95%]"] = float(np.quantile(d2, 0.95))
        return out

    def _khat_advice(self, latent_size: int) -> str | None:
        """Why the mixture's joint k-hat is high, and how to cross-check the fit."""
        size = (
            f"it covers {latent_size:,} latent numbers, past the {self._nuts_max_latents:,} NUTS is offered for"
            if latent_size > self._nuts_max_latents
            else f"it covers {latent_size:,} latent numbers"
        )
        return (
            "The guide covers one mode of the mixture's posterior; the posterior also has one where the anomaly "
            f"component copies a normal one, which no single Gaussian guide covers, and {size}. The reference check "
            "says what the guide matched against NUTS on a few columns. To cross-check on your data, fit the "
            "detector on a few of its columns and call nuts_check(); each row's P(anomaly) is the model's, and "
            "calibrate() with labelled rows turns it into the probability of your labels."
        )

    def _reference_moments(self) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
        """No site of a mixture has a closed-form posterior; each site's reason says what NUTS found."""
        second_mode = (
            "the posterior also has a mode where the anomaly component copies the normal one "
            "(anomaly_excess near 0), which the guide does not cover"
        )
        if "latent_loc" in self._init:
            component = anomaly = (
                "no closed form (a mixture); the multivariate normal guide matched NUTS on six "
                "breast-cancer columns (every mean within 0.25 NUTS sd, every sd within 20 %), "
                f"and {second_mode}: compare with nuts_check on a few columns "
                "(benchmarks/RESULTS.md)"
            )
        else:
            component = (
                "no closed form (a mixture); the mean-field guide (init='kmeans') understates the posterior "
                "sd of what the rows correlate (each component's means and scales; its means agree with "
                "NUTS): compare with nuts_check on a few columns (benchmarks/RESULTS.md)"
            )
            anomaly = (
                "no closed form (a mixture); the mean-field guide (init='kmeans') understates the posterior "
                f"sd of the anomaly fraction and centre, and {second_mode}: compare with nuts_check on a few "
                "columns (benchmarks/RESULTS.md)"
            )
        reasons = {
            "loc": component,
            "scale": component,
            "corr_tril": component,
            "cov_factor": component,
            "weights": component,
            "anomaly_fraction": anomaly,
            "anomaly_excess": anomaly,
            "anomaly_loc": anomaly,
        }
        return {}, {name: reasons.get(name, component) for name in self._global_sites()}

    def _arviz_dims(self) -> tuple[dict, dict]:
        dims = {
            "loc": ["component", "feature"],
            "scale": ["component", "feature"],
            "x": ["row", "feature"],
            "weights": ["component"],
            "anomaly_loc": ["feature"],
            "corr_tril": ["component", "feature", "feature_bis"],
            "cov_factor": ["component", "feature", "factor"],
        }
        return dims, {
            "feature": self.feature_names_,
            "feature_bis": self.feature_names_,
            "component": np.arange(self.num_components_),
        }

    # ------------------------------------------------------------- draws
    def _draws(self, num: int | None, seed: int | None) -> dict[str, torch.Tensor]:
        """``num`` guide draws of the parameters (None: the estimator's ``num_samples``)."""
        from bayesgen.arviz import draw_guide
        from bayesgen.infer import param_scope

        num = check_count(self.num_samples if num is None else num, "num_samples")
        with param_scope(self._param_state), seeded(self._method_seed(seed), self.device_):
            out = draw_guide(
                self._model_and_guide()[1],
                self._x[:2],
                num_samples=num,
                max_plate_nesting=self._max_plate_nesting,
                **self._kwargs(marginal=True),
            )
        out.pop("_latent", None)
        K = self.num_components_
        out["anomaly_fraction"] = out["anomaly_fraction"].reshape(num, 1)
        out["weights"] = out["weights"].reshape(num, 1, K) if K > 1 else torch.ones(num, 1, 1, device=self.device_)
        if self.anomaly == "inflated":
            out["anomaly_loc"] = out["anomaly_loc"].reshape(num, 1, -1)
            out["anomaly_excess"] = out["anomaly_excess"].reshape(num, 1)
        return out

    def _tables(self, x: torch.Tensor, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log weights (S, 1, K+1), component log-densities (S, n, K+1)) per draw."""
        frac = draws["anomaly_fraction"]  # (S, 1)
        weights = draws["weights"]  # (S, 1, K)
        params = {k: v for k, v in draws.items() if k in ("loc", "scale", "corr_tril", "cov_factor")}
        if "scale_floor" in self._hyper:
            params["scale_floor"] = self._hyper["scale_floor"]
        a_loc, a_excess = draws.get("anomaly_loc"), draws.get("anomaly_excess")
        broad = anomaly_distribution(self.anomaly, self._hyper, params, weights, self.covariance, a_loc, a_excess)
        # Rows in blocks, so the working memory does not grow with rows x draws x features.
        blocks = row_chunks(x, frac.shape[0] * (weights.shape[-1] + 1))
        table = torch.cat([component_table(xb, params, self.covariance, broad, a_loc, a_excess) for xb in blocks], -2)
        return mixture_log_weights(frac, weights), table

    # -------------------------------------------------------------- verbs
    def _log_odds(self, X: Any, num_samples: int | None, seed: int | None) -> np.ndarray:
        """Log-odds of the anomaly component for each draw of θ, shape (num_samples, n_rows), float64."""
        self._check_fitted()
        x = self._check_new_x(X)
        draws = self._draws(num_samples, seed)
        with torch.no_grad():
            log_w, table = self._tables(x, draws)
            joint = table.double() + log_w.double()
            log_odds = joint[..., -1] - torch.logsumexp(joint[..., :-1], -1)
        return to_numpy(log_odds)

    @staticmethod
    def _mean_log_odds(log_odds: np.ndarray) -> np.ndarray:
        """Log-odds of the probability averaged over the draws (exact near 0 and 1, where float32 rounds)."""
        lo = torch.from_numpy(np.asarray(log_odds, dtype=np.float64))
        log_sigmoid = torch.nn.functional.logsigmoid
        return (torch.logsumexp(log_sigmoid(lo), 0) - torch.logsumexp(log_sigmoid(-lo), 0)).numpy()

    def predict_proba(
        self,
        X: Any,
        *,
        num_samples: int | None = None,
        seed: int | None = 0,
        ci_prob: float | None = None,
        calibrated: bool | None = None,
    ) -> Any:
        """Posterior probability that each row is an anomaly.

        p(z_i = anomaly | x_i, θ) averaged over ``num_samples`` guide draws of θ.
        After :meth:`calibrate`, that probability's log-odds ℓ are mapped to
        ``sigmoid(slope · ℓ + intercept)`` (and each draw's, for the interval).

        Parameters
        ----------
        X : array_like or DataFrame, shape (n_rows, n_features)
        num_samples : int, optional
            Default: the ``num_samples`` hyperparameter.
        seed : int or None, default 0
        ci_prob : float, optional
            Also return the central ``ci_prob`` interval of the probability
            over the parameter posterior.
        calibrated : bool, optional
            None (default): calibrated when :meth:`calibrate` has been called.
            False: the model's own probability. True: calibrated, or an error.

        Returns
        -------
        numpy.ndarray, shape (n_rows,)
            Or a DataFrame with ``probability``, ``low``, ``high`` when ``ci_prob`` is given.
        """
        from scipy.special import expit

        if ci_prob is not None:
            ci_prob = check_ci_prob(ci_prob)
        if calibrated is not None:
            calibrated = check_flag(calibrated, "calibrated")  # a plain bool (np.False_ is not False)
        cal = getattr(self, "calibration_", None) if calibrated is not False else None
        if calibrated and cal is None:
            raise ValueError("calibrated=True, but this detector is not calibrated; call calibrate(X, y) first")
        lo = self._log_odds(X, num_samples, seed)
        mean = self._mean_log_odds(lo)
        if cal is not None:
            mean, lo = (cal["slope"] * v + cal["intercept"] for v in (mean, lo))
        if ci_prob is None:
            return expit(mean)
        tail = (1 - ci_prob) / 2
        probs = expit(lo)
        return pd.DataFrame(
            {
                "probability": expit(mean),
                "low": np.quantile(probs, tail, axis=0),
                "high": np.quantile(probs, 1 - tail, axis=0),
            }
        )

    def calibrate(
        self, X: Any, y: Any, *, num_samples: int | None = None, seed: int | None = 0
    ) -> MixtureAnomalyDetector:
        """Map the anomaly probability onto labelled rows (Platt scaling); a few dozen suffice.

        The fit itself stays unsupervised. This fits ``P(y = 1) =
        sigmoid(slope · ℓ + intercept)`` to the labels, with ℓ the log-odds of
        :meth:`predict_proba`'s uncalibrated probability (see :func:`platt_scaling`),
        and from then on :meth:`predict_proba` and :meth:`predict` return the
        calibrated probability (``calibrated=False`` for the model's own). Worth
        it when the labels are not quite the model's "unusual": on mlbench's
        Pima table (diabetes as the anomaly), 50 labelled rows took the Brier
        score on the other rows from 0.29 to 0.21, where a constant at the
        labelled share scores 0.23 (benchmarks/RESULTS.md). A slope ≤ 0 means
        the labels run against the model's anomalies, and warns.

        Parameters
        ----------
        X : array_like or DataFrame, shape (n_rows, n_features)
            Labelled rows (they may be rows the detector was fitted on).
        y : array_like, shape (n_rows,)
            1 or True for an anomaly, 0 or False for a normal row; both must occur.

        Returns
        -------
        MixtureAnomalyDetector
            ``self``, with ``calibration_`` set.
        """
        if isinstance(X, pd.DataFrame) and isinstance(y, pd.Series) and not X.index.equals(y.index):
            raise ValueError("y's index differs from X's; align them (y.reindex(X.index)) or pass arrays")
        lo = self._mean_log_odds(self._log_odds(X, num_samples, seed))
        labels = binary_labels(y, len(lo))
        if np.ptp(lo) == 0:
            raise ValueError("every labelled row has the same anomaly probability; there is nothing to calibrate")
        slope, intercept = platt_scaling(lo, labels)
        if slope <= 0:
            warnings.warn(
                f"the labels run against the anomaly probability (calibration slope {slope:.3g} <= 0): "
                "the rows these labels mark are not the ones this model finds unusual",
                UserWarning,
                stacklevel=2,
            )
        self.calibration_ = {
            "slope": slope,
            "intercept": intercept,
            "rows": int(len(labels)),
            "anomalies": int(labels.sum()),
        }
        return self

    def predict(self, X: Any, threshold: float = 0.5, **kwargs: Any) -> np.ndarray:
        """1 for rows whose anomaly probability (calibrated, if :meth:`calibrate` was called) exceeds ``threshold``."""
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        return (self.predict_proba(X, **kwargs) > threshold).astype(int)

    def score_samples(self, X: Any, *, num_samples: int | None = None, seed: int | None = 0) -> np.ndarray:
        """Log density of each row under the normal part (raw units; low = unusual).

        ``log E_θ[Σ_k w_k N(x | loc_k, cov_k)]`` over guide draws, with the
        Jacobian of the standardisation, so it is a density in the raw units.
        """
        self._check_fitted()
        x = self._check_new_x(X)
        draws = self._draws(num_samples, seed)
        with torch.no_grad():
            log_w, table = self._tables(x, draws)
            normal = torch.logsumexp(table[..., :-1] + draws["weights"].log(), -1)  # (S, n)
            dens = torch.logsumexp(normal, 0) - math.log(normal.shape[0])
        return to_numpy(dens) - float(np.log(self._scale).sum())

    def anomaly_fraction(self, ci_prob: float = 0.94) -> pd.Series:
        """Posterior of the anomaly fraction: mean, sd and central interval (the guide's logit-normal or Beta)."""
        from scipy import stats

        self._check_fitted()
        tail = (1 - check_ci_prob(ci_prob)) / 2
        p = self.params_
        if "latent_loc" in p:  # logit-normal: its quantiles exactly, its moments by Gauss-Hermite quadrature
            from scipy.special import expit

            m, s = float(p["anomaly_fraction_loc"]), float(p["anomaly_fraction_scale"])
            nodes, weights = np.polynomial.hermite_e.hermegauss(60)
            values, weights = expit(m + s * nodes), weights / weights.sum()
            mean = float(weights @ values)
            return pd.Series(
                {
                    "mean": mean,
                    "sd": math.sqrt(max(float(weights @ (values - mean) ** 2), 0.0)),
                    "low": expit(m + s * stats.norm.ppf(tail)),
                    "high": expit(m + s * stats.norm.ppf(1 - tail)),
                    "ci_prob": ci_prob,
                }
            )
        a, b = float(p["anomaly_fraction_a"]), float(p["anomaly_fraction_b"])
        return pd.Series(
            {
                "mean": a / (a + b),
                "sd": math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))),
                "low": stats.beta.ppf(tail, a, b),
                "high": stats.beta.ppf(1 - tail, a, b),
                "ci_prob": ci_prob,
            }
        )

    def posterior(self, num_samples: int = 100, *, seed: int | None = None) -> dict[str, np.ndarray]:
        """Guide draws of the global parameters, on the standardised scale.

        Parameters
        ----------
        num_samples : int, default 100
        seed : int, optional
            Default: the estimator's ``seed`` (the same draws each call).

        Returns
        -------
        dict
            One numpy.ndarray per site (``anomaly_fraction``, ``weights``, ``loc``, ...), draws on the
            first axis.
        """
        self._check_fitted()
        return {k: to_numpy(v) for k, v in self._draws(num_samples, seed).items()}

    def plot(self, X: Any, labels: Any = None, *, threshold: float = 0.5) -> Any:
        """Two panels: anomaly probability by rank, and a 2-D projection coloured by probability."""
        from matplotlib.figure import Figure

        probs = self.predict_proba(X)
        x = to_numpy(self._check_new_x(X))
        if labels is not None and np.shape(labels) != (len(probs),):
            raise ValueError(f"labels must have one entry per row of X ({len(probs)}), got shape {np.shape(labels)}")
        fig = Figure(figsize=(10, 4), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        order = np.argsort(-probs)
        ax1.plot(np.arange(1, len(probs) + 1), probs[order], lw=1.5)
        ax1.axhline(threshold, color="grey", ls="--", lw=1)
        if labels is not None:
            lab = np.asarray(labels)[order].astype(bool)
            ax1.scatter(np.nonzero(lab)[0] + 1, probs[order][lab], s=8, color="tab:red", label="labelled anomaly")
            ax1.legend(fontsize="small")
        ax1.set_xlabel("rank")
        ax1.set_ylabel("P(anomaly | x)")
        ax1.set_xscale("log")
        if x.shape[1] > 2:
            centred = x - x.mean(0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            pts, names = centred @ vt[:2].T, ("PC 1", "PC 2")
        else:
            pts, names = x, tuple(self.feature_names_[:2])
        sc = ax2.scatter(pts[:, 0], pts[:, 1], c=probs, cmap="viridis", s=8, vmin=0, vmax=1)
        fig.colorbar(sc, ax=ax2, label="P(anomaly | x)")
        ax2.set_xlabel(names[0])
        ax2.set_ylabel(names[1] if len(names) > 1 else "")
        return fig

    # ------------------------------------------------------------ save/load
    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {
            "feature_names_": self.feature_names_,
            "fitted_on_frame_": self.fitted_on_frame_,
            "calibration_": getattr(self, "calibration_", None),
            "num_components_": self.num_components_,
        }
        tensors = {
            "x": self._x.detach().cpu(),
            "shift": torch.as_tensor(self._shift),
            "scale": torch.as_tensor(self._scale),
            **{f"hyper.{k}": v.detach().cpu() for k, v in self._hyper.items()},
            # Where the guide started: sbc_check's refits start there too.
            **{f"init.{k}": v.detach().cpu() for k, v in self._init.items()},
        }
        return meta, tensors

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        names, width = meta["feature_names_"], tensors["x"].shape[-1]
        if not isinstance(names, list) or len(names) != width:
            raise ValueError(f"feature_names_ must list the {width} feature names, got {names!r}")
        self.feature_names_ = [str(v) for v in names]
        # Saved before this flag existed: names other than the invented x0, x1, ... came from a DataFrame.
        on_frame = meta.get("fitted_on_frame_", self.feature_names_ != [f"x{j}" for j in range(width)])
        if not isinstance(on_frame, bool):
            raise ValueError(f"fitted_on_frame_ must be true or false, got {on_frame!r}")
        self.fitted_on_frame_ = on_frame
        chosen = meta.get("num_components_", self.num_components)  # a file without it has a fixed K
        if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 1:
            raise ValueError(f"num_components_ must be a positive integer, got {chosen!r}")
        self.num_components_ = chosen
        self.component_selection_ = None
        cal = meta.get("calibration_")  # absent from a file that records no calibration
        if cal is not None and not (
            isinstance(cal, dict)
            and all(isinstance(cal.get(k), int | float) and math.isfinite(cal[k]) for k in ("slope", "intercept"))
        ):
            raise ValueError(f"calibration_ must hold a finite slope and intercept, got {cal!r}")
        self.calibration_ = cal
        self._x = tensors["x"].to(self.device_)
        self._shift = to_numpy(tensors["shift"])
        self._scale = to_numpy(tensors["scale"])
        self._init = {k[5:]: v.to(self.device_) for k, v in tensors.items() if k.startswith("init.")}
        self._hyper = {k[6:]: v.to(self.device_) for k, v in tensors.items() if k.startswith("hyper.")}
        if "excess_center" not in self._hyper:  # a file without it has the Student-t component
            self.anomaly = "student_t"


# ------------------------------------------------------------------ spec recipe
# How a run spec (bayesgen.runs.spec) fits this model; the registry entry names this function (``spec_fit``).
def fit_anomaly_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The anomaly detector's spec recipe: a table (labels optional); report: flagged rows and scores."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from bayesgen.datasets import array_checksum
    from bayesgen.runs.spec import SpecFit, estimator_kwargs

    table, labels = _spec_table(spec)
    est = MixtureAnomalyDetector(**estimator_kwargs(MixtureAnomalyDetector, spec, device))
    est.progress = progress
    est.fit(table, **fit_kwargs)
    probs = est.predict_proba(table)
    frac = est.anomaly_fraction()
    values = {
        "rows": len(table),
        "features": table.shape[1],
        "num_components": est.num_components_,
        "flagged": int((probs > 0.5).sum()),
        "anomaly_fraction_mean": frac["mean"],
        "anomaly_fraction_low": frac["low"],
        "anomaly_fraction_high": frac["high"],
    }
    if labels is not None:
        score = -est.score_samples(table)
        values.update(
            {
                "labelled_anomaly_share": float(labels.mean()),
                "roc_auc_score": float(roc_auc_score(labels, score)),
                "average_precision_score": float(average_precision_score(labels, score)),
                "roc_auc_probability": float(roc_auc_score(labels, probs)),
                "brier_probability": float(brier_score_loss(labels, probs)),
                # what predicting the labelled share for every row scores: the Brier score to beat
                "brier_constant_baseline": float(labels.mean() * (1.0 - labels.mean())),
            }
        )
    report = pd.DataFrame({"value": values})
    return SpecFit(est, array_checksum(table.to_numpy(float)), report, {"scores": est.plot(table, labels)})


def _spec_table(spec: dict[str, Any]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """An anomaly spec's table (its ``[data] columns``) and, where it has them, its labels (True: an anomaly)."""
    from pathlib import Path

    from bayesgen.datasets import read_csv, resolve_source

    data = spec["data"]
    source = str(data.get("source", ""))
    labels = None
    if source == "sklearn:breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer(as_frame=True)
        table = bunch.data
        labels = (bunch.target == 0).to_numpy()  # malignant, scored as the anomaly
    else:
        table = read_csv(resolve_source(source, Path(spec["_path"]).parent))
        if data.get("label"):
            label = data["label"]
            if label not in table.columns:
                raise ValueError(f"{spec['_path']}: [data] label {label!r} is not a column")
            labels = (table.pop(label).astype(str) == str(data.get("anomaly_value", "1"))).to_numpy()
            if labels.all() or not labels.any():
                raise ValueError(
                    f"{spec['_path']}: [data] anomaly_value {str(data.get('anomaly_value', '1'))!r} "
                    f"matches {'every' if labels.all() else 'no'} row of column {label!r}; "
                    "scoring needs both kinds"
                )
        if data.get("columns"):
            columns = [data["columns"]] if isinstance(data["columns"], str) else list(data["columns"])
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise ValueError(
                    f"{spec['_path']}: [data] columns {missing} are not in the table; it has {list(table.columns)[:20]}"
                )
            table = table[columns]
    return table, labels

"""Distributions of the Gaussian class-conditional generator (:mod:`bayesgen.models.gaussian_generator`).

Per-class Gaussians over rows that factorise each class's covariance once per class, never once per row:
:class:`ClassMultivariateNormal` (full covariance, given by precision matrices) and :class:`ClassLowRankNormal`
(``W Wᵀ + diag(D)``, by the Woodbury identity). Their pieces serve the estimator's parameter draws too:
:func:`lowrank_whitening` and :func:`lowrank_log_prob`; the low-rank guide draws each class's location from
its exact conditional posterior given the covariance (:func:`lowrank_loc_conditional`). :func:`row_chunks`
bounds the working memory of evaluating many rows against every class, and :func:`quiet_wishart` silences
torch's false singular-sample warning on Wishart draws.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = [
    "CHUNK_ELEMENTS",
    "ClassLowRankNormal",
    "ClassMultivariateNormal",
    "PerClassMultivariateNormal",
    "lowrank_loc_conditional",
    "lowrank_log_prob",
    "lowrank_whitening",
    "quiet_wishart",
    "row_chunks",
]


class _ClassIndexed(dist.TorchDistribution):
    """Base of the per-class Gaussians: rows of ``index``'s classes, handled one class at a time.

    Each class's rows are taken together, so no per-row copy of a class's
    factor is ever made: with 1,000 posterior draws of 10 classes, a copy per
    row of a 64 × 64 Cholesky factor would be gigabytes.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, lead: torch.Size, index: torch.Tensor) -> None:
        self.loc, self.index = loc, index
        super().__init__(lead + index.shape, loc.shape[-1:], validate_args=False)
        self._order = torch.argsort(index, stable=True)
        self._counts = torch.bincount(index, minlength=loc.shape[-2]).tolist()
        self._inverse = torch.argsort(self._order)

    def _by_class(self, rows: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """``rows`` (..., n, k) split into (class, that class's rows), classes with rows only."""
        parts = torch.split(rows.index_select(-2, self._order), self._counts, dim=-2)
        return [(c, part) for c, part in enumerate(parts) if part.shape[-2]]

    def _in_row_order(self, parts: list[torch.Tensor], dim: int) -> torch.Tensor:
        """Per-class results (in class order, along ``dim``) put back in the rows' order."""
        return torch.cat(parts, dim=dim).index_select(dim, self._inverse)


class ClassMultivariateNormal(_ClassIndexed):
    """Rows drawn from per-class full-covariance Gaussians given by their precision matrices.

    ``x_i ~ MultivariateNormal(loc[c_i], precision[c_i]⁻¹)``: the same density as
    ``MultivariateNormal(loc[c], precision_matrix=precision[c])`` indexed per
    row, with one Cholesky factorisation ``L Lᵀ`` of each class's precision and
    no inversion: the Mahalanobis term is ``‖Lᵀ (x − loc)‖²``.

    Parameters
    ----------
    loc : Tensor, shape (..., n_classes, d)
    precision : Tensor, shape (..., n_classes, d, d)
    index : Tensor of int64, shape (n_rows,)
    """

    def __init__(self, loc: torch.Tensor, precision: torch.Tensor, index: torch.Tensor) -> None:
        self.precision_tril = torch.linalg.cholesky(precision)
        super().__init__(loc, torch.broadcast_shapes(loc.shape[:-2], precision.shape[:-3]), index)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        tril = self.precision_tril
        half_logdet = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log |precision|^(1/2)
        const = 0.5 * value.shape[-1] * math.log(2 * math.pi)
        parts = []
        for c, rows in self._by_class(value):
            z = (rows - self.loc[..., c, None, :]) @ tril[..., c, :, :]  # (..., n_c, d): Lᵀ(x − loc) per row
            parts.append(half_logdet[..., c, None] - const - 0.5 * z.pow(2).sum(-1))
        return self._in_row_order(parts, -1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        eps = torch.randn(shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        tril = self.precision_tril
        eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device)
        # z = L⁻ᵀ eps has covariance (L Lᵀ)⁻¹, the class covariance; as rows, z = eps L⁻¹.
        inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
        parts = [e @ inverse[..., c, :, :] for c, e in self._by_class(eps)]
        return self.loc[..., self.index, :] + self._in_row_order(parts, -2)


class ClassLowRankNormal(_ClassIndexed):
    """Rows drawn from per-class low-rank Gaussians, factorised once per class.

    ``x_i ~ MultivariateNormal(loc[c_i], W[c_i] W[c_i]ᵀ + diag(D[c_i]))``. The same
    density as ``LowRankMultivariateNormal(loc[c], W[c], D[c])`` indexed per row,
    but the r × r capacitance matrix ``I + Wᵀ D⁻¹ W`` is factorised once per class
    (C of them) instead of once per row, and each row costs one O(d r) Woodbury
    solve. That is the difference between minutes and seconds on MNIST.

    Parameters
    ----------
    loc : Tensor, shape (..., n_classes, d)
    cov_factor : Tensor, shape (..., n_classes, d, r)
    cov_diag : Tensor, shape (..., n_classes, d)
    index : Tensor of int64, shape (n_rows,)
        Class of every row.
    """

    def __init__(
        self, loc: torch.Tensor, cov_factor: torch.Tensor, cov_diag: torch.Tensor, index: torch.Tensor
    ) -> None:
        self.cov_factor, self.cov_diag = cov_factor, cov_diag
        lead = torch.broadcast_shapes(loc.shape[:-2], cov_factor.shape[:-3], cov_diag.shape[:-2])
        super().__init__(loc, lead, index)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        d_inv, whiten, logdet = lowrank_whitening(self.cov_factor, self.cov_diag)
        parts = [
            lowrank_log_prob(rows, self.loc[..., c, :], d_inv[..., c, :], whiten[..., c, :, :], logdet[..., c, None])
            for c, rows in self._by_class(value)
        ]
        return self._in_row_order(parts, -1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        idx = self.index
        shape = torch.Size(sample_shape) + self.batch_shape
        r = self.cov_factor.shape[-1]
        eps_w = torch.randn(shape + (r,), dtype=self.loc.dtype, device=self.loc.device)
        eps_d = torch.randn(shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        factor = [e @ self.cov_factor[..., c, :, :].transpose(-1, -2) for c, e in self._by_class(eps_w)]
        return self.loc[..., idx, :] + self._in_row_order(factor, -2) + self.cov_diag[..., idx, :].sqrt() * eps_d


class PerClassMultivariateNormal(dist.MultivariateNormal):
    """A multivariate Normal per class (batch shape ``(C,)``) whose draws multiply each class's factor once.

    Under plates outside the class plate (particles, posterior draws) the batch shape grows to ``(..., C)``;
    the parent's ``rsample`` then broadcasts the ``(C, D, D)`` factor to every leading index, a copy of
    ``... × C × D²`` numbers. This one moves the class axis first and multiplies ``(C, D, D)`` by ``(C, D, M)``.
    """

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        tril = self._unbroadcasted_scale_tril
        shape = self._extended_shape(sample_shape)
        if tril.dim() != 3 or shape[-2] != tril.shape[0]:
            return super().rsample(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        C, D = tril.shape[0], tril.shape[-1]
        flat = eps.reshape(-1, C, D).permute(1, 2, 0)  # (C, D, M)
        return self.loc + (tril @ flat).permute(2, 0, 1).reshape(shape)


def lowrank_whitening(
    cov_factor: torch.Tensor, cov_diag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pieces of the Woodbury identity for W Wᵀ + diag(D): D⁻¹, L⁻¹ Wᵀ D⁻¹ and log |W Wᵀ + D|.

    L is the Cholesky factor of the r x r capacitance matrix I + Wᵀ D⁻¹ W, factorised once per class.
    Shapes: cov_factor (..., C, d, r), cov_diag (..., C, d) -> (..., C, d), (..., C, r, d), (..., C).
    """
    d_inv = cov_diag.reciprocal()
    wt_dinv = cov_factor.transpose(-1, -2) * d_inv.unsqueeze(-2)  # (..., C, r, d)
    eye = torch.eye(cov_factor.shape[-1], dtype=cov_factor.dtype, device=cov_factor.device)
    chol = torch.linalg.cholesky(eye + wt_dinv @ cov_factor)  # (..., C, r, r)
    logdet = cov_diag.log().sum(-1) + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return d_inv, torch.linalg.solve_triangular(chol, wt_dinv, upper=False), logdet


def lowrank_log_prob(
    rows: torch.Tensor, loc: torch.Tensor, d_inv: torch.Tensor, whiten: torch.Tensor, logdet: torch.Tensor
) -> torch.Tensor:
    """log N(rows; loc, W Wᵀ + D) of one class, from that class's :func:`lowrank_whitening` pieces.

    rows (..., n, d), loc and d_inv (..., d), whiten (..., r, d), logdet broadcastable to (..., n) -> (..., n).
    One O(n d r) product; the factor is never copied per row.
    """
    diff = rows - loc.unsqueeze(-2)
    z = whiten @ diff.transpose(-1, -2)  # (..., r, n)
    maha = (diff.pow(2) * d_inv.unsqueeze(-2)).sum(-1) - z.pow(2).sum(-2)
    return -0.5 * (rows.shape[-1] * math.log(2 * math.pi) + logdet + maha)


# Rows are scored in chunks of at most this many row x class x feature elements (16 MB in float64), so
# a prediction needs this much working memory besides its (n_rows, d) input and (n_rows, n_classes) result.
CHUNK_ELEMENTS = 2_000_000


def lowrank_loc_conditional(
    cov_factor: torch.Tensor,
    cov_diag: torch.Tensor,
    count: torch.Tensor,
    mean: torch.Tensor,
    prior_loc: torch.Tensor,
    prior_scale: torch.Tensor,
) -> dist.LowRankMultivariateNormal:
    """The exact posterior of each class's location given its covariance ``W Wᵀ + diag(ψ)``.

    With the prior ``loc ~ Normal(prior_loc, prior_scale)`` (independent features) and ``count`` rows
    of mean ``mean`` drawn from ``Normal(loc, W Wᵀ + diag(ψ))``, the class mean is
    ``mean = loc + W z + e`` with ``z ~ Normal(0, I / n)`` and ``e ~ Normal(0, diag(ψ) / n)``. The rank-r
    ``z`` is updated first, by the r × r precision ``n I + Wᵀ (diag(prior_scale²) + diag(ψ) / n)⁻¹ W``,
    then ``loc`` given ``z`` by a diagonal conjugate update, so the result is a sum of positive terms
    (no cancellation, in float32 as well):
    ``Normal(μ, diag(1 / a) + F Fᵀ)`` with ``a = 1 / prior_scale² + n / ψ`` and ``F`` of rank r.

    Parameters
    ----------
    cov_factor : Tensor, shape (..., C, d, r)
    cov_diag : Tensor, shape (..., C, d)
    count : Tensor, shape (C,)
        Rows of each class (at least one).
    mean : Tensor, shape (C, d)
        Each class's mean row.
    prior_loc, prior_scale : Tensor, shape (d,)

    Returns
    -------
    pyro.distributions.LowRankMultivariateNormal
        Batch shape (..., C), event shape (d,).
    """
    n = count.to(cov_diag.dtype).unsqueeze(-1)  # (C, 1)
    prior_var = prior_scale.square()
    # z | mean: precision n I + Wᵀ V⁻¹ W, V = diag(prior_var + ψ / n), the spread of loc + e.
    v_inv = 1.0 / (prior_var + cov_diag / n)
    r = cov_factor.shape[-1]
    eye = torch.eye(r, dtype=cov_factor.dtype, device=cov_factor.device)
    precision_z = n.unsqueeze(-1) * eye + cov_factor.mT @ (v_inv.unsqueeze(-1) * cov_factor)
    chol_z = torch.linalg.cholesky(precision_z)
    rhs = cov_factor.mT @ (v_inv * (mean - prior_loc)).unsqueeze(-1)
    mean_z = torch.cholesky_solve(rhs, chol_z).squeeze(-1)
    # loc | z, mean: diagonal, precision a, mean (prior_loc / s² + n (mean - W z) / ψ) / a.
    a = 1.0 / prior_var + n / cov_diag
    pull = n / (cov_diag * a)  # d loc / d (mean - W z)
    centre = (prior_loc / prior_var + n * mean / cov_diag) / a
    loc = centre - pull * (cov_factor @ mean_z.unsqueeze(-1)).squeeze(-1)
    # loc's spread from z: pull ⊙ W z with z's covariance (L Lᵀ)⁻¹, i.e. factor pull ⊙ W L⁻ᵀ.
    factor = torch.linalg.solve_triangular(chol_z, (pull.unsqueeze(-1) * cov_factor).mT, upper=False).mT
    return dist.LowRankMultivariateNormal(loc, factor, 1.0 / a)


def row_chunks(x: torch.Tensor, num_classes: int) -> Iterator[torch.Tensor]:
    """Consecutive row blocks of ``x`` (n_rows, d), each small enough to compare with every class at once."""
    size = max(1, CHUNK_ELEMENTS // max(1, x.shape[1] * num_classes))
    for start in range(0, len(x), size):
        yield x[start : start + size]


@contextlib.contextmanager
def quiet_wishart() -> Iterator[None]:
    """Silence torch's Wishart "Singular sample detected" warning.

    torch (2.x) flags *valid* Bartlett draws as singular (it tests
    ``support.check(sample)``, which is True for positive-definite samples),
    so the warning fires on good draws; the samples themselves are fine.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Singular sample detected")
        yield

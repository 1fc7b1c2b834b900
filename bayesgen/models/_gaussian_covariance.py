"""Covariance structures of the Gaussian class-conditional generator (:mod:`bayesgen.models.gaussian_generator`).

Everything that differs between ``covariance="diag"``, ``"full"`` and ``"lowrank"`` lives in one class per
structure, and :data:`COVARIANCES` maps each name to its class (as scikit-learn's Gaussian mixture dispatches
on ``covariance_type``). Each class holds its part of the story and of the estimator's arithmetic:

* the model's class parameters and row likelihood, and the guide's sites
  (:meth:`~CovarianceStructure.sample_parameters`, :meth:`~CovarianceStructure.likelihood`,
  :meth:`~CovarianceStructure.guide_sites`);
* its prior hyperparameters and, for the conjugate structures, the conjugate update of the precision and the
  exact Student-t posterior predictive (Murphy 2007): Normal-Gamma per feature ("diag"), Normal-Wishart
  ("full");
* what the estimator does with posterior draws: their densities, samples and raw-scale values.

The shared Normal and Dirichlet parts of the closed forms are in :func:`exact_posterior` and
:func:`prior_parameters`, which dispatch to the structure for the rest.

References
----------
Murphy (2007), Conjugate Bayesian analysis of the Gaussian distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from bayesgen.models._gaussian_algebra import lowrank_initial_params, pooled_statistics, ppca_factors
from bayesgen.models._gaussian_distributions import (
    ClassLowRankNormal,
    ClassMultivariateNormal,
    PerClassMultivariateNormal,
    lowrank_loc_conditional,
    lowrank_log_prob,
    lowrank_whitening,
    row_chunks,
)

__all__ = [
    "COVARIANCES",
    "Covariance",
    "CovarianceStructure",
    "DiagCovariance",
    "FullCovariance",
    "LowRankCovariance",
    "covariance_structure",
    "exact_posterior",
    "predictive_joint_log_prob",
    "prior_parameters",
]

Covariance = Literal["diag", "full", "lowrank"]
Tensors = dict[str, torch.Tensor]
ToTensor = Callable[[Any], torch.Tensor]


class CovarianceStructure:
    """One covariance structure of the class Gaussians: what it adds to the shared parts of model and estimator.

    Parameters
    ----------
    noise : {"diagonal", "isotropic"}, default "diagonal"
        The noise beyond the factors of the "lowrank" structure; the others ignore it.
    factor_guide : {"mean_field", "full"}, default "mean_field"
        The "lowrank" structure's guide over the factors and the noise: independent Normals, or one
        multivariate Normal per class over all of them; the others ignore it.

    Attributes
    ----------
    name : str
        The ``covariance`` setting that selects it.
    conjugate : bool
        Whether the posterior has a closed form (``method="exact"``).
    svi_refusal : str or None
        Why SVI cannot fit it (the error's message); None when it can.
    float64 : bool
        Whether its tensors need float64 (Wishart draws of a d x d precision are often singular in float32).
    vectorised_draws : bool
        Whether ArviZ may hold all posterior draws at once.
    """

    name: ClassVar[str]
    conjugate: ClassVar[bool] = True
    svi_refusal: ClassVar[str | None] = None
    float64: ClassVar[bool] = False
    vectorised_draws: ClassVar[bool] = True

    def __init__(self, noise: str = "diagonal", factor_guide: str = "mean_field") -> None:
        self.noise = noise
        self.factor_guide = factor_guide

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise={self.noise!r}, factor_guide={self.factor_guide!r})"

    # ------------------------------------------------------------- the model
    def prior_hyperparameters(
        self, S0: np.ndarray, *, prior_strength: float, shrinkage: float, rank: int, t: ToTensor
    ) -> Tensors:
        """Hyperparameters of the prior of the class covariances (tensors made by ``t``), centred on ``S0``."""
        raise NotImplementedError

    def sample_parameters(self, hyper: Tensors, num_features: int) -> Tensors:
        """Sample the class parameters (inside the class plate): ``loc`` and the covariance's parts."""
        raise NotImplementedError

    def likelihood(self, params: Tensors, labels: torch.Tensor) -> dist.Distribution:
        """The distribution of rows of classes ``labels`` (n_rows,) given the class parameters."""
        raise NotImplementedError

    def components(self, params: Tensors) -> dist.Distribution:
        """The class Gaussians with one more batch dimension, left of the class one, for the rows' plate."""
        raise ValueError("unlabelled rows are modelled with covariance 'diag' or 'full' only")

    def guide_sites(self, hyper: Tensors, init: Tensors, num_classes: int, x: torch.Tensor) -> None:
        """The guide's factors of the class parameters (inside the class plate), started at ``init`` where given."""
        raise NotImplementedError

    def guide_statistics(self, x: np.ndarray, y: np.ndarray, num_classes: int, t: ToTensor) -> Tensors:
        """Summaries of the training rows ``x`` (class indices ``y``) that the guide reads, added to the
        hyperparameters: none, or (low rank) each class's row count and mean row."""
        return {}

    def model_kwargs(self) -> dict[str, Any]:
        """The structure's own keyword arguments of ``model`` and ``guide``."""
        return {}

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims of its sites that differ from the model's defaults."""
        return {}

    # ------------------------------------------------------- fitting by SVI
    def check_rank(self, rank: int, num_dims: int, what: str) -> None:
        """Refuse a ``rank`` the structure cannot hold in ``num_dims`` modelled dimensions (named ``what``)."""

    def default_learning_rate(self, init: str) -> float:
        """The SVI learning rate when none is given, for guide start ``init``."""
        return 0.05

    def initial_guide_params(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        *,
        pooled: tuple[np.ndarray, np.ndarray],
        class_concentration: float,
        prior_strength: float,
        shrinkage: float,
        rank: int,
    ) -> dict[str, np.ndarray] | None:
        """The guide's starting values from the data's own answer (``init="pca"``); None: the prior's centre."""
        return None

    # ------------------------------------------------------ the closed forms
    def conjugate_prior(self, S0: np.ndarray, shrinkage: float) -> dict[str, Any]:
        """The conjugate prior of the precision, centred so that E[covariance] = ``S0``."""
        raise NotImplementedError

    def conjugate_update(
        self,
        prior: dict[str, Any],
        centred: np.ndarray,
        w: np.ndarray,
        n: float,
        dev: np.ndarray,
        kappa: float,
        prior_strength: float,
    ) -> dict[str, np.ndarray]:
        """One class's posterior of the precision.

        ``centred`` are its rows minus their weighted mean, ``w`` their weights, ``n`` their total weight,
        ``dev`` the weighted mean minus the pooled one, ``kappa`` the posterior pseudo-count of the location.
        """
        raise NotImplementedError

    def conjugate_summary(self, post: dict[str, np.ndarray]) -> None:
        """Add the posterior's derived moments to ``post`` (every class's, from :func:`exact_posterior`)."""
        raise NotImplementedError

    def set_guide_to_posterior(self, post: dict[str, np.ndarray], t: ToTensor) -> None:
        """Write the exact marginals of the covariance parts into the mean-field guide's parameters."""
        raise NotImplementedError

    def predictive(self, post: dict[str, np.ndarray], like: torch.Tensor) -> Tensors:
        """Exact posterior predictive of the conjugate structure: class weights and per-class Student-t."""
        t = like.new_tensor
        out = {"weights": t(post["weights_concentration"]), "loc": t(post["loc"])}
        out.update(self.predictive_scale(post, t))
        return out

    def predictive_scale(self, post: dict[str, np.ndarray], t: ToTensor) -> Tensors:
        """Degrees of freedom and scale of the predictive Student-t of every class."""
        raise NotImplementedError

    def predictive_joint_log_prob(self, pred: Tensors, x: torch.Tensor) -> torch.Tensor:
        """log p(x, y = c) under the predictive from :meth:`predictive`, shape (n_rows, n_classes)."""
        log_w = (pred["weights"] / pred["weights"].sum()).log()
        with torch.no_grad():
            return self.predictive_class_log_prob(pred, x, log_w)

    def predictive_class_log_prob(self, pred: Tensors, x: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        """log p(x | y = c) + ``log_w`` per row and class, evaluated in row chunks."""
        raise NotImplementedError

    def sample_predictive(self, pred: Tensors, labels: torch.Tensor) -> torch.Tensor:
        """One draw from the predictive Student-t of each row's class, shape (n_rows, d)."""
        raise NotImplementedError

    def reference_moments(
        self, exact: dict[str, np.ndarray]
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        """Exact posterior (mean, sd) of the SVI guide's sites, and the sites without one (with the reason)."""
        raise NotImplementedError

    # ------------------------------------------------------ posterior draws
    def draws_from_trace(self, nodes: dict[str, Any], num: int, num_classes: int, d: int) -> Tensors:
        """The covariance parts of ``num`` vectorised guide draws (``nodes`` of its trace), as the draws keep them."""
        raise NotImplementedError

    def prepare_draws(self, draws: Tensors) -> Any:
        """What :meth:`draw_log_prob` reuses for every row chunk (None when nothing)."""
        return None

    def draw_log_prob(self, draws: Tensors, s: int, x: torch.Tensor, prepared: Any) -> torch.Tensor:
        """log N(x_i; class c of draw ``s``) for every row and class, shape (n_rows, n_classes).

        Each class's factor is applied to all rows at once, never copied per row.
        """
        raise NotImplementedError

    def sample_from_draws(self, draws: Tensors, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One row per entry of ``labels``, from the draw ``owner`` of that row's class."""
        raise NotImplementedError

    def raw_scale_draws(self, draws: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
        """The covariance parts of the draws on the raw feature scale (features multiplied by ``scale``)."""
        raise NotImplementedError


class DiagCovariance(CovarianceStructure):
    """Independent features per class: a Normal-Gamma prior per feature (conjugate).

    ``precision_cj ~ Gamma(a0, a0' S0_jj)`` with ``a0 = 1 + shrinkage/2``, so ``E[1/precision] = S0_jj``;
    ``loc_cj | precision ~ Normal(m0_j, 1/sqrt(κ0 precision_cj))``. The guide is Gamma times Normal per
    feature; the predictive per feature is ``t_{2 a_n}(m_n, b_n (κ_n + 1) / (a_n κ_n))``.
    """

    name = "diag"

    def prior_hyperparameters(
        self, S0: np.ndarray, *, prior_strength: float, shrinkage: float, rank: int, t: ToTensor
    ) -> Tensors:
        prior = self.conjugate_prior(S0, shrinkage)
        return {"shape": t(np.full(len(S0), prior["shape"])), "rate": t(prior["rate"])}

    def sample_parameters(self, hyper: Tensors, num_features: int) -> Tensors:
        precision = pyro.sample("precision", dist.Gamma(hyper["shape"], hyper["rate"]).to_event(1))
        loc = pyro.sample("loc", dist.Normal(hyper["m0"], (hyper["kappa0"] * precision).rsqrt()).to_event(1))
        return {"loc": loc, "precision": precision}

    def likelihood(self, params: Tensors, labels: torch.Tensor) -> dist.Distribution:
        loc, precision = params["loc"], params["precision"]
        return dist.Normal(loc[..., labels, :], precision[..., labels, :].rsqrt()).to_event(1)

    def components(self, params: Tensors) -> dist.Distribution:
        return dist.Normal(params["loc"].unsqueeze(-3), params["precision"].unsqueeze(-3).rsqrt()).to_event(1)

    def guide_sites(self, hyper: Tensors, init: Tensors, num_classes: int, x: torch.Tensor) -> None:
        C, d = num_classes, x.shape[-1]
        shape = pyro.param(
            "precision_shape",
            lambda: init.get("precision_shape", hyper["shape"].expand(C, d)).clone(),
            constraint=constraints.positive,
        )
        rate = pyro.param(
            "precision_rate",
            lambda: init.get("precision_rate", hyper["rate"].expand(C, d)).clone(),
            constraint=constraints.positive,
        )
        pyro.sample("precision", dist.Gamma(shape, rate).to_event(1))
        loc = pyro.param("loc_loc", lambda: init.get("loc_loc", hyper["m0"].expand(C, d)).clone())
        scale = pyro.param(
            "loc_scale",
            lambda: init.get("loc_scale", 0.1 * hyper["sd0"].expand(C, d)).clone(),
            constraint=constraints.positive,
        )
        pyro.sample("loc", dist.Normal(loc, scale).to_event(1))

    def initial_guide_params(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        *,
        pooled: tuple[np.ndarray, np.ndarray],
        class_concentration: float,
        prior_strength: float,
        shrinkage: float,
        rank: int,
    ) -> dict[str, np.ndarray]:
        # Conjugate: the guide starts at the exact marginal posterior of every class's parameters.
        post = exact_posterior(
            x,
            y,
            num_classes,
            covariance="diag",
            class_concentration=class_concentration,
            prior_strength=prior_strength,
            shrinkage=shrinkage,
            pooled=pooled,
        )
        return {
            "precision_shape": post["shape"],
            "precision_rate": post["rate"],
            "loc_loc": post["loc"],
            "loc_scale": np.sqrt(post["loc_var"]),
        }

    def conjugate_prior(self, S0: np.ndarray, shrinkage: float) -> dict[str, Any]:
        a0 = 1.0 + shrinkage / 2.0
        return {"shape": a0, "rate": np.diag(S0) * (a0 - 1.0)}  # E[1 / precision] = S0_jj

    def conjugate_update(
        self,
        prior: dict[str, Any],
        centred: np.ndarray,
        w: np.ndarray,
        n: float,
        dev: np.ndarray,
        kappa: float,
        prior_strength: float,
    ) -> dict[str, np.ndarray]:
        ss = w @ centred**2 if n > 0 else np.zeros(len(dev))
        shape = np.full(len(dev), prior["shape"] + n / 2.0)
        rate = prior["rate"] + ss / 2.0 + prior_strength * n * dev**2 / (2.0 * kappa)
        return {"shape": shape, "rate": rate}

    def conjugate_summary(self, post: dict[str, np.ndarray]) -> None:
        shape, rate, kappa = post["shape"], post["rate"], post["kappa"]
        post["precision_mean"] = shape / rate
        post["loc_var"] = rate / (kappa[:, None] * (shape - 1.0))

    def set_guide_to_posterior(self, post: dict[str, np.ndarray], t: ToTensor) -> None:
        pyro.param("precision_shape", t(post["shape"]), constraint=constraints.positive)
        pyro.param("precision_rate", t(post["rate"]), constraint=constraints.positive)
        pyro.param("loc_scale", t(np.sqrt(post["loc_var"])), constraint=constraints.positive)

    def predictive_scale(self, post: dict[str, np.ndarray], t: ToTensor) -> Tensors:
        kappa = post["kappa"]
        scale = np.sqrt(post["rate"] * (kappa[:, None] + 1.0) / (post["shape"] * kappa[:, None]))
        return {"df": t(2.0 * post["shape"]), "scale": t(scale)}

    @staticmethod
    def _student_t(pred: Tensors, labels: torch.Tensor | None = None) -> dist.Distribution:
        """The per-feature predictive Student-t of every class (or of the class of each row in ``labels``)."""
        pick = (lambda v: v) if labels is None else (lambda v: v[labels])  # noqa: E731
        return dist.StudentT(pick(pred["df"]), pick(pred["loc"]), pick(pred["scale"])).to_event(1)

    def predictive_class_log_prob(self, pred: Tensors, x: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        fn = self._student_t(pred)
        return torch.cat([fn.log_prob(xb.unsqueeze(-2)) + log_w for xb in row_chunks(x, len(log_w))])

    def sample_predictive(self, pred: Tensors, labels: torch.Tensor) -> torch.Tensor:
        return self._student_t(pred, labels).sample()

    def reference_moments(
        self, exact: dict[str, np.ndarray]
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        shape, rate = exact["shape"], exact["rate"]
        moments = {
            "precision": (shape / rate, np.sqrt(shape) / rate),
            "loc": (exact["loc"], np.sqrt(exact["loc_var"])),
        }
        return moments, {}

    def draws_from_trace(self, nodes: dict[str, Any], num: int, num_classes: int, d: int) -> Tensors:
        return {"scale": nodes["precision"]["value"].reshape(num, num_classes, d).rsqrt()}

    def draw_log_prob(self, draws: Tensors, s: int, x: torch.Tensor, prepared: Any) -> torch.Tensor:
        return dist.Normal(draws["loc"][s], draws["scale"][s]).to_event(1).log_prob(x.unsqueeze(-2))

    def sample_from_draws(self, draws: Tensors, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loc = draws["loc"][owner, labels]
        eps = torch.randn_like(loc)
        return loc + draws["scale"][owner, labels] * eps

    def raw_scale_draws(self, draws: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
        return {"scale": draws["scale"] * scale}


class FullCovariance(CovarianceStructure):
    """A full covariance per class: a Normal-Wishart prior (conjugate), fitted in closed form only.

    ``precision_c ~ Wishart(ν0, V0)`` with ``ν0 = d + 1 + shrinkage`` and ``E[precision_c⁻¹] = S0``;
    ``loc_c | precision_c ~ MultivariateNormal(m0, (κ0 precision_c)⁻¹)``. The predictive is
    ``t_{ν_n - d + 1}(m_n, (κ_n + 1) / (κ_n (ν_n - d + 1)) · W_n⁻¹)``. SVI on a Wishart guide over a
    d x d precision is refused: Adam diverges within tens of steps even at d = 60.
    """

    name = "full"
    svi_refusal = (
        "covariance='full' is fitted with its exact conjugate posterior: use method='exact' "
        "(SVI with a Wishart guide is numerically unstable), or covariance='lowrank' for SVI"
    )
    float64 = True
    # Vectorised, a full-covariance model holds every draw's d x d matrices (several per class) at once.
    vectorised_draws = False

    def prior_hyperparameters(
        self, S0: np.ndarray, *, prior_strength: float, shrinkage: float, rank: int, t: ToTensor
    ) -> Tensors:
        prior = self.conjugate_prior(S0, shrinkage)
        return {"df": t(prior["df"]), "scale_tril": t(np.linalg.cholesky(np.linalg.inv(prior["V_inv"])))}

    def sample_parameters(self, hyper: Tensors, num_features: int) -> Tensors:
        precision = pyro.sample("precision", dist.Wishart(hyper["df"], scale_tril=hyper["scale_tril"]))
        loc = pyro.sample("loc", dist.MultivariateNormal(hyper["m0"], precision_matrix=hyper["kappa0"] * precision))
        return {"loc": loc, "precision": precision}

    def likelihood(self, params: Tensors, labels: torch.Tensor) -> dist.Distribution:
        # One factorisation per class, not per row.
        return ClassMultivariateNormal(params["loc"], params["precision"], labels)

    def components(self, params: Tensors) -> dist.Distribution:
        return dist.MultivariateNormal(params["loc"].unsqueeze(-3), precision_matrix=params["precision"].unsqueeze(-4))

    def guide_sites(self, hyper: Tensors, init: Tensors, num_classes: int, x: torch.Tensor) -> None:
        C, d = num_classes, x.shape[-1]
        # df > d + 1 keeps draws non-singular and E[precision^-1] finite; the exact
        # posterior has df = d + 1 + shrinkage + n, well inside.
        df = pyro.param(
            "precision_df", lambda: hyper["df"].expand(C).clone(), constraint=constraints.greater_than(d + 1.0)
        )
        tril = pyro.param(
            "precision_scale_tril",
            lambda: hyper["scale_tril"].expand(C, d, d).clone(),
            constraint=constraints.lower_cholesky,
        )
        pyro.sample("precision", dist.Wishart(df, scale_tril=tril))
        loc = pyro.param("loc_loc", lambda: hyper["m0"].expand(C, d).clone())
        loc_tril = pyro.param(
            "loc_scale_tril",
            lambda: torch.diag_embed(0.1 * hyper["sd0"]).expand(C, d, d).clone(),
            constraint=constraints.lower_cholesky,
        )
        pyro.sample("loc", dist.MultivariateNormal(loc, scale_tril=loc_tril))

    def dims(self) -> dict[str, list[str]]:
        return {"precision": ["class", "feature", "feature_bis"]}

    def conjugate_prior(self, S0: np.ndarray, shrinkage: float) -> dict[str, Any]:
        d = len(S0)
        df = d + 1.0 + shrinkage
        return {"df": df, "V_inv": S0 * (df - d - 1.0)}  # E[precision^-1] = S0

    def conjugate_update(
        self,
        prior: dict[str, Any],
        centred: np.ndarray,
        w: np.ndarray,
        n: float,
        dev: np.ndarray,
        kappa: float,
        prior_strength: float,
    ) -> dict[str, np.ndarray]:
        d = len(dev)
        scatter = centred.T @ (centred * w[:, None]) if n > 0 else np.zeros((d, d))
        V_inv = prior["V_inv"] + scatter + prior_strength * n / kappa * np.outer(dev, dev)
        return {"df": np.asarray(prior["df"] + n), "scale": np.linalg.inv(V_inv)}

    def conjugate_summary(self, post: dict[str, np.ndarray]) -> None:
        dfs, scales, kappa = post["df"], post["scale"], post["kappa"]
        d = scales.shape[-1]
        post["precision_mean"] = dfs[:, None, None] * scales
        cov_mean = np.linalg.inv(scales) / (dfs - d - 1.0)[:, None, None]
        post["loc_cov"] = cov_mean / kappa[:, None, None]

    def set_guide_to_posterior(self, post: dict[str, np.ndarray], t: ToTensor) -> None:
        d = post["loc"].shape[1]
        pyro.param("precision_df", t(post["df"]), constraint=constraints.greater_than(d + 1.0))
        pyro.param("precision_scale_tril", t(np.linalg.cholesky(post["scale"])), constraint=constraints.lower_cholesky)
        pyro.param("loc_scale_tril", t(np.linalg.cholesky(post["loc_cov"])), constraint=constraints.lower_cholesky)

    def predictive_scale(self, post: dict[str, np.ndarray], t: ToTensor) -> Tensors:
        kappa = post["kappa"]
        d = post["loc"].shape[1]
        df = post["df"] - d + 1.0
        cov = np.linalg.inv(post["scale"]) * ((kappa + 1.0) / (kappa * df))[:, None, None]
        return {"df": t(df), "scale_tril": t(np.linalg.cholesky(cov))}

    def predictive_class_log_prob(self, pred: Tensors, x: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        # The multivariate t by hand (MultivariateStudentT would broadcast each class's d x d factor to every
        # row). The Mahalanobis term is ‖L_c⁻¹ x − L_c⁻¹ m_c‖²: every class's whitening L_c⁻¹ is inverted once
        # and stacked into one (d, C d) matrix, so a block of rows meets all classes in a single product.
        tril, df, (C, d) = pred["scale_tril"], pred["df"], pred["loc"].shape
        eye = torch.eye(d, dtype=tril.dtype, device=tril.device)
        whiten = torch.linalg.solve_triangular(tril, eye, upper=False)  # (C, d, d): L_c⁻¹
        stacked = whiten.permute(2, 0, 1).reshape(d, C * d)  # column block c is L_c⁻ᵀ
        shift = (whiten @ pred["loc"].unsqueeze(-1)).squeeze(-1)  # (C, d): L_c⁻¹ m_c
        const = (
            torch.lgamma((df + d) / 2)
            - torch.lgamma(df / 2)
            - 0.5 * d * torch.log(df * math.pi)
            - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ) + log_w
        out = []
        for xb in row_chunks(x, C):
            maha = ((xb @ stacked).reshape(-1, C, d) - shift).pow(2).sum(-1)  # (n, C)
            out.append(const - 0.5 * (df + d) * torch.log1p(maha / df))
        return torch.cat(out)

    def sample_predictive(self, pred: Tensors, labels: torch.Tensor) -> torch.Tensor:
        # loc + L ε / sqrt(χ² / df), each class's factor L applied to that class's rows together, so no row
        # gets its own copy of a d x d factor (1,000 rows of 784 features would need 4.9 GB).
        loc, tril, df = pred["loc"], pred["scale_tril"], pred["df"][labels]
        eps = torch.empty(len(labels), loc.shape[-1], dtype=loc.dtype, device=loc.device).normal_()
        eps = eps * torch.rsqrt(dist.Chi2(df).sample() / df).unsqueeze(-1)
        out = loc[labels]
        for c in torch.unique(labels).tolist():
            rows = (labels == c).nonzero().squeeze(-1)
            out[rows] += eps[rows] @ tril[c].T
        return out

    def reference_moments(
        self, exact: dict[str, np.ndarray]
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        df, scale = exact["df"][:, None, None], exact["scale"]
        diag = np.diagonal(scale, axis1=-2, axis2=-1)
        moments = {
            "precision": (df * scale, np.sqrt(df * (scale**2 + diag[..., :, None] * diag[..., None, :]))),
            "loc": (exact["loc"], np.sqrt(np.diagonal(exact["loc_cov"], axis1=-2, axis2=-1))),
        }
        return moments, {}

    def draws_from_trace(self, nodes: dict[str, Any], num: int, num_classes: int, d: int) -> Tensors:
        prec = nodes["precision"]["value"].reshape(num, num_classes, d, d)
        return {"scale_tril": torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(prec)))}

    def draw_log_prob(self, draws: Tensors, s: int, x: torch.Tensor, prepared: Any) -> torch.Tensor:
        # torch's MultivariateNormal solves against the (n, C, d) differences without copying the factor.
        return dist.MultivariateNormal(draws["loc"][s], scale_tril=draws["scale_tril"][s]).log_prob(x.unsqueeze(-2))

    def sample_from_draws(self, draws: Tensors, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loc = draws["loc"][owner, labels]
        eps = torch.randn_like(loc)
        return loc + (draws["scale_tril"][owner, labels] @ eps.unsqueeze(-1)).squeeze(-1)

    def raw_scale_draws(self, draws: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
        return {"scale_tril": scale[:, None] * draws["scale_tril"]}


class LowRankCovariance(CovarianceStructure):
    """Rank r plus diagonal per class, ``cov_c = W_c W_cᵀ + diag(ψ_c)`` (no closed form; SVI only).

    ``W_c ~ Normal(W0, factor_scale)`` around the pooled principal factors W0; ``ψ_c ~ LogNormal(log ψ0, 0.5)``,
    one per feature (``noise="diagonal"``, factor analysis) or one per class (``noise="isotropic"``,
    probabilistic PCA); ``loc_c ~ Normal(m0, sqrt(S0_jj / κ0))``. The guide is Normal (factors) and LogNormal
    (noise); given their draw, each location is drawn from its exact conditional posterior
    (:func:`lowrank_loc_conditional`, from the class counts and means of :meth:`guide_statistics`), so the
    locations' uncertainty carries the covariance's. The likelihood is :class:`ClassLowRankNormal`.
    """

    name = "lowrank"
    conjugate = False

    def prior_hyperparameters(
        self, S0: np.ndarray, *, prior_strength: float, shrinkage: float, rank: int, t: ToTensor
    ) -> Tensors:
        d, var0 = len(S0), np.diag(S0)
        W0, psi0 = ppca_factors(S0, rank)
        residual = np.clip(var0 - (W0**2).sum(axis=1), 1e-6 * var0.mean() + 1e-12, None)
        return {
            "W0": t(W0),
            "factor_scale": t(np.full((d, rank), 0.5 * np.sqrt(psi0) + 1e-6)),
            "log_psi0": t(np.log(residual)),
            "psi_scale": t(0.5),
            "loc_scale": t(np.sqrt(var0 / prior_strength)),
        }

    def sample_parameters(self, hyper: Tensors, num_features: int) -> Tensors:
        loc = pyro.sample("loc", dist.Normal(hyper["m0"], hyper["loc_scale"]).to_event(1))
        cov_factor = pyro.sample("cov_factor", dist.Normal(hyper["W0"], hyper["factor_scale"]).to_event(2))
        if self.noise == "isotropic":
            psi = pyro.sample("cov_diag", dist.LogNormal(hyper["log_psi0"].mean(), hyper["psi_scale"]))
            cov_diag = psi.unsqueeze(-1).expand(*psi.shape, num_features)
        else:
            cov_diag = pyro.sample("cov_diag", dist.LogNormal(hyper["log_psi0"], hyper["psi_scale"]).to_event(1))
        return {"loc": loc, "cov_factor": cov_factor, "cov_diag": cov_diag}

    def likelihood(self, params: Tensors, labels: torch.Tensor) -> dist.Distribution:
        return ClassLowRankNormal(params["loc"], params["cov_factor"], params["cov_diag"], labels)

    def guide_sites(self, hyper: Tensors, init: Tensors, num_classes: int, x: torch.Tensor) -> None:
        C, d = num_classes, x.shape[-1]
        r = hyper["W0"].shape[-1]
        if self.factor_guide == "full":
            cov_factor, cov_diag = self._full_factor_sites(hyper, init, C, d, r)
        else:
            cov_factor, cov_diag = self._mean_field_factor_sites(hyper, init, C, d, r)
        # The locations need no factor of their own: given the covariance, their posterior is exact.
        conditional = lowrank_loc_conditional(
            cov_factor, cov_diag, hyper["class_count"], hyper["class_mean"], hyper["m0"], hyper["loc_scale"]
        )
        pyro.sample("loc", conditional)

    def _full_factor_sites(
        self, hyper: Tensors, init: Tensors, C: int, d: int, r: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One multivariate Normal per class over ``vec(W)`` and the log noise (an auxiliary site), started at
        the Laplace approximation at the PCA start: the mean there, the covariance (Fisher information + the
        prior's precision)⁻¹ (:func:`lowrank_information_matrix`)."""
        iso = self.noise == "isotropic"
        log_psi0 = hyper["log_psi0"].mean().reshape(1) if iso else hyper["log_psi0"]
        prior_sd = torch.cat([hyper["factor_scale"].reshape(-1), hyper["psi_scale"].expand(log_psi0.shape)])

        def start_loc() -> torch.Tensor:
            return init.get("factor_noise_loc", torch.cat([hyper["W0"].reshape(-1), log_psi0]).expand(C, -1)).clone()

        def start_tril() -> torch.Tensor:
            information = init.get("factor_noise_information")
            if information is None:
                return torch.diag_embed(0.1 * prior_sd.expand(C, -1)).clone()
            precision = information.double() + torch.diag(prior_sd.double().pow(-2))
            return torch.linalg.cholesky(torch.linalg.inv(precision)).to(prior_sd.dtype)

        # The factor as a scale per coordinate times a unit lower-triangular matrix (as Pyro's
        # AutoMultivariateNormal): an optimiser's step on a correlation entry is then relative to its row's
        # scale; on the entries of the factor itself, steps of one size in hundreds of entries of a row can
        # multiply a small scale many times over within a few steps.
        start = start_tril() if "factor_noise_scale" not in pyro.get_param_store() else None
        loc = pyro.param("factor_noise_loc", start_loc)
        scale = pyro.param(
            "factor_noise_scale", lambda: start.diagonal(dim1=-2, dim2=-1).clone(), constraint=constraints.positive
        )
        unit = pyro.param(
            "factor_noise_tril",
            lambda: start / start.diagonal(dim1=-2, dim2=-1).unsqueeze(-1),
            constraint=constraints.unit_lower_cholesky,
        )
        tril = scale.unsqueeze(-1) * unit
        joint = PerClassMultivariateNormal(loc, scale_tril=tril, validate_args=False)
        u = pyro.sample("factor_noise", joint, infer={"is_auxiliary": True})
        w = u[..., : d * r].reshape(*u.shape[:-1], d, r)
        log_psi = u[..., d * r :]
        cov_factor = pyro.sample("cov_factor", dist.Delta(w, event_dim=2))
        if iso:
            # Delta's log_density is the change of variables psi = exp(u): log q(psi) = log q(u) - u.
            psi = pyro.sample("cov_diag", dist.Delta(log_psi[..., 0].exp(), log_density=-log_psi[..., 0]))
            return cov_factor, psi.unsqueeze(-1).expand(*psi.shape, d)
        cov_diag = pyro.sample("cov_diag", dist.Delta(log_psi.exp(), log_density=-log_psi.sum(-1), event_dim=1))
        return cov_factor, cov_diag

    def _mean_field_factor_sites(
        self, hyper: Tensors, init: Tensors, C: int, d: int, r: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Independent Normals over the factors and LogNormals over the noise, their scales started at the
        mean-field optimum of the curvature at the start."""
        w_loc = pyro.param("cov_factor_loc", lambda: init.get("cov_factor_loc", hyper["W0"].expand(C, d, r)).clone())
        # Scales start at the mean-field optimum of the curvature at the start (data's information + prior's).
        w_scale = pyro.param(
            "cov_factor_scale",
            lambda: _start_scale(init.get("cov_factor_information"), hyper["factor_scale"].expand(C, d, r)),
            constraint=constraints.positive,
        )
        cov_factor = pyro.sample("cov_factor", dist.Normal(w_loc, w_scale).to_event(2))
        if self.noise == "isotropic":
            psi_loc = pyro.param(
                "cov_diag_loc", lambda: init.get("noise_loc", hyper["log_psi0"].mean().expand(C)).clone()
            )
            psi_scale = pyro.param(
                "cov_diag_scale",
                lambda: _start_scale(init.get("noise_information"), hyper["psi_scale"].expand(C)),
                constraint=constraints.positive,
            )
            psi = pyro.sample("cov_diag", dist.LogNormal(psi_loc, psi_scale))
            cov_diag = psi.unsqueeze(-1).expand(*psi.shape, d)
        else:
            psi_loc = pyro.param(
                "cov_diag_loc", lambda: init.get("cov_diag_loc", hyper["log_psi0"].expand(C, d)).clone()
            )
            psi_scale = pyro.param(
                "cov_diag_scale",
                lambda: _start_scale(init.get("cov_diag_information"), hyper["psi_scale"].expand(C, d)),
                constraint=constraints.positive,
            )
            cov_diag = pyro.sample("cov_diag", dist.LogNormal(psi_loc, psi_scale).to_event(1))
        return cov_factor, cov_diag

    def guide_statistics(self, x: np.ndarray, y: np.ndarray, num_classes: int, t: ToTensor) -> Tensors:
        counts = np.bincount(y, minlength=num_classes).astype(float)
        sums = np.zeros((num_classes, x.shape[1]))
        np.add.at(sums, y, x)
        return {"class_count": t(counts), "class_mean": t(sums / np.maximum(counts, 1.0)[:, None])}

    def model_kwargs(self) -> dict[str, Any]:
        return {"noise": self.noise, "factor_guide": self.factor_guide}

    def dims(self) -> dict[str, list[str]]:
        return {"cov_diag": ["class"]} if self.noise == "isotropic" else {}

    def check_rank(self, rank: int, num_dims: int, what: str) -> None:
        if rank >= num_dims:
            raise ValueError(f"rank={rank} must be below the {num_dims} {what}")

    def default_learning_rate(self, init: str) -> float:
        # Started at its PCA, a larger step scrambles the factors before it settles.
        return 0.002 if init == "pca" else 0.05

    def initial_guide_params(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        *,
        pooled: tuple[np.ndarray, np.ndarray],
        class_concentration: float,
        prior_strength: float,
        shrinkage: float,
        rank: int,
    ) -> dict[str, np.ndarray]:
        return lowrank_initial_params(
            x,
            y,
            num_classes,
            S0=pooled[1],
            shrinkage=shrinkage,
            rank=rank,
            noise=self.noise,
            full_information=self.factor_guide == "full",
        )

    def reference_moments(
        self, exact: dict[str, np.ndarray]
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        where = "against NUTS only on a few pixels (benchmarks/generator_nuts_reference.py)"
        if self.factor_guide == "full":
            guide = (
                "with the full guide over the factors and noise, run to convergence, 97 % of its entries' means "
                "and sds matched, at the digits spec's 500 steps fewer: read these intervals as approximate unless "
                "the fit ran to convergence"
            )
            noise = "where it matched"
        else:
            guide = (
                "with this mean-field guide 84 % of its entries' means and sds matched at the digits spec's settings, "
                "the rest with sds 0.65-1.41 times NUTS's (the guide cannot hold the factors' correlations): read "
                "these intervals as approximate (factor_guide='full' run to convergence matched 97 %)"
            )
            noise = "where its means and sds mostly matched (a mean-field guide: read its intervals as approximate)"
        unchecked = {
            "loc": (
                "no closed form with a low-rank covariance; drawn from its exact conditional posterior given each "
                f"draw of the covariance, and checked {where}, where it matched"
            ),
            "cov_diag": f"no closed form with a low-rank covariance; checked {where}, {noise}",
            "cov_factor": (
                f"factors are identified only up to a rotation; the covariance they imply was checked {where}: {guide}"
            ),
        }
        return {}, unchecked

    def draws_from_trace(self, nodes: dict[str, Any], num: int, num_classes: int, d: int) -> Tensors:
        psi = nodes["cov_diag"]["value"]
        if self.noise == "isotropic":
            psi = psi.reshape(num, num_classes, 1).expand(num, num_classes, d)
        return {
            "cov_factor": nodes["cov_factor"]["value"].reshape(num, num_classes, d, -1),
            "cov_diag": psi.reshape(num, num_classes, d),
        }

    def prepare_draws(self, draws: Tensors) -> tuple[torch.Tensor, ...]:
        """Every draw's :func:`lowrank_whitening` pieces."""
        return lowrank_whitening(draws["cov_factor"], draws["cov_diag"])

    def draw_log_prob(self, draws: Tensors, s: int, x: torch.Tensor, prepared: Any) -> torch.Tensor:
        d_inv, whiten, logdet = (w[s] for w in prepared)
        return lowrank_log_prob(x.unsqueeze(0), draws["loc"][s], d_inv, whiten, logdet.unsqueeze(-1)).T

    def sample_from_draws(self, draws: Tensors, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loc = draws["loc"][owner, labels]
        eps = torch.randn_like(loc)
        W = draws["cov_factor"][owner, labels]
        z = torch.randn(len(loc), W.shape[-1], 1, device=loc.device, dtype=loc.dtype)
        return loc + (W @ z).squeeze(-1) + draws["cov_diag"][owner, labels].sqrt() * eps

    def raw_scale_draws(self, draws: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
        return {"cov_factor": draws["cov_factor"] * scale[:, None], "cov_diag": draws["cov_diag"] * scale**2}


def _start_scale(information: torch.Tensor | None, prior_scale: torch.Tensor) -> torch.Tensor:
    """A mean-field guide scale from the curvature, ``(information + 1 / prior_scale²)^(-1/2)``; without the data's
    information, a tenth of the prior's scale."""
    if information is None:
        return 0.1 * prior_scale.clone()
    return (information + prior_scale.square().reciprocal()).rsqrt()


#: Every covariance structure, by its ``covariance`` name.
COVARIANCES: dict[str, type[CovarianceStructure]] = {
    kind.name: kind for kind in (DiagCovariance, FullCovariance, LowRankCovariance)
}


def covariance_structure(
    covariance: str, noise: str = "diagonal", factor_guide: str = "mean_field"
) -> CovarianceStructure:
    """The structure named ``covariance`` ("diag", "full" or "lowrank"), with the low-rank ``noise`` and
    ``factor_guide``."""
    try:
        kind = COVARIANCES[covariance]
    except (KeyError, TypeError):
        raise ValueError(f"covariance must be 'diag', 'full' or 'lowrank', got {covariance!r}") from None
    return kind(noise, factor_guide)


def prior_parameters(
    m0: np.ndarray,
    S0: np.ndarray,
    *,
    covariance: Covariance,
    num_classes: int,
    class_concentration: float,
    prior_strength: float,
    shrinkage: float,
    rank: int,
    like: torch.Tensor,
) -> Tensors:
    """Prior hyperparameters as tensors (on ``like``'s device and dtype)."""
    t = lambda a: like.new_tensor(np.asarray(a, dtype=float))  # noqa: E731
    prior = {
        "class_concentration": t(np.full(num_classes, class_concentration)),
        "kappa0": t(prior_strength),
        "m0": t(m0),
        "sd0": t(np.sqrt(np.diag(S0))),
    }
    structure = covariance_structure(covariance)
    prior.update(
        structure.prior_hyperparameters(S0, prior_strength=prior_strength, shrinkage=shrinkage, rank=rank, t=t)
    )
    return prior


def exact_posterior(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    covariance: Literal["diag", "full"],
    class_concentration: float = 1.0,
    prior_strength: float = 1.0,
    shrinkage: float = 10.0,
    pooled_shrinkage: float | str = "auto",
    pooled: tuple[np.ndarray, np.ndarray] | None = None,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Closed-form posterior of the conjugate structures.

    Parameters
    ----------
    x : numpy.ndarray, shape (n_rows, n_features)
    y : numpy.ndarray of int, shape (n_rows,)
    num_classes : int
    covariance : {"diag", "full"}
    class_concentration, prior_strength, shrinkage : float
        As in :class:`~bayesgen.models.gaussian_generator.GaussianGenerator`.
    pooled_shrinkage : "auto" or float
        As in :func:`~bayesgen.models.gaussian_generator.pooled_statistics`.
    pooled : (m0, S0), optional
        Pooled statistics already computed by :func:`~bayesgen.models.gaussian_generator.pooled_statistics`.
    extra : (x_extra, weights), optional
        More rows, shape (n_extra, n_features), each counted in class c with
        weight ``weights[i, c]`` (n_extra, n_classes) — soft assignments of
        unlabelled rows (the M-step of
        :meth:`GaussianGenerator.fit <bayesgen.models.gaussian_generator.GaussianGenerator.fit>`'s EM).
        Their weighted sufficient statistics join each class's own.

    Returns
    -------
    dict
        ``weights_concentration`` (C,), ``loc`` mean (C, d) and ``kappa`` (C,);
        for "diag" ``shape``/``rate`` (C, d) of the Gamma posterior of the
        precisions, with ``precision_mean`` = shape/rate and ``loc_var`` the
        marginal variance of each location; for "full" ``df`` (C,) and
        ``scale`` (C, d, d) of the Wishart posterior, ``precision_mean`` =
        df·scale and ``loc_cov`` (C, d, d) the marginal covariance of each location.

    Raises
    ------
    ValueError
        ``covariance`` names no conjugate structure.
    """
    structure = covariance_structure(covariance)
    if not structure.conjugate:
        raise ValueError(f"covariance={covariance!r} has no closed-form posterior: use 'diag' or 'full'")
    m0, S0 = pooled if pooled is not None else pooled_statistics(x, y, num_classes, pooled_shrinkage=pooled_shrinkage)
    prior = structure.conjugate_prior(S0, shrinkage)
    d = x.shape[1]
    counts = np.bincount(y, minlength=num_classes).astype(float)
    if extra is not None:
        counts = counts + extra[1].sum(axis=0)
    out: dict[str, np.ndarray] = {"weights_concentration": class_concentration + counts}
    kappa = prior_strength + counts
    locs = np.empty((num_classes, d))
    parts = []
    for c in range(num_classes):
        xc = x[y == c]
        w = np.ones(len(xc))
        if extra is not None:
            xc, w = np.concatenate([xc, extra[0]]), np.concatenate([w, extra[1][:, c]])
        n = counts[c]
        mean = w @ xc / n if n > 0 else m0
        locs[c] = (prior_strength * m0 + n * mean) / kappa[c]
        parts.append(structure.conjugate_update(prior, xc - mean, w, n, mean - m0, kappa[c], prior_strength))
    out["loc"], out["kappa"] = locs, kappa
    out.update({key: np.stack([part[key] for part in parts]) for key in parts[0]})
    structure.conjugate_summary(out)
    return out


def predictive_joint_log_prob(pred: Tensors, covariance: str, x: torch.Tensor) -> torch.Tensor:
    """log p(x, y = c) under the exact posterior predictive ``pred`` of structure ``covariance``, (n_rows, n_classes).

    ``pred`` is :meth:`CovarianceStructure.predictive` of an exact posterior: the class weights' Dirichlet
    concentration and the per-class Student-t.
    """
    return covariance_structure(covariance).predictive_joint_log_prob(pred, x)

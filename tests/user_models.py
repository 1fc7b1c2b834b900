"""Small models written as a user would write them, in plain Pyro, with data simulators and ground truths.

Not a test module: ``tests/test_user_models.py`` runs each case through ``run_svi`` → ``to_datatree`` →
LOO → ``vi_khat`` → ``nuts_compare``. Every model builds its constants from the data (``x.new_tensor``)
and writes its linear predictors so that a plate over draws outside the model's plates broadcasts
(``(X * w).sum(-1)``, not ``X @ w``), which is what keeps the conversion to ArviZ vectorised.

Each :class:`UserCase` holds a model, a factory for a fresh guide, simulated data with the parameters that
made it, the fit's settings and, where one exists, the exact posterior (conjugate Beta-Binomial, Gaussian
linear regression and local-level model with known noise) or a quadrature of it (eight schools).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.contrib.easyguide import easy_guide
from pyro.infer import config_enumerate
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from torch.distributions import constraints


@dataclass
class UserCase:
    """One user model with its data, fit settings and what its posterior should be.

    Attributes
    ----------
    name : str
    model : callable
    make_guide : callable
        ``make_guide()`` → a fresh guide for ``model``.
    args, kwargs : tuple, dict
        The model's arguments for fitting.
    truth : dict of {str: Tensor}
        The parameters that simulated the data.
    fit : dict
        Keyword arguments of ``run_svi`` (steps, learning rate, loss, ...).
    full_kwargs : dict
        Keyword arguments that replace ``kwargs`` to evaluate on every row (a subsampling model's).
    dims : dict
        ``dims`` for ``to_datatree``.
    exact : dict of {str: (Tensor, Tensor)}
        Exact posterior mean and sd of sites, where the model has a closed form.
    point_estimate : bool
        The guide is a point estimate (AutoDelta): it has no posterior spread.
    """

    name: str
    model: Callable[..., Any]
    make_guide: Callable[[], Callable[..., Any]]
    args: tuple
    kwargs: dict = field(default_factory=dict)
    truth: dict[str, torch.Tensor] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    full_kwargs: dict | None = None
    dims: dict[str, list[str]] = field(default_factory=dict)
    exact: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    point_estimate: bool = False


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ hierarchical Beta-Binomial (rats)
def rats_model(
    trials: torch.Tensor, successes: torch.Tensor | None = None, prior: tuple[float, float] | None = None
) -> None:
    """theta_j ~ Beta(phi kappa, (1 - phi) kappa); y_j ~ Binomial(n_j, theta_j) (Gelman et al., BDA3 5.3).

    ``prior=(a, b)`` fixes the Beta's parameters (conjugate: the exact posterior is Beta(a + y, b + n − y));
    None puts BDA's hyperprior on them: phi ~ Beta(1, 1), kappa ~ Pareto(1, 1.5).
    """
    if prior is None:
        phi = pyro.sample("phi", dist.Beta(trials.new_tensor(1.0), trials.new_tensor(1.0)))
        kappa = pyro.sample("kappa", dist.Pareto(trials.new_tensor(1.0), trials.new_tensor(1.5)))
        a, b = phi * kappa, (1 - phi) * kappa
    else:
        a, b = trials.new_tensor(prior[0]), trials.new_tensor(prior[1])
    with pyro.plate("group", trials.shape[0]):
        theta = pyro.sample("theta", dist.Beta(a, b))
        pyro.sample("y", dist.Binomial(trials, theta), obs=successes)


def simulate_rats(
    num_groups: int = 12, phi: float = 0.2, kappa: float = 15.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Trials, successes (whole-number floats, as Pyro's Binomial takes them) and the simulated parameters."""
    gen = _generator(seed)
    trials = torch.randint(20, 52, (num_groups,), generator=gen).double()
    theta = torch._standard_gamma(torch.full((num_groups,), phi * kappa, dtype=torch.float64), generator=gen)
    rest = torch._standard_gamma(torch.full((num_groups,), (1 - phi) * kappa, dtype=torch.float64), generator=gen)
    theta = theta / (theta + rest)
    successes = torch.binomial(trials, theta, generator=gen)
    return (
        trials.float(),
        successes.float(),
        {"phi": torch.tensor(phi), "kappa": torch.tensor(kappa), "theta": theta.float()},
    )


def exact_beta_binomial(
    trials: torch.Tensor, successes: torch.Tensor, prior: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sd of each theta_j under a fixed Beta(a, b) prior: Beta(a + y_j, b + n_j − y_j)."""
    post = dist.Beta(prior[0] + successes.double(), prior[1] + (trials - successes).double())
    return post.mean, post.variance.sqrt()


# ------------------------------------------------------------ eight schools, hand-written guide
SCHOOL_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS_MU_SCALE = 10.0
SCHOOLS_TAU_SCALE = 5.0


def schools_model(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """mu ~ N(0, 10²), tau ~ HalfCauchy(5), theta_j = mu + tau eta_j with eta_j ~ N(0, 1); y_j ~ N(theta_j, σ_j²)."""
    mu = pyro.sample("mu", dist.Normal(sigma.new_tensor(0.0), SCHOOLS_MU_SCALE))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(SCHOOLS_TAU_SCALE)))
    with pyro.plate("school", sigma.shape[0]):
        eta = pyro.sample("eta", dist.Normal(sigma.new_tensor(0.0), 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def schools_guide(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Mean-field guide: mu normal, tau log-normal, eta_j normal; started away from the answer (mu at −10)."""
    mu_loc = pyro.param("mu_loc", sigma.new_tensor(-10.0))
    mu_scale = pyro.param("mu_scale", sigma.new_tensor(1.0), constraint=constraints.positive)
    tau_loc = pyro.param("tau_loc", sigma.new_tensor(0.0))
    tau_scale = pyro.param("tau_scale", sigma.new_tensor(0.5), constraint=constraints.positive)
    eta_loc = pyro.param("eta_loc", sigma.new_zeros(sigma.shape[0]))
    eta_scale = pyro.param("eta_scale", sigma.new_full((sigma.shape[0],), 0.5), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    with pyro.plate("school", sigma.shape[0]):
        pyro.sample("eta", dist.Normal(eta_loc, eta_scale))


def simulate_schools(mu: float = 5.0, tau: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    gen = _generator(seed)
    theta = mu + tau * torch.randn(len(SCHOOL_SIGMA), generator=gen)
    y = theta + SCHOOL_SIGMA * torch.randn(len(SCHOOL_SIGMA), generator=gen)
    return SCHOOL_SIGMA.clone(), y, {"mu": torch.tensor(mu), "tau": torch.tensor(tau), "theta": theta}


def schools_quadrature(sigma: torch.Tensor, y: torch.Tensor, num_points: int = 20000) -> dict[str, tuple]:
    """Exact posterior mean and sd of mu, tau and theta by quadrature over tau (BDA3 5.4).

    Given tau the model is Gaussian: y ~ N(0, diag(σ² + τ²) + 10² 11ᵀ) gives p(τ | y) up to a constant,
    and mu | τ, y and theta_j | mu, τ, y are normal, so each moment is a one-dimensional integral over τ.
    """
    sigma, y = sigma.double(), y.double()
    tau = torch.logspace(-4, 3, num_points, dtype=torch.float64)
    var = sigma**2 + tau[:, None] ** 2  # (T, J)
    cov = torch.diag_embed(var) + SCHOOLS_MU_SCALE**2
    log_post = (
        dist.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y)
        + dist.HalfCauchy(torch.tensor(SCHOOLS_TAU_SCALE, dtype=torch.float64)).log_prob(tau)
        + tau.log()
    )  # integrating in log tau
    w = torch.softmax(log_post, 0)
    v_mu = 1 / (1 / SCHOOLS_MU_SCALE**2 + (1 / var).sum(-1))
    m_mu = v_mu * (y / var).sum(-1)
    # theta_j | mu, tau, y is normal with mean a_j y_j + (1 − a_j) mu, a_j = τ²/(σ_j² + τ²);
    # average that over mu | τ, y.
    a = tau[:, None] ** 2 / var
    m_theta = a * y + (1 - a) * m_mu[:, None]
    v_theta = a * sigma**2 + (1 - a) ** 2 * v_mu[:, None]

    def moments(mean: torch.Tensor, variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = (w.reshape(-1, *[1] * (mean.dim() - 1)) * mean).sum(0)
        second = (w.reshape(-1, *[1] * (mean.dim() - 1)) * (variance + mean**2)).sum(0)
        return first, (second - first**2).sqrt()

    return {"mu": moments(m_mu, v_mu), "tau": moments(tau, torch.zeros_like(tau)), "theta": moments(m_theta, v_theta)}


# ------------------------------------------------------------ linear regression with known noise
LINREG_NOISE = 0.5
LINREG_PRIOR_SCALE = 2.0


def linreg_model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """w ~ N(0, 2² I); y_i ~ N(x_i · w, 0.5²). ``(X * w).sum(-1)`` broadcasts over leading draw dims."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), LINREG_PRIOR_SCALE).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), LINREG_NOISE), obs=y)


def simulate_linreg(num_rows: int = 40, correlation: float = 0.8, seed: int = 0) -> tuple:
    """A design with an intercept column and two correlated features, and y from known weights."""
    gen = _generator(seed)
    z = torch.randn(num_rows, 2, generator=gen)
    x2 = correlation * z[:, 0] + math.sqrt(1 - correlation**2) * z[:, 1]
    X = torch.stack([torch.ones(num_rows), z[:, 0], x2], -1)
    w = torch.tensor([0.5, 1.0, -1.0])
    y = (X * w).sum(-1) + LINREG_NOISE * torch.randn(num_rows, generator=gen)
    return X, y, {"w": w}


def exact_linreg(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and covariance of w (Gaussian prior and likelihood with known noise: conjugate)."""
    X, y = X.double(), y.double()
    precision = torch.eye(X.shape[-1], dtype=torch.float64) / LINREG_PRIOR_SCALE**2 + X.T @ X / LINREG_NOISE**2
    cov = torch.linalg.inv(precision)
    return cov @ X.T @ y / LINREG_NOISE**2, cov


# ------------------------------------------------------------ logistic regression (full and minibatched)
def logistic_model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """b ~ N(0, 2²), w ~ N(0, 2² I); y_i ~ Bernoulli(logit = b + x_i · w)."""
    b = pyro.sample("b", dist.Normal(X.new_tensor(0.0), 2.0))
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 2.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=b + (X * w).sum(-1)), obs=y)


def minibatch_logistic_model(X: torch.Tensor, y: torch.Tensor | None = None, subsample_size: int | None = None) -> None:
    """The same model fitted on minibatches: ``pyro.plate(..., subsample_size=subsample_size)`` draws the rows and
    scales their log-likelihood by N / subsample_size; ``subsample_size=None`` uses every row."""
    b = pyro.sample("b", dist.Normal(X.new_tensor(0.0), 2.0))
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 2.0).to_event(1))
    with pyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
        logits = b + (X[idx] * w).sum(-1)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y[idx] if y is not None else None)


def simulate_logistic(num_rows: int = 200, seed: int = 0) -> tuple:
    gen = _generator(seed)
    X = torch.randn(num_rows, 2, generator=gen)
    b, w = torch.tensor(-0.5), torch.tensor([1.5, -1.0])
    y = torch.bernoulli(torch.sigmoid(b + (X * w).sum(-1)), generator=gen)
    return X, y, {"b": b, "w": w}


# ------------------------------------------------------------ enumerated Gaussian mixture
MIXTURE_PRIOR_LOC = (-2.0, 2.0)  # asymmetric prior: no label switching, so NUTS chains agree


@config_enumerate
def mixture_model(y: torch.Tensor) -> None:
    """weights ~ Dirichlet(1, 1); loc_k ~ N(±2, 1); scale_k ~ LogNormal(0, 1); z_i ~ Cat(weights) (summed out);
    y_i ~ N(loc_{z_i}, scale_{z_i}²)."""
    weights = pyro.sample("weights", dist.Dirichlet(y.new_ones(2)))
    loc = pyro.sample("loc", dist.Normal(y.new_tensor(MIXTURE_PRIOR_LOC), 1.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(y.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("y", dist.Normal(loc[z], scale[z]), obs=y)


def simulate_mixture(seed: int = 0) -> tuple:
    gen = _generator(seed)
    y = torch.cat([torch.randn(60, generator=gen) * 0.8 - 2.5, torch.randn(40, generator=gen) * 0.6 + 2.0])
    return y, {"weights": torch.tensor([0.6, 0.4]), "loc": torch.tensor([-2.5, 2.0]), "scale": torch.tensor([0.8, 0.6])}


def mixture_guide(kind: str) -> Callable[[], Any]:
    """AutoDelta or AutoNormal on the continuous sites, with ``z`` hidden (Pyro's ``poutine.block`` idiom)."""
    auto = {"delta": AutoDelta, "normal": AutoNormal}[kind]

    def make() -> Any:
        start = init_to_value(values={"loc": torch.tensor(MIXTURE_PRIOR_LOC)})
        return auto(poutine.block(mixture_model, hide=["z"]), init_loc_fn=start)

    return make


# ------------------------------------------------------------ sparse regression (horseshoe), MAP
def horseshoe_model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Horseshoe: tau ~ HalfCauchy(1), lambda_d ~ HalfCauchy(1), w_d ~ N(0, (tau lambda_d)²),
    sigma ~ HalfNormal(1); y_i ~ N(x_i · w, sigma²)."""
    ones = X.new_ones(X.shape[-1])
    tau = pyro.sample("tau", dist.HalfCauchy(X.new_tensor(1.0)))
    sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(1.0)))
    lam = pyro.sample("lam", dist.HalfCauchy(ones).to_event(1))
    w = pyro.sample("w", dist.Normal(0.0 * ones, tau.unsqueeze(-1) * lam).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), sigma), obs=y)


def simulate_horseshoe(num_rows: int = 60, num_features: int = 10, seed: int = 0) -> tuple:
    gen = _generator(seed)
    X = torch.randn(num_rows, num_features, generator=gen)
    w = torch.zeros(num_features)
    w[:3] = torch.tensor([2.0, -1.5, 1.0])
    y = X @ w + 0.5 * torch.randn(num_rows, generator=gen)
    return X, y, {"w": w, "sigma": torch.tensor(0.5)}


# ------------------------------------------------------------ local-level time series, EasyGuide
LEVEL_SCALE = 0.3
LEVEL_NOISE = 0.5


def local_level_model(y: torch.Tensor) -> None:
    """Random walk observed in noise: level_t = Σ_{s≤t} 0.3 eps_s, eps ~ N(0, I); y_t ~ N(level_t, 0.5²)."""
    eps = pyro.sample("eps", dist.Normal(y.new_zeros(y.shape[-1]), 1.0).to_event(1))
    level = pyro.deterministic("level", (LEVEL_SCALE * eps).cumsum(-1))
    with pyro.plate("time", y.shape[-1]):
        pyro.sample("y", dist.Normal(level, LEVEL_NOISE), obs=y)


@easy_guide(local_level_model)
def local_level_guide(self: Any, y: torch.Tensor) -> None:
    """EasyGuide: one full-rank Gaussian over the innovations, given by its mean and a Cholesky factor."""
    group = self.group(match="eps")
    loc = pyro.param("eps_loc", y.new_zeros(group.event_shape))
    scale_tril = pyro.param(
        "eps_scale_tril", 0.5 * torch.eye(group.event_shape[0], dtype=y.dtype), constraint=constraints.lower_cholesky
    )
    group.sample("eps_joint", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def simulate_local_level(num_times: int = 15, seed: int = 0) -> tuple:
    gen = _generator(seed)
    eps = torch.randn(num_times, generator=gen)
    level = (LEVEL_SCALE * eps).cumsum(-1)
    return level + LEVEL_NOISE * torch.randn(num_times, generator=gen), {"eps": eps, "level": level}


def exact_local_level(y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Exact posterior mean and sd of the innovations and the level (Gaussian with known scales)."""
    y = y.double()
    n = y.shape[-1]
    A = LEVEL_SCALE * torch.tril(torch.ones(n, n, dtype=torch.float64))  # level = A eps
    precision = torch.eye(n, dtype=torch.float64) + A.T @ A / LEVEL_NOISE**2
    cov = torch.linalg.inv(precision)
    mean = cov @ A.T @ y / LEVEL_NOISE**2
    level_cov = A @ cov @ A.T
    return {"eps": (mean, cov.diagonal().sqrt()), "level": (A @ mean, level_cov.diagonal().sqrt())}


# ------------------------------------------------------------ the cases
def make_cases() -> dict[str, UserCase]:
    """Every user case, keyed by name (data simulated with fixed seeds)."""
    cases: dict[str, UserCase] = {}

    trials, successes, truth = simulate_rats(seed=1)
    cases["rats"] = UserCase(
        "rats",
        rats_model,
        lambda: AutoNormal(rats_model),
        (trials, successes),
        truth=truth,
        fit=dict(num_steps=600, learning_rate=0.05, max_plate_nesting=1, average_last=200),
        dims={"theta": ["group"], "y": ["group"]},
    )
    prior = (3.0, 12.0)
    cases["rats_conjugate"] = UserCase(
        "rats_conjugate",
        rats_model,
        lambda: AutoNormal(rats_model),
        (trials, successes),
        {"prior": prior},
        truth=truth,
        fit=dict(
            num_steps=400,
            learning_rate=0.05,
            num_particles=4,
            vectorize_particles=True,
            max_plate_nesting=1,
            average_last=100,
        ),
        dims={"theta": ["group"], "y": ["group"]},
        exact={"theta": exact_beta_binomial(trials, successes, prior)},
    )

    sigma, y, truth = simulate_schools(seed=2)
    cases["schools"] = UserCase(
        "schools",
        schools_model,
        lambda: schools_guide,
        (sigma, y),
        truth=truth,
        fit=dict(
            num_steps=800,
            learning_rate=0.05,
            num_particles=8,
            vectorize_particles=True,
            max_plate_nesting=1,
            average_last=200,
        ),
        dims={"eta": ["school"], "theta": ["school"], "y": ["school"]},
        exact=schools_quadrature(sigma, y),
    )

    X, y, truth = simulate_linreg(seed=3)
    mean, cov = exact_linreg(X, y)
    for auto in (AutoDiagonalNormal, AutoMultivariateNormal):
        name = f"linreg_{'diag' if auto is AutoDiagonalNormal else 'mvn'}"
        cases[name] = UserCase(
            name,
            linreg_model,
            lambda auto=auto: auto(linreg_model, init_scale=0.05),
            (X, y),
            truth=truth,
            fit=dict(
                num_steps=400,
                learning_rate=0.05,
                num_particles=4,
                vectorize_particles=True,
                max_plate_nesting=1,
                average_last=150,
            ),
            dims={"w": ["coef"], "y": ["data"]},
            exact={"w": (mean, cov.diagonal().sqrt())},
        )

    X, y, truth = simulate_logistic(seed=4)
    cases["logistic"] = UserCase(
        "logistic",
        logistic_model,
        lambda: AutoMultivariateNormal(logistic_model),
        (X, y),
        truth=truth,
        fit=dict(
            num_steps=400,
            learning_rate=0.05,
            num_particles=2,
            vectorize_particles=True,
            max_plate_nesting=1,
            average_last=150,
        ),
        dims={"w": ["coef"], "y": ["data"]},
    )
    cases["logistic_minibatch"] = UserCase(
        "logistic_minibatch",
        minibatch_logistic_model,
        lambda: AutoNormal(minibatch_logistic_model),
        (X, y),
        {"subsample_size": 50},
        truth=truth,
        full_kwargs={"subsample_size": None},
        fit=dict(num_steps=600, learning_rate=0.03, max_plate_nesting=1, average_last=300),
        dims={"w": ["coef"], "y": ["data"]},
    )

    y, truth = simulate_mixture(seed=5)
    for kind in ("delta", "normal"):
        cases[f"mixture_{kind}"] = UserCase(
            f"mixture_{kind}",
            mixture_model,
            mixture_guide(kind),
            (y,),
            truth=truth,
            fit=dict(num_steps=300, learning_rate=0.05, loss="trace_enum", max_plate_nesting=1),
            dims={"y": ["data"], "z": ["data"]},
            point_estimate=kind == "delta",
        )

    X, y, truth = simulate_horseshoe(seed=6)
    cases["horseshoe"] = UserCase(
        "horseshoe",
        horseshoe_model,
        lambda: AutoDelta(horseshoe_model),
        (X, y),
        truth=truth,
        fit=dict(num_steps=600, learning_rate=0.05, max_plate_nesting=1),
        dims={"y": ["data"]},
        point_estimate=True,
    )

    y, truth = simulate_local_level(seed=7)
    cases["local_level"] = UserCase(
        "local_level",
        local_level_model,
        lambda: local_level_guide,
        (y,),
        truth=truth,
        # One particle: with vectorised particles this EasyGuide's fit lands far from the exact posterior.
        fit=dict(num_steps=800, learning_rate=0.05, max_plate_nesting=1, average_last=300),
        dims={"eps": ["time"], "level": ["time"], "y": ["time"]},
        exact=exact_local_level(y),
    )
    return cases

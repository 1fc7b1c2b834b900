"""A conjugate normal model and its guide, shared by the runner's tests (not a test module)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


def normal_model(y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    """mu ~ Normal(0, 10); y_i ~ Normal(mu, 1), in the data's dtype, with an optional row subsample."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
    with pyro.plate("obs", y.shape[0], subsample=subsample) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def normal_guide(y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    """Normal guide for ``mu``, starting at Normal(-3, 1)."""
    loc = pyro.param("loc", y.new_tensor(-3.0))
    scale = pyro.param("scale", y.new_tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def exact_normal_posterior(y: torch.Tensor) -> tuple[float, float]:
    """Mean and sd of mu's posterior (Normal(0, 10²) prior, unit-variance likelihood: conjugate)."""
    precision = 1 / 100 + len(y)
    return float(y.sum() / precision), math.sqrt(1 / precision)

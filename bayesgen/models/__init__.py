"""bayesgen's models: one module per model, each a Pyro model/guide pair plus an estimator.

Each name is imported from its model's module the first time it is used (a module ``__getattr__``, PEP 562):
``from bayesgen.models import VAE`` loads the VAE's module and no other model's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_SOURCES = {
    "BayesianEstimator": "bayesgen.models._base",
    "ModelFileError": "bayesgen.models._base",
    "NotEnoughMemoryError": "bayesgen.models._base",
    "NotFittedError": "bayesgen.models._base",
    "BetaBinomialTest": "bayesgen.models.ab_test",
    "MixtureAnomalyDetector": "bayesgen.models.anomaly",
    "GaussianGenerator": "bayesgen.models.gaussian_generator",
    "ProdLDA": "bayesgen.models.topic",
    "VAE": "bayesgen.models.vae",
}

if TYPE_CHECKING:
    from bayesgen.models._base import BayesianEstimator, ModelFileError, NotEnoughMemoryError, NotFittedError
    from bayesgen.models.ab_test import BetaBinomialTest
    from bayesgen.models.anomaly import MixtureAnomalyDetector
    from bayesgen.models.gaussian_generator import GaussianGenerator
    from bayesgen.models.topic import ProdLDA
    from bayesgen.models.vae import VAE

__all__ = [
    "BayesianEstimator",
    "BetaBinomialTest",
    "GaussianGenerator",
    "MixtureAnomalyDetector",
    "ModelFileError",
    "NotEnoughMemoryError",
    "NotFittedError",
    "ProdLDA",
    "VAE",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its model's module on first use, and keep it here for the next."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""bayesgen: Bayesian generative models in Pyro, with ArviZ 1.x output.

The public API is re-exported here; see the README for a tour and docs/ for the user's guide.

Importing bayesgen loads no torch, Pyro or ArviZ: each public name is imported from its module the first time
it is used (a module ``__getattr__``, PEP 562), so ``bayesgen --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for --help

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_SOURCES = {
    "summary": "bayesgen.arviz",
    "to_datatree": "bayesgen.arviz",
    "augment": "bayesgen.augment",
    "CheckpointError": "bayesgen.infer",
    "ConvergenceCheck": "bayesgen.infer",
    "IndexBatches": "bayesgen.infer",
    "NonFiniteLossError": "bayesgen.infer",
    "SVIResult": "bayesgen.infer",
    "SVIRunner": "bayesgen.infer",
    "run_svi": "bayesgen.infer",
    "VAE": "bayesgen.models",
    "BayesianEstimator": "bayesgen.models",
    "BetaBinomialTest": "bayesgen.models",
    "GaussianGenerator": "bayesgen.models",
    "MixtureAnomalyDetector": "bayesgen.models",
    "ModelFileError": "bayesgen.models",
    "NotEnoughMemoryError": "bayesgen.models",
    "NotFittedError": "bayesgen.models",
    "ProdLDA": "bayesgen.models",
}

#: Submodules that ``bayesgen.<name>`` reaches after a plain ``import bayesgen``.
_SUBMODULES = frozenset(
    {
        "arviz",
        "augment",
        "cli",
        "datasets",
        "diagnostics",
        "infer",
        "io",
        "models",
        "plots",
        "registry",
        "report",
        "runs",
        "specs",
        "text",
        "tour",
    }
)

if TYPE_CHECKING:
    from typing import Any

    from bayesgen.arviz import summary, to_datatree
    from bayesgen.augment import augment
    from bayesgen.infer import (
        CheckpointError,
        ConvergenceCheck,
        IndexBatches,
        NonFiniteLossError,
        SVIResult,
        SVIRunner,
        run_svi,
    )
    from bayesgen.models import (
        VAE,
        BayesianEstimator,
        BetaBinomialTest,
        GaussianGenerator,
        MixtureAnomalyDetector,
        ModelFileError,
        NotEnoughMemoryError,
        NotFittedError,
        ProdLDA,
    )

__all__ = [
    "BayesianEstimator",
    "BetaBinomialTest",
    "CheckpointError",
    "GaussianGenerator",
    "ConvergenceCheck",
    "IndexBatches",
    "MixtureAnomalyDetector",
    "ModelFileError",
    "NonFiniteLossError",
    "NotEnoughMemoryError",
    "NotFittedError",
    "ProdLDA",
    "SVIResult",
    "SVIRunner",
    "VAE",
    "__version__",
    "augment",
    "run_svi",
    "summary",
    "to_datatree",
]


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use, and keep it here for the next."""
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)


class _Package(types.ModuleType):
    """The bayesgen package, whose public names win over same-named submodules.

    Importing a submodule binds it as an attribute of its package; ``bayesgen.augment`` stays the function
    :func:`bayesgen.augment.augment` (as ``from bayesgen import augment`` promises) however the module
    ``bayesgen.augment`` came to be imported.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _SOURCES.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

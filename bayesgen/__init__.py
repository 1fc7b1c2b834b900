"""bayesgen: Bayesian generative models in Pyro, with ArviZ 1.x output.

The public API is re-exported here; see the README for a tour and docs/ for the user's guide.
"""

__version__ = "0.1.0"

from bayesgen.arviz import summary, to_datatree  # noqa: E402
from bayesgen.augment import augment  # noqa: E402
from bayesgen.infer import (  # noqa: E402
    CheckpointError,
    ConvergenceCheck,
    IndexBatches,
    NonFiniteLossError,
    SVIResult,
    run_svi,
)
from bayesgen.models import (  # noqa: E402
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
    "VAE",
    "__version__",
    "augment",
    "run_svi",
    "summary",
    "to_datatree",
]

"""bayesgen's models: one module per model, each a Pyro model/guide pair plus an estimator."""

from bayesgen.models._base import BayesianEstimator, ModelFileError, NotEnoughMemoryError, NotFittedError
from bayesgen.models.ab_test import BetaBinomialTest
from bayesgen.models.anomaly import MixtureAnomalyDetector
from bayesgen.models.gaussian_generator import GaussianGenerator
from bayesgen.models.topic import ProdLDA
from bayesgen.models.vae import VAE

__all__ = ["BayesianEstimator", "BetaBinomialTest", "GaussianGenerator", "MixtureAnomalyDetector", "ModelFileError", "NotEnoughMemoryError",
           "NotFittedError", "ProdLDA", "VAE"]

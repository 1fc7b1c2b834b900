"""The models bayesgen knows, each under one name.

A model's name is the ``[run] model`` of its specs, its estimator's ``_model_name`` and its key here.
Its :class:`ModelEntry` says everything the rest of bayesgen needs to know about it: the estimator
class, the spec recipe (which ``[data]`` and ``[report]`` keys a spec may hold, the function that
fits a spec), the report's title and description, whether its guide is amortised, its tour spec and
its tutorial. Specs, the tour, the report, :func:`bayesgen.diagnostics.report.diagnose`, the command line
and the coverage tests read this registry; nothing else keeps a list of models.

Importing this module loads no torch: the estimator class and the spec recipe are named by
``"module:attribute"`` strings and imported the first time they are asked for.

Adding a model is one module under ``bayesgen/models/`` (its estimator's ``_model_name`` the new
name, its spec recipe ``fit_<name>_spec`` next to the estimator), one entry in :data:`MODELS`, one spec
``models/<tour_spec>.toml``, one test file ``tests/test_<name>.py`` and one tutorial
``tutorials/<tutorial>.py``; ``tests/test_registry.py`` fails until each of them exists.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for --help
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

__all__ = ["ModelEntry", "MODELS", "get", "entry_for", "names"]


def _resolve(target: str) -> Any:
    """The object a ``"module:attribute"`` string names, imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class ModelEntry:
    """One model: its estimator, spec recipe, report text, tour spec and tutorial.

    Parameters
    ----------
    name : str
        The model's one name: the ``[run] model`` of its specs and its estimator's ``_model_name``.
    estimator : str
        The estimator class as ``"module:Class"`` (imported by :meth:`estimator_class`).
    spec_fit : str
        The spec recipe as ``"module:function"``: ``function(spec, device, progress, fit_kwargs)``
        loads the spec's data, fits the estimator and returns a :class:`bayesgen.runs.spec.SpecFit`.
        It lives in the model's module, next to the estimator.
    title : str
        The heading of the model's section in the HTML report.
    description : str
        The model in a few sentences, under that heading.
    data_keys : iterable of str
        The ``[data]`` keys its specs may hold, beyond ``source`` and ``description``.
    report_keys : iterable of str, default ()
        The ``[report]`` keys only this model reads; another model's spec may not hold them.
    smoke_report : mapping of str to int, default {}
        Caps on this model's ``[report]`` counts in the tour's smoke run (:func:`bayesgen.tour.smoke_spec`).
    amortised : bool, default False
        The guide is an encoder network over rows, trained in epochs of minibatches: the fit
        stops by epochs or early stopping, not at ``num_steps``.
    tour_spec : str
        The stem of its spec in ``models/`` that the tour fits.
    tutorial : str, optional
        The stem of its tutorial in ``tutorials/``; default ``name``.

    Examples
    --------
    >>> from bayesgen.registry import get
    >>> get("topic").estimator
    'bayesgen.models.topic:ProdLDA'
    """

    __slots__ = (
        "name",
        "estimator",
        "spec_fit",
        "title",
        "description",
        "data_keys",
        "report_keys",
        "smoke_report",
        "amortised",
        "tour_spec",
        "tutorial",
    )

    def __init__(
        self,
        name: str,
        *,
        estimator: str,
        spec_fit: str,
        title: str,
        description: str,
        data_keys: Iterable[str],
        report_keys: Iterable[str] = (),
        smoke_report: Mapping[str, int] | None = None,
        amortised: bool = False,
        tour_spec: str,
        tutorial: str | None = None,
    ) -> None:
        self.name = name
        self.estimator = estimator
        self.spec_fit = spec_fit
        self.title = title
        self.description = description
        self.data_keys = frozenset(data_keys)
        self.report_keys = frozenset(report_keys)
        self.smoke_report = dict(smoke_report or {})
        self.amortised = amortised
        self.tour_spec = tour_spec
        self.tutorial = name if tutorial is None else tutorial

    def __repr__(self) -> str:
        return f"ModelEntry({self.name!r}, estimator={self.estimator!r})"

    @property
    def module(self) -> str:
        """The dotted name of the estimator's module, e.g. ``"bayesgen.models.topic"``."""
        return self.estimator.partition(":")[0]

    def estimator_class(self) -> type:
        """The estimator class, imported (with torch and Pyro) on first use."""
        return _resolve(self.estimator)

    def fit_recipe(self) -> Callable[..., Any]:
        """The spec recipe, imported on each call (so a test can replace it in its module)."""
        return _resolve(self.spec_fit)


def _entries(*entries: ModelEntry) -> dict[str, ModelEntry]:
    return {entry.name: entry for entry in entries}


#: Every model, by name, in the tour's order.
MODELS: dict[str, ModelEntry] = _entries(
    ModelEntry(
        "ab_test",
        estimator="bayesgen.models.ab_test:BetaBinomialTest",
        spec_fit="bayesgen.models.ab_test:fit_ab_test_spec",
        title="Beta-Binomial A/B(/n) test",
        description=(
            "Each variant's conversion rate gets a Beta prior and a Binomial likelihood. The posterior gives "
            "the probability that each variant is best, the expected loss of choosing it, and the lift over "
            "the control with a credible interval. The model is conjugate, so SVI is checked against the "
            "exact posterior."
        ),
        data_keys={"format", "variant_col", "successes_col", "trials_col", "outcome_col"},
        report_keys={"control"},
        tour_spec="ab_resume_callbacks",
    ),
    ModelEntry(
        "gaussian_generator",
        estimator="bayesgen.models.gaussian_generator:GaussianGenerator",
        spec_fit="bayesgen.models.gaussian_generator:fit_gaussian_generator_spec",
        title="Gaussian class-conditional generator",
        description=(
            "The Bayes classifier used generatively: class proportions p(y) with a Dirichlet prior and one "
            "Gaussian p(x | y) per class, here with a low-rank-plus-noise covariance shrunk toward the pooled "
            "one. It samples new labelled rows (generative data augmentation) and classifies by p(y | x). "
            "TSTR = trained on synthetic, tested on real."
        ),
        data_keys={"scale", "label", "test_fraction"},
        report_keys={"image_shape"},
        tour_spec="gaussian_digits",
    ),
    ModelEntry(
        "vae",
        estimator="bayesgen.models.vae:VAE",
        spec_fit="bayesgen.models.vae:fit_vae_spec",
        title="Variational autoencoder",
        description=(
            "A latent z ~ Normal(0, I) per image, decoded by a network into pixel probabilities; an encoder "
            "network gives the amortised guide q(z | x). Conditional on the digit label, so it samples a "
            "chosen class. Pictures: samples, reconstructions of held-out images, the latent space and an "
            "interpolation."
        ),
        data_keys={"scale", "label", "test_fraction", "max_train_rows"},
        report_keys={"iwae_samples", "iwae_rows", "elbo_samples"},
        smoke_report={"iwae_samples": 20, "iwae_rows": 100},
        amortised=True,
        tour_spec="vae_digits",
    ),
    ModelEntry(
        "topic",
        estimator="bayesgen.models.topic:ProdLDA",
        spec_fit="bayesgen.models.topic:fit_topic_spec",
        title="Neural topic model (ProdLDA)",
        description=(
            "Each document mixes topics with proportions from a logistic-normal approximation of a Dirichlet; "
            "each topic is a distribution over words (a product of experts in ProdLDA). An encoder network "
            "gives the amortised guide. Scores: held-out NPMI coherence, topic diversity and perplexity."
        ),
        data_keys={
            "format",
            "text_column",
            "pattern",
            "vocabulary",
            "stop_words",
            "min_df",
            "max_df",
            "max_features",
            "test_fraction",
        },
        report_keys={"top_n"},
        amortised=True,
        tour_spec="topic_python_help",
        tutorial="topic_model",
    ),
    ModelEntry(
        "anomaly",
        estimator="bayesgen.models.anomaly:MixtureAnomalyDetector",
        spec_fit="bayesgen.models.anomaly:fit_anomaly_spec",
        title="Mixture anomaly detector",
        description=(
            "Normal behaviour is a mixture of Gaussian components; a broad anomaly component with a small "
            "prior weight absorbs rows that fit none of them. The posterior probability of the anomaly "
            "component is each row's anomaly probability; the anomaly fraction has its own posterior."
        ),
        data_keys={"label", "anomaly_value", "columns"},
        tour_spec="anomaly_breast_cancer",
    ),
)


def names() -> tuple[str, ...]:
    """The registered models' names, in the tour's order."""
    return tuple(MODELS)


def get(name: str) -> ModelEntry:
    """The entry of the model called ``name``.

    Parameters
    ----------
    name : str
        A registered model's name (a spec's ``[run] model``).

    Returns
    -------
    ModelEntry

    Raises
    ------
    ValueError
        No model is registered under ``name``; the message lists those that are.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models are {sorted(MODELS)}")
    return MODELS[name]


def entry_for(estimator: object) -> ModelEntry | None:
    """The entry of an estimator (or estimator class) by its ``_model_name``; None for a model not registered.

    Parameters
    ----------
    estimator : BayesianEstimator or type

    Returns
    -------
    ModelEntry or None
    """
    cls = estimator if isinstance(estimator, type) else type(estimator)
    return MODELS.get(getattr(cls, "_model_name", None))

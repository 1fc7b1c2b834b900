"""Gaussian class-conditional generator: the Bayes classifier used generatively.

Generative story, for classes c = 1..C and rows i = 1..n::

    weights           ~ Dirichlet(class_concentration, ..., class_concentration)
    loc_c, cov_c      ~ prior shrinking toward the pooled within-class estimate (below)
    y_i               ~ Categorical(weights)
    x_i | y_i = c     ~ MultivariateNormal(loc_c, cov_c)

The priors shrink every class toward the *pooled* statistics of the training
data (pooled mean ``m0``, pooled within-class covariance ``S0``), so a class
with few rows borrows strength from the others and 784-pixel images stay
well-posed. ``prior_strength`` (κ0) and ``shrinkage`` are pseudo-counts:

``covariance="diag"``  (Normal-Gamma, conjugate)
    precision_cj ~ Gamma(a0, a0' S0_jj) with a0 = 1 + shrinkage/2, so E[1/precision] = S0_jj;
    loc_cj | precision ~ Normal(m0_j, 1/sqrt(κ0 precision_cj)).
``covariance="full"``  (Normal-Wishart, conjugate)
    precision_c ~ Wishart(ν0, V0) with ν0 = d + 1 + shrinkage and E[precision_c^-1] = S0;
    loc_c | precision_c ~ MultivariateNormal(m0, (κ0 precision_c)^-1).
``covariance="lowrank"``  (rank r plus diagonal; SVI only)
    cov_c = W_c W_cᵀ + diag(ψ_c); W_c ~ Normal(W0, factor_scale) around the pooled
    principal factors W0; ψ_c ~ LogNormal(log ψ0, 0.5); loc_c ~ Normal(m0, sqrt(S0_jj / κ0)).

The Dirichlet-Categorical part is conjugate too. For the conjugate structures
:func:`exact_posterior` gives the posterior in closed form (used by the tests
as ground truth and by ``method="exact"``). The guide is mean-field: Dirichlet
for the weights; Normal (diag, lowrank) or MultivariateNormal (full) for the
locations; Gamma, Wishart or LogNormal/Normal for the covariance parts. For
"diag" and "lowrank" it is fitted by SVI with Trace_ELBO, minibatched over
rows; for "full" it holds the exact posterior's marginals (SVI on the Wishart
factor is numerically unstable, so ``method="exact"`` is required).

With ``method="exact"``, ``sample``, ``predict_proba`` and ``score_samples``
use the exact posterior predictive — a (multivariate) Student-t per class and
Dirichlet-Categorical class weights — so nothing is sampled from parameter
draws. The low-rank likelihood is :class:`ClassLowRankNormal`, which
factorises each class's covariance once instead of once per row.

Features are standardised inside the estimator (minus the mean, divided by
the pooled within-class sd; the transform is saved with the model), so the
model, its priors and ``to_arviz`` live on that standardised scale while
``sample``, ``class_means`` and ``score_samples`` (Jacobian included) answer
on the raw scale. Bounded features (pixels in [0, 1]) are modelled as
Gaussian and *samples are clipped* to ``clip`` (default: none). The Gaussian puts some mass
outside the bounds; clipping piles it onto the bound, which for images matches
the many pixels that sit exactly at 0. Features that are constant in the
training data (image borders) are an error by default; with
``constant_features="keep"`` they are held out of the Gaussian, reproduced
exactly in samples, and ignored by the densities.

Principal subspace (``subspace=D``)
    For images with few labelled rows, the classes can be modelled in the
    first D principal components of the training rows instead (computed on the
    features' own scale, centred but not standardised — so use it for features
    in one unit, such as pixels). The remaining directions are one shared
    isotropic Gaussian whose variance is the mean discarded eigenvalue
    (probabilistic PCA's maximum-likelihood noise, Tipping & Bishop 1999)::

        x = centre + U z + e,   z | y = c ~ the class model above (on D scores),
                                 e ~ Normal(0, residual_variance) on the d - D
                                     directions orthogonal to U

    The basis U and the residual variance are point estimates (empirical
    Bayes); the class model on the scores is the Bayesian one above, exact or
    SVI. The residual is shared by all classes, so it leaves ``predict_proba``
    unchanged; ``score_samples`` adds its log density and ``sample`` its noise.
    Why: with 20 MNIST digits per class (three random splits, the first 5,000
    test digits; ``benchmarks/RESULTS.md``), a full covariance in 717 pixel
    dimensions classifies at 0.67-0.71, below logistic regression on the same
    rows (0.74-0.77), and its samples lower that classifier's accuracy by about
    2 points; in 30 components it classifies at 0.81-0.82 and its samples
    change that accuracy by about zero (-0.4 to +0.9 over split sets). With
    all 60,000 training digits, a classifier trained on its samples alone
    scores 0.854 against 0.738. ``to_arviz`` reports the class model on the
    scores: its log-likelihood omits the residual's term, which is the same
    for every posterior draw, so compare models by LOO only at one ``subspace``.

This module holds the story (``model``, ``guide``) and the estimator. What differs between the
covariance structures (their priors, guide factors, conjugate updates, predictive densities and
samplers) is one class per structure in ``bayesgen.models._gaussian_covariance``, looked up by name;
the per-class distributions are in ``bayesgen.models._gaussian_distributions`` and the pooled
statistics, Ledoit-Wolf shrinkage and principal subspace in ``bayesgen.models._gaussian_algebra``.
Their public names are importable from here.

References
----------
Murphy (2007), Conjugate Bayesian analysis of the Gaussian distribution.
Friedman (1989), Regularized discriminant analysis, JASA 84(405).
Tipping & Bishop (1999), Probabilistic principal component analysis, JRSS B 61(3).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from bayesgen._labels import sample_class_index
from bayesgen._runtime import as_feature_matrix, check_count, check_labels, check_real, seeded, to_numpy
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.models._base import BayesianEstimator

# The distributions, the shared statistics and the covariance structures live in their own modules;
# their public names are this module's too.
from bayesgen.models._gaussian_algebra import (
    ledoit_wolf_intensity,
    lowrank_initial_params,
    off_subspace,
    pooled_statistics,
    principal_subspace,
)
from bayesgen.models._gaussian_covariance import (
    Covariance,
    CovarianceStructure,
    covariance_structure,
    exact_posterior,
    prior_parameters,
)
from bayesgen.models._gaussian_distributions import (
    ClassLowRankNormal,
    ClassMultivariateNormal,
    quiet_wishart,
    row_chunks,
)

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.runs.spec import SpecFit

__all__ = [
    "ClassLowRankNormal",
    "ClassMultivariateNormal",
    "GaussianGenerator",
    "exact_posterior",
    "guide",
    "model",
    "pooled_statistics",
    "principal_subspace",
    "ledoit_wolf_intensity",
    "lowrank_initial_params",
    "validate_xy",
    "fit_gaussian_generator_spec",
]

DIMS = {
    "weights": ["class"],
    "loc": ["class", "feature"],
    "precision": ["class", "feature"],
    "cov_diag": ["class", "feature"],
    "cov_factor": ["class", "feature", "factor"],
    "y": ["row"],
    "x": ["row"],
    "x_unlabelled": ["unlabelled_row"],
}


# --------------------------------------------------------------------- model
def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows per class, shape (num_classes,), from class indices ``y`` (int64, shape (n_rows,))."""
    return torch.bincount(y, minlength=num_classes)


def model(
    x: torch.Tensor,
    y: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    hyper: dict[str, torch.Tensor],
    covariance: Covariance,
    num_classes: int,
    init: dict[str, torch.Tensor] | None = None,
    noise: str = "diagonal",
    factor_guide: str = "mean_field",
    x_unlabelled: torch.Tensor | None = None,
) -> None:
    """Class-conditional Gaussian model.

    Parameters
    ----------
    x : Tensor, shape (n_rows, n_features)
    y : Tensor of int64, shape (n_rows,)
        Class index of every row.
    subsample : Tensor of int64, optional
        Rows of this minibatch (given by the SVI runner).
    hyper : dict of Tensor
        Prior hyperparameters, from :func:`prior_parameters`; for "lowrank" also
        the class counts and mean rows that the guide reads (``guide_statistics``).
    covariance : {"diag", "full", "lowrank"}
    num_classes : int
    init : dict of Tensor, optional
        Starting values of the guide's parameters (unused by the model).
    noise : {"diagonal", "isotropic"}, default "diagonal"
        "lowrank" only: a noise variance per feature (factor analysis) or one
        per class (probabilistic PCA on the standardised features).
    factor_guide : {"mean_field", "full"}, default "mean_field"
        "lowrank" only, read by the guide: see :class:`GaussianGenerator`.
    x_unlabelled : Tensor, shape (n_unlabelled, n_features), optional
        Rows without a label ("diag" and "full"): observed at site
        ``x_unlabelled`` with their class summed out,
        p(x) = Σ_c w_c N(x; loc_c, precision_c⁻¹).
    """
    structure = covariance_structure(covariance, noise)
    weights = pyro.sample("weights", dist.Dirichlet(hyper["class_concentration"]))
    with pyro.plate("class", num_classes):
        params = structure.sample_parameters(hyper, x.shape[-1])  # loc and the covariance's parts
    with pyro.plate("row", x.shape[0], subsample=subsample, device=x.device) as idx:
        yi = y.index_select(0, idx)
        pyro.sample("y", dist.Categorical(weights), obs=yi)
        pyro.sample("x", structure.likelihood(params, yi), obs=x.index_select(0, idx))
    if x_unlabelled is not None:
        components = structure.components(params)
        with pyro.plate("unlabelled_row", x_unlabelled.shape[0], device=x_unlabelled.device):
            pyro.sample("x_unlabelled", dist.MixtureSameFamily(dist.Categorical(weights), components), obs=x_unlabelled)


def guide(
    x: torch.Tensor,
    y: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    hyper: dict[str, torch.Tensor],
    covariance: Covariance,
    num_classes: int,
    init: dict[str, torch.Tensor] | None = None,
    noise: str = "diagonal",
    factor_guide: str = "mean_field",
    x_unlabelled: torch.Tensor | None = None,
) -> None:
    """Guide for :func:`model` (same signature).

    The class weights start at their exact posterior, Dirichlet(class_concentration
    + class counts). Every other factor starts at the prior's centre (all classes
    equal to the pooled statistics), away from the class-specific answer, unless
    ``init`` names a starting value (the estimator passes
    :func:`lowrank_initial_params`).
    """
    init = init or {}
    # The class weights' posterior is Dirichlet(class_concentration + class counts) whatever the other
    # sites are (every row's label is observed): the factor starts at that exact answer.
    conc = pyro.param(
        "weights_concentration",
        lambda: init.get(
            "weights_concentration", hyper["class_concentration"] + class_counts(y, num_classes).to(x.dtype)
        ),
        constraint=constraints.positive,
    )
    pyro.sample("weights", dist.Dirichlet(conc))
    with pyro.plate("class", num_classes):
        covariance_structure(covariance, noise, factor_guide).guide_sites(hyper, init, num_classes, x)


# ---------------------------------------------------------------- validation
def validate_xy(X: Any, y: Any = None, *, label: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check features and labels; return float features, raw labels and feature names.

    Parameters
    ----------
    X : array_like, shape (n_rows, n_features), or pandas.DataFrame
    y : array_like, shape (n_rows,), optional
        Labels; with a DataFrame, ``label`` names the label column instead.
    label : str, optional

    Raises
    ------
    TypeError
        Non-numeric features (named), or a label given both ways.
    ValueError
        Missing label column, wrong shapes, NaN/inf, fewer than two classes.
    """
    if label is not None:
        if not isinstance(X, pd.DataFrame):
            raise TypeError("label=<column> needs a DataFrame X; with an array pass the labels as y")
        if y is not None:
            raise TypeError("give labels either as y or as label=<column>, not both")
        if label not in X.columns:
            raise ValueError(f"label column {label!r} is not in the data; columns are {list(X.columns)}")
        y = X[label].to_numpy()
        X = X.drop(columns=[label])
    values, names = as_feature_matrix(X)
    if y is None:
        raise ValueError("labels are required: pass y, or label=<column> with a DataFrame")
    labels = check_labels(y, len(values), "y")
    if values.shape[1] == 0:
        raise ValueError("X has no feature columns")
    found = np.unique(labels)
    if len(found) < 2:
        raise ValueError(f"a class-conditional model needs at least two classes, got {found.tolist()}")
    return values, labels, names


# ----------------------------------------------------------------- estimator
# unlabelled_weight="auto": the weights tried (besides 0, labelled rows only) and the folds of the labelled rows.
#: The largest per-class size (features x rank + noise parameters) of factor_guide="full": its Cholesky
#: factor then holds at most about eight million numbers per class.
FULL_FACTOR_GUIDE_LIMIT = 4096
_GUARD_WEIGHTS = (1.0, 0.3, 0.1)
_GUARD_FOLDS = 5


def _loses_rows(lost: Any, gained: Any) -> Any:
    """Whether a fit classifies more rows wrong that another gets right (``lost``) than the reverse (``gained``),
    by over two standard errors of that difference: a paired (McNemar-like) test."""
    return lost - gained > 2.0 * np.sqrt(lost + gained)


class GaussianGenerator(BayesianEstimator):
    """Bayesian Gaussian class-conditional generator and classifier.

    Parameters
    ----------
    covariance : {"diag", "full", "lowrank"}, default "lowrank"
        Covariance structure of every class. "lowrank" (rank ``rank`` plus a
        diagonal) scales to images; "full" needs few features (≲ 200).
    rank : int or "auto", default "auto"
        Factors of the "lowrank" structure; "auto" is 10, or one fewer than the modelled features
        (or principal components) where there are 10 or fewer. ``rank_`` holds the number used.
    subspace : int, optional
        Model the classes in this many principal components of the training
        rows, with the other directions one shared isotropic Gaussian
        (probabilistic PCA's noise; see the module notes). For pixels with
        few labelled rows per class (on MNIST with 20 per class, 30 components
        classify at 0.81-0.82, the pixels at 0.67-0.71). Default: all features.
    noise : {"isotropic", "diagonal"}, default "isotropic"
        Noise of the "lowrank" structure beyond its factors: one variance per
        class (probabilistic PCA on the standardised features) or one per
        feature (factor analysis). On MNIST the ELBO-optimal factor-analysis
        fit drives the noise of near-constant pixels toward zero and its
        samples train a classifier far worse (TSTR 0.48 vs 0.75 in
        ``benchmarks/RESULTS.md``), so "isotropic" is the default.
    factor_guide : {"mean_field", "full"}, default "mean_field"
        The "lowrank" SVI guide over each class's factors and noise:
        independent Normals, or one multivariate Normal per class over all of
        them (started at the Laplace approximation at the PCA start; its
        Cholesky factor has (features × rank + noise)² entries per class, at
        most 4096² allowed). "full" captures how the factors' entries and the
        noise move together, which the mean-field guide cannot: run to
        convergence it matches NUTS on far more of the covariance's entries,
        at several times the cost per step (``benchmarks/RESULTS.md``, "The
        generator's low-rank sites against NUTS").
    method : {"svi", "exact"}, default "svi"
        "exact" uses the conjugate posterior (diag and full only). "full"
        needs "exact": SVI on a Wishart guide over a d × d precision proved
        numerically unstable (Adam diverges within tens of steps at d = 60).
    class_concentration : float, default 1.0
        Dirichlet prior on the class weights.
    prior_strength : float, default 1.0
        κ0: pseudo-rows pulling each class mean toward the pooled mean.
    shrinkage : float, default 10.0
        Pseudo-rows pulling each class covariance toward the pooled one.
    pooled_shrinkage : "auto" or float in [0, 1], default "auto"
        Shrinkage of the pooled covariance itself toward its diagonal
        (Ledoit-Wolf intensity by default; see :func:`pooled_statistics`).
    init : {"pca", "prior"}, default "pca"
        Starting point of the guide: the data's own answer or the prior's
        centre (every class equal to the pooled statistics). "pca" starts the
        "lowrank" guide at each class's probabilistic PCA
        (:func:`lowrank_initial_params`; several times fewer steps) and the
        "diag" guide at the exact conjugate posterior (:func:`exact_posterior`).
        The class weights always start at their exact posterior.
    constant_features : {"error", "keep"}, default "error"
        What to do with features constant in the training data.
    clip : (float, float), optional
        Clip samples to these bounds (e.g. (0, 1) for pixels).
    unlabelled_iterations : int, default 20
        EM passes over the rows passed to ``fit(..., unlabelled=...)``
        (``method="exact"``): each pass weights every unlabelled row by its
        class probabilities p(y | x) under the current fit and recomputes the
        conjugate posterior from the labelled rows plus these weighted rows;
        it stops early when no probability moves by more than 1e-4. 0 uses
        unlabelled rows only to find the principal subspace (``subspace``).
        With one labelled row per class (the scale and the pooled covariance
        then come from the unlabelled rows) EM needs more passes: on two
        simulated classes it settled after 63-160. On MNIST with 20 per
        class, 100 passes were slower and no better than 20.
    unlabelled_weight : "auto" or float > 0, default "auto"
        Weight of an unlabelled row relative to a labelled one in those passes.
        "auto" guards against EM's classes drifting from the labels when the
        Gaussian class model does not fit the unlabelled rows: 5-fold
        cross-validation of the labelled rows (stratified; a class with one
        row is never held out) fits each fold with labelled rows only and by
        EM at weights 1, 0.3 and 0.1, and keeps the weight that classifies the
        held-out rows best (ties: the higher mean log p(y | x)) among those
        that do not lose significantly more held-out rows than the
        labelled-only fit (paired test, two standard errors); with none left,
        the class model is fitted to the labelled rows alone and ``fit`` warns.
        It costs about 16 EM runs. When every class has a single labelled row
        nothing can be held out, and EM runs at weight 1. A number forces EM
        at that weight. With unlabelled MNIST images moved 4 pixels, "auto"
        keeps the labelled rows alone (accuracy 0.83 against 0.43-0.55 at
        weight 1); the other benchmarks are in ``benchmarks/RESULTS.md``.
    num_steps : int, default 2000
    learning_rate : float, optional
        Default: 0.002 for "lowrank" started at its PCA (a larger step
        scrambles the factors before it settles: TSTR on MNIST fell from 0.72
        at 0.001 to 0.60 at 0.05), else 0.05.
    lr_schedule : {"exponential", "cosine"} or None, default "cosine"
    final_lr_factor : float, default 0.01
    batch_size : int, optional, default 512
        Rows per SVI minibatch (None: all rows every step).
    average_last : int, default 200
        Polyak averaging of the last steps.
    convergence_rtol : float or None, default 1e-3
    num_samples : int, default 20
        Parameter draws averaged in ``predict_proba`` and ``score_samples``.
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    num_threads : int, "auto" or None, default "auto"
        torch's CPU threads while fitting by SVI, the caller's count restored after: "auto" keeps a count
        you set (``OMP_NUM_THREADS``, ``torch.set_num_threads``) and otherwise uses one thread for a
        small step and the idle physical cores for a large one (:func:`bayesgen.infer.run_svi`); an int
        also applies to this estimator's other methods.
    seed : int, default 0
    progress : bool, default False

    Attributes
    ----------
    classes_ : numpy.ndarray
        Class labels as given, in index order.
    feature_names_ : list of str
    class_counts_ : numpy.ndarray
    subspace_ : dict or None
        The principal subspace (``subspace``): centre, basis, residual variance.
    unlabelled_history_ : numpy.ndarray or None
        With unlabelled rows and EM: their mean log predictive density
        log p(x) (as :meth:`score_samples`) before each pass, and after the
        last (rises as EM settles).
    unlabelled_converged_ : bool or None
        Whether EM stopped because no class probability moved by 1e-4, rather
        than at ``unlabelled_iterations``.
    unlabelled_weight_ : float or None
        With unlabelled rows and EM: the weight EM ran at; 0.0 when
        ``unlabelled_weight="auto"`` kept the labelled-only class model (then
        the Pyro model holds no unlabelled rows).
    unlabelled_scores_ : pandas.DataFrame or None
        With ``unlabelled_weight="auto"``: one row per weight tried (0: labelled
        rows only), the cross-validated ``accuracy`` and mean ``log_lik``
        (log p(y | x)) of the held-out labelled rows, the held-out rows the
        weight classifies wrong that the labelled-only fit gets right
        (``lost``) and the reverse (``gained``), ``worse`` (the paired test)
        and the number of held-out ``rows``.
    unlabelled_moved_ : float or None
        After EM (None without), the share of labelled rows that the
        labelled-only fit classifies as their label and the EM fit does not.
        ``fit`` warns when these outnumber the rows moved the other way by
        over two standard errors.
    losses_, converged_, n_steps_
        From the SVI fit.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> gen = GaussianGenerator(covariance="diag", method="exact", constant_features="keep",
    ...                         clip=(0, 16)).fit(X, y)
    >>> Xs, ys = gen.sample(5, y=3, seed=0)
    >>> Xs.shape, set(ys)
    ((5, 64), {np.int64(3)})
    """

    _model_name = "gaussian_generator"
    _none_ok = ("batch_size",)  # None: every row in every step
    _max_plate_nesting = 1

    @property
    def _arviz_parallel(self) -> bool:
        return self._structure.vectorised_draws

    @property
    def _structure(self) -> CovarianceStructure:
        """The covariance structure named by ``covariance`` (with the low-rank ``noise``)."""
        return covariance_structure(self.covariance, self.noise, getattr(self, "factor_guide_", None) or "mean_field")

    def __init__(
        self,
        *,
        covariance: Covariance = "lowrank",
        rank: int | Literal["auto"] = "auto",
        subspace: int | None = None,
        noise: Literal["isotropic", "diagonal"] = "isotropic",
        factor_guide: Literal["mean_field", "full"] = "mean_field",
        method: Literal["svi", "exact"] = "svi",
        class_concentration: float = 1.0,
        prior_strength: float = 1.0,
        shrinkage: float = 10.0,
        pooled_shrinkage: float | str = "auto",
        init: Literal["pca", "prior"] = "pca",
        constant_features: Literal["error", "keep"] = "error",
        clip: tuple[float, float] | None = None,
        unlabelled_iterations: int = 20,
        unlabelled_weight: float | str = "auto",
        num_steps: int = 2000,
        learning_rate: float | None = None,
        lr_schedule: Literal["exponential", "cosine"] | None = "cosine",
        final_lr_factor: float = 0.01,
        batch_size: int | None = 512,
        average_last: int = 200,
        convergence_rtol: float | None = 1e-3,
        num_samples: int = 20,
        device: DeviceLike = "auto",
        num_threads: int | Literal["auto"] | None = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.covariance = covariance
        self.rank = rank
        self.subspace = subspace
        self.noise = noise
        self.factor_guide = factor_guide
        self.method = method
        self.class_concentration = class_concentration
        self.prior_strength = prior_strength
        self.shrinkage = shrinkage
        self.pooled_shrinkage = pooled_shrinkage
        self.init = init
        self.constant_features = constant_features
        self.clip = clip
        self.unlabelled_iterations = unlabelled_iterations
        self.unlabelled_weight = unlabelled_weight
        self.num_steps = num_steps
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.final_lr_factor = final_lr_factor
        self.batch_size = batch_size
        self.average_last = average_last
        self.convergence_rtol = convergence_rtol
        self.num_samples = num_samples
        self.device = device
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress

    # ---------------------------------------------------------------- fit
    def _validate_settings(self) -> None:
        super()._validate_settings()  # shared settings and device
        structure = self._structure  # refuses an unknown covariance
        if self.method not in ("svi", "exact"):
            raise ValueError(f"method must be 'svi' or 'exact', got {self.method!r}")
        if self.subspace is not None:
            check_count(self.subspace, "subspace")
        if self.method == "exact" and not structure.conjugate:
            raise ValueError("method='exact' needs a conjugate structure: covariance='diag' or 'full'")
        if self.method == "svi" and structure.svi_refusal is not None:
            # Known limitation: Adam on a Wishart guide over a d x d precision diverges
            # within tens of steps even at d = 60 (measured on digits; see docs/models.md).
            raise ValueError(structure.svi_refusal)
        if self.noise not in ("isotropic", "diagonal"):
            raise ValueError(f"noise must be 'isotropic' or 'diagonal', got {self.noise!r}")
        if self.factor_guide not in ("mean_field", "full"):
            raise ValueError(f"factor_guide must be 'mean_field' or 'full', got {self.factor_guide!r}")
        if self.init not in ("pca", "prior"):
            raise ValueError(f"init must be 'pca' or 'prior', got {self.init!r}")
        if not (isinstance(self.pooled_shrinkage, str) and self.pooled_shrinkage == "auto"):
            check_real(
                self.pooled_shrinkage,
                "pooled_shrinkage ('auto' or a number)",
                low=0.0,
                high=1.0,
                low_open=False,
                high_open=False,
            )
        if self.constant_features not in ("error", "keep"):
            raise ValueError(f"constant_features must be 'error' or 'keep', got {self.constant_features!r}")
        for name, zero_ok in (("class_concentration", False), ("prior_strength", False), ("shrinkage", True)):
            check_real(getattr(self, name), name, low=0.0, low_open=not zero_ok)
        if not (isinstance(self.rank, str) and self.rank == "auto"):
            check_count(self.rank, "rank")
        check_count(self.unlabelled_iterations, "unlabelled_iterations", minimum=0)
        if not (isinstance(self.unlabelled_weight, str) and self.unlabelled_weight == "auto"):
            check_real(self.unlabelled_weight, "unlabelled_weight ('auto' or a number > 0)", low=0.0)
        if self.clip is not None:
            if isinstance(self.clip, str) or not hasattr(self.clip, "__len__") or len(self.clip) != 2:
                raise ValueError(f"clip must be (low, high), got {self.clip!r}")
            lo, hi = (
                check_real(v, "clip", low=-math.inf, high=math.inf, low_open=False, high_open=False) for v in self.clip
            )  # one side may be open: (0, inf)
            if not lo < hi:
                raise ValueError(f"clip must be (low, high) with low < high, got {self.clip}")

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        label: str | None = None,
        classes: Sequence[Any] | None = None,
        unlabelled: Any = None,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> GaussianGenerator:
        """Fit p(y) and p(x | y).

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features), or pandas.DataFrame
        y : array_like, shape (n_rows,), optional
            Labels (any hashable values); or use ``label``.
        label : str, optional
            Label column of a DataFrame ``X``.
        classes : sequence, optional
            All expected classes; a class without rows is an error.
        unlabelled : array_like or pandas.DataFrame, optional
            Rows without labels (same features): semi-supervised fitting. With
            ``method="exact"`` the class model learns from them by EM (see
            ``unlabelled_iterations``); with ``subspace`` they also join the
            labelled rows in finding the principal subspace and its residual
            variance. The standardisation and the pooled prior come from the
            labelled rows (with one labelled row per class, from the
            unlabelled ones). ``unlabelled_weight="auto"`` checks by
            cross-validation that EM does not classify labelled rows worse.
        checkpoint, checkpoint_every, resume
            See :func:`bayesgen.infer.run_svi`.
        distributed : bool or bayesgen.distributed.DataParallel, default False
            Fit the SVI path data-parallel under ``torchrun`` (``batch_size`` rows per rank, see
            :func:`bayesgen.infer.run_svi`); ``method="exact"`` is a closed form with nothing to share
            and raises a ``ValueError``.

        Returns
        -------
        GaussianGenerator
            ``self``, fitted.
        """
        self._validate_settings()
        if distributed and self.method == "exact":
            raise ValueError(
                "method='exact' is a closed form with no steps to share between ranks: fit it in one process, "
                "or use method='svi' with batch_size for a data-parallel fit"
            )
        em = unlabelled is not None and int(self.unlabelled_iterations) > 0
        if em and self.method != "exact":
            raise ValueError(
                "learning from unlabelled rows (EM) needs method='exact'; or set "
                "unlabelled_iterations=0 to use them only to find the principal subspace"
            )
        if unlabelled is not None and not em and self.subspace is None:
            raise ValueError(
                "with unlabelled_iterations=0, unlabelled rows are used only to find the principal "
                "subspace; set subspace=D (or unlabelled_iterations > 0 with method='exact')"
            )
        values, labels, names = validate_xy(X, y, label=label)
        self.feature_names_ = names
        index = self._set_classes(labels, classes)
        raw = self._drop_constant_features(values)
        unlabelled_raw = self._check_new_x(unlabelled, "unlabelled") if unlabelled is not None else None
        self._subspace = None
        self.unlabelled_history_ = self._x_unlabelled = self.unlabelled_converged_ = None
        self.unlabelled_weight_ = self.unlabelled_scores_ = self.unlabelled_moved_ = None
        if self.subspace is not None:
            rows = raw if unlabelled_raw is None else np.concatenate([raw, unlabelled_raw])
            self._subspace = principal_subspace(rows, int(self.subspace))
            raw = self._project(raw)
        what = "principal components" if self._subspace is not None else "modelled features"
        auto_rank = isinstance(self.rank, str)
        self.rank_ = max(1, min(10, raw.shape[1] - 1)) if auto_rank else int(self.rank)
        self._structure.check_rank(self.rank_, raw.shape[1], what)
        self.factor_guide_ = self._resolve_factor_guide(raw.shape[1])
        # With one labelled row per class there is no within-class spread: EM then takes the scale and the
        # pooled covariance (its prior's centre) from the unlabelled rows' overall spread instead.
        one_each = bool((self.class_counts_ < 2).all())
        spread_from = self._project(unlabelled_raw) if one_each and em else None
        xv = self._standardise(raw, index, spread_from)
        # Wishart draws of a d x d precision are often singular in float32.
        dtype = torch.float64 if self._structure.float64 else torch.get_default_dtype()
        self._x = torch.as_tensor(xv, dtype=dtype, device=self.device_)
        self._y = torch.as_tensor(index, dtype=torch.int64, device=self.device_)
        m0, S0 = self._pooled = self._pooled_statistics(xv, index, spread_from)
        if one_each and not em:
            warnings.warn(
                "every class has a single labelled row, so there is no within-class variation to learn the "
                "covariance from: the pooled covariance is its small floor, and p(y | x) and samples are "
                "uninformative; give some classes two or more rows, or pass unlabelled rows (method='exact')",
                UserWarning,
                stacklevel=2,
            )
        self._prior = prior_parameters(
            m0,
            S0,
            covariance=self.covariance,
            num_classes=len(self.classes_),
            class_concentration=float(self.class_concentration),
            prior_strength=float(self.prior_strength),
            shrinkage=float(self.shrinkage),
            rank=self.rank_,
            like=self._x,
        )
        self._prior.update(
            self._structure.guide_statistics(
                xv, index, len(self.classes_), lambda a: self._x.new_tensor(np.asarray(a, dtype=float))
            )
        )
        if self.method == "exact":
            self._fit_exact(xv, index)
            if em:
                self._fit_unlabelled(xv, index, unlabelled_raw)
            return self
        self._fit_svi(
            xv, index, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, distributed=distributed
        )
        return self

    def _set_classes(self, labels: np.ndarray, classes: Sequence[Any] | None) -> np.ndarray:
        """Set ``classes_`` and ``class_counts_`` from the labels (and the expected ``classes``); return the class
        index of every row."""
        found = np.unique(labels)
        if classes is not None:
            if len(set(classes)) != len(list(classes)):
                raise ValueError(f"classes has duplicate entries: {list(classes)}")
            missing = [c for c in classes if c not in set(found.tolist())]
            if missing:
                raise ValueError(f"classes {missing} have no rows; every class needs at least one row")
            unknown = [c for c in found.tolist() if c not in set(classes)]
            if unknown:
                raise ValueError(f"labels {unknown[:10]} are not among classes={list(classes)}")
            found = np.asarray(list(classes))
        self.classes_ = found
        index = np.searchsorted(found, labels) if classes is None else np.array([list(found).index(v) for v in labels])
        self.class_counts_ = np.bincount(index, minlength=len(found))
        return index

    def _drop_constant_features(self, values: np.ndarray) -> np.ndarray:
        """Find the features constant in the training rows (an error unless ``constant_features="keep"``), keep
        their values, and return the other features."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing features are refused below
            sd = values.std(axis=0)
        constant = sd <= 1e-12 * (1.0 + np.abs(values).max(axis=0))
        if constant.all():
            raise ValueError("every feature is constant; there is nothing to model")
        if constant.any() and self.constant_features == "error":
            bad = [self.feature_names_[j] for j in np.nonzero(constant)[0]]
            raise ValueError(
                f"{len(bad)} features are constant in the training data ({bad[:10]}); drop them or pass "
                "constant_features='keep' to hold them fixed"
            )
        self._constant = constant
        self._constant_values = values[0, constant].copy()
        return values[:, ~constant]

    def _standardise(self, raw: np.ndarray, index: np.ndarray, spread_from: np.ndarray | None) -> np.ndarray:
        """Set ``_shift`` and ``_scale`` and return the rows standardised by them.

        Standardise by the mean and the pooled within-class sd, so that learning rates and priors mean the
        same for pixels, dollars or z-scores. A feature constant within every class (but not overall) keeps
        its overall sd. ``spread_from`` (unlabelled rows, when every class has one labelled row) gives the
        mean and the sd instead.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            self._shift = raw.mean(axis=0)
            class_means = np.stack([raw[index == c].mean(axis=0) for c in range(len(self.classes_))])
            within = np.sqrt(((raw - class_means[index]) ** 2).sum(axis=0) / max(len(raw) - len(self.classes_), 1))
            if spread_from is not None:
                self._shift, within = spread_from.mean(axis=0), spread_from.std(axis=0)
            self._scale = np.where(within > 1e-6 * raw.std(axis=0), within, raw.std(axis=0))
            xv = (raw - self._shift) / self._scale
        if not (np.isfinite(self._scale).all() and np.isfinite(xv).all()):
            bad = np.nonzero(~(np.isfinite(self._scale) & np.isfinite(xv).all(axis=0)))[0]
            raise ValueError(
                f"features {[self._modelled_names()[j] for j in bad[:5]]} are too large to standardise "
                "(their spread overflows float64); rescale them"
            )
        return xv

    def _pooled_statistics(
        self, xv: np.ndarray, index: np.ndarray, spread_from: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pooled mean and covariance that the prior centres every class on (standardised rows ``xv``)."""
        if spread_from is None:
            return pooled_statistics(xv, index, len(self.classes_), pooled_shrinkage=self.pooled_shrinkage)
        # The unlabelled rows' total covariance (as one class): broader than the within-class one, a
        # cautious centre that the EM passes then refine.
        spread = (spread_from - self._shift) / self._scale
        _, S0 = pooled_statistics(spread, np.zeros(len(spread), dtype=int), 1, pooled_shrinkage=self.pooled_shrinkage)
        return xv.mean(axis=0), S0

    def _fit_svi(
        self,
        xv: np.ndarray,
        index: np.ndarray,
        *,
        checkpoint: PathLikeStr | None,
        checkpoint_every: int | None,
        resume: bool | PathLikeStr,
        distributed: bool | DataParallel = False,
    ) -> None:
        """Fit the guide by SVI, started at the structure's own answer with ``init="pca"``."""
        # A batch as large as the data is no minibatch: fit on all rows every step.
        minibatch = self.batch_size is not None and int(self.batch_size) < len(xv)
        initial = None
        if self.init == "pca":
            start = self._structure.initial_guide_params(
                xv,
                index,
                len(self.classes_),
                pooled=self._pooled,
                class_concentration=float(self.class_concentration),
                prior_strength=float(self.prior_strength),
                shrinkage=float(self.shrinkage),
                rank=self.rank_,
            )
            if start is not None:
                initial = {k: self._x.new_tensor(v) for k, v in start.items()}
        with quiet_wishart():
            self._run_svi(
                self._x,
                self._y,
                model_kwargs={
                    "hyper": self._prior,
                    "covariance": self.covariance,
                    "num_classes": len(self.classes_),
                    "init": initial,
                    **self._structure.model_kwargs(),
                },
                learning_rate=self._learning_rate(),
                data_size=len(xv) if minibatch else None,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                resume=resume,
                distributed=distributed,
            )

    def _resolve_factor_guide(self, num_features: int) -> str | None:
        """The low-rank SVI fit's guide over each class's factors and noise (None for other fits)."""
        if self.covariance != "lowrank" or self.method != "svi":
            return None
        size = num_features * self.rank_ + (1 if self.noise == "isotropic" else num_features)
        if self.factor_guide == "full" and size > FULL_FACTOR_GUIDE_LIMIT:
            raise ValueError(
                f"factor_guide='full' would hold a {size} x {size} covariance factor per class ({num_features} "
                f"features x rank {self.rank_} + noise); use factor_guide='mean_field' or a smaller rank or subspace"
            )
        return self.factor_guide

    def _learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return self._structure.default_learning_rate(self.init)

    def _fit_unlabelled(self, xv: np.ndarray, index: np.ndarray, raw: np.ndarray) -> None:
        """Learn from unlabelled rows (modelled raw features) by EM, at ``unlabelled_weight`` or at the weight
        that cross-validation of the labelled rows picks ("auto"); the labelled-only fit is already in place."""
        xu = self._to_model_space(raw)
        if not np.isfinite(xu).all():
            raise ValueError("unlabelled rows are too large to standardise with the labelled rows' scale")
        x = torch.as_tensor(xu, dtype=self._x.dtype, device=self.device_)
        alone = self._exact_joint_log_prob(self._x).argmax(dim=-1)
        if isinstance(self.unlabelled_weight, str):
            weight, self.unlabelled_scores_ = self._choose_unlabelled_weight(xv, index, xu, x)
        else:
            weight = float(self.unlabelled_weight)
        self.unlabelled_weight_ = weight
        scores = self.unlabelled_scores_
        if scores is not None and scores.loc[1.0, "worse"]:
            accuracy = scores["accuracy"]
            kept = (
                f"so EM ran with each unlabelled row counting {weight:g} of a labelled one (unlabelled_weight_), "
                "which did not"
                if weight
                else "so the class model is fitted to the labelled rows alone"
                + (
                    ""
                    if self._subspace is None
                    else " (they still find the principal subspace; pass "
                    "unlabelled_iterations=0 or leave them out to choose)"
                )
            )
            warnings.warn(
                f"EM over the {len(xu)} unlabelled rows classified held-out labelled rows worse than the labelled "
                f"rows alone (cross-validated accuracy {accuracy.loc[1.0]:.3f} at unlabelled_weight=1, "
                f"{accuracy.iloc[0]:.3f} without them), {kept}: the Gaussian classes do not fit the unlabelled rows "
                "(another distribution, or classes that are not Gaussian). unlabelled_scores_ has the figures; "
                "unlabelled_weight=1.0 forces EM",
                UserWarning,
                stacklevel=4,
            )  # the caller of fit (through its wrapper)
        if weight == 0.0:  # the guard kept the labelled-only fit
            return
        _, extra, history, self.unlabelled_converged_ = self._em(xv, index, xu, x, weight)
        self._fit_exact(xv, index, extra=extra)
        self._x_unlabelled = x
        # log p(x) on the raw scale, as score_samples reports it: the Jacobian of the standardisation, and
        # the density outside the principal subspace (the same in every pass).
        offset = float(self._residual_log_density(raw).mean()) - float(np.log(self._scale).sum())
        self.unlabelled_history_ = np.asarray(history) + offset
        # Labelled rows that the labelled-only fit classifies right and the EM fit wrong (and the reverse): EM's
        # classes drifting away from the labels.
        after = self._exact_joint_log_prob(self._x).argmax(dim=-1)
        lost = int(((alone == self._y) & (after != self._y)).sum())
        gained = int(((alone != self._y) & (after == self._y)).sum())
        self.unlabelled_moved_ = lost / len(self._y)
        if _loses_rows(lost, gained):
            warnings.warn(
                f"EM over the unlabelled rows (unlabelled_weight={weight:g}) moved {lost} of the {len(self._y)} "
                f"labelled rows from their own class to another (and {gained} the other way): the Gaussian classes "
                "drift from the labels. Check the accuracy on labelled test rows, or set a smaller "
                'unlabelled_weight ("auto" picks it by cross-validation)',
                UserWarning,
                stacklevel=4,
            )

    def _em(
        self, xv: np.ndarray, index: np.ndarray, xu: np.ndarray, x: torch.Tensor, weight: float
    ) -> tuple[dict[str, torch.Tensor], tuple[np.ndarray, np.ndarray] | None, list[float], bool]:
        """EM from the fit of the labelled rows ``(xv, index)``: E-step p(y | x) of the unlabelled rows ``xu``
        (``x`` as a tensor) under the current posterior predictive, M-step the conjugate posterior of the
        labelled rows plus the unlabelled ones weighted by ``weight`` p(y | x).

        Returns the last posterior predictive, the weighted rows of its M-step, the unlabelled rows' mean log
        p(x) (model space) before each pass and after the last, and whether no probability moved by 1e-4.
        """
        pred = self._exact_predictive(xv, index)
        history, previous, extra = [], None, None
        for _ in range(int(self.unlabelled_iterations)):
            joint = self._structure.predictive_joint_log_prob(pred, x)
            history.append(float(torch.logsumexp(joint, dim=-1).mean()))
            resp = to_numpy(torch.softmax(joint, dim=-1)).astype(float)
            if previous is not None and np.abs(resp - previous).max() < 1e-4:
                return pred, extra, history, True
            previous, extra = resp, (xu, resp * weight)
            pred = self._exact_predictive(xv, index, extra)
        history.append(float(torch.logsumexp(self._structure.predictive_joint_log_prob(pred, x), dim=-1).mean()))
        return pred, extra, history, False

    def _choose_unlabelled_weight(
        self, xv: np.ndarray, index: np.ndarray, xu: np.ndarray, x: torch.Tensor
    ) -> tuple[float, pd.DataFrame | None]:
        """The weight of unlabelled rows (0: labelled rows only) that ``unlabelled_weight="auto"`` keeps, by
        stratified K-fold cross-validation of the labelled rows, and the table of ``unlabelled_scores_``.

        A class with a single labelled row is never held out; when every class has one, nothing can be held
        out and EM keeps weight 1. The folds share the standardisation and the pooled prior of all labelled
        rows (both found without the unlabelled rows' classes).
        """
        rng = np.random.default_rng(self._method_seed(None))
        folds = np.full(len(index), -1)
        for c in range(len(self.classes_)):
            rows = np.flatnonzero(index == c)
            if len(rows) >= 2:  # with fewer rows than folds, each fold holds out at most one
                folds[rng.permutation(rows)] = (np.arange(len(rows)) + rng.integers(_GUARD_FOLDS)) % _GUARD_FOLDS
        if (folds < 0).all():
            return 1.0, None
        weights = (0.0, *_GUARD_WEIGHTS)
        log_lik = np.zeros((len(weights), len(index)))
        correct = np.zeros((len(weights), len(index)), dtype=bool)
        for k in range(_GUARD_FOLDS):
            test, train = folds == k, folds != k
            if not test.any():
                continue
            x_test = torch.as_tensor(xv[test], dtype=self._x.dtype, device=self.device_)
            truth = torch.as_tensor(index[test], device=self.device_)
            for i, weight in enumerate(weights):
                if weight == 0.0:
                    pred = self._exact_predictive(xv[train], index[train])
                else:
                    pred = self._em(xv[train], index[train], xu, x, weight)[0]
                joint = self._structure.predictive_joint_log_prob(pred, x_test).log_softmax(dim=-1)
                log_lik[i, test] = to_numpy(joint.gather(-1, truth[:, None])[:, 0])
                correct[i, test] = to_numpy(joint.argmax(dim=-1) == truth)
        held = folds >= 0
        correct = correct[:, held]
        lost, gained = (correct[0] & ~correct).sum(axis=1), (~correct[0] & correct).sum(axis=1)
        scores = pd.DataFrame(
            {
                "accuracy": correct.mean(axis=1),
                "log_lik": log_lik[:, held].mean(axis=1),
                "lost": lost,
                "gained": gained,
                "worse": _loses_rows(lost, gained),
                "rows": int(held.sum()),
            },
            index=pd.Index(weights, name="unlabelled_weight"),
        )
        # Of the EM weights not significantly worse, the one that classifies held-out rows best (ties: the higher
        # log p(y | x), which favours the less overconfident fit). Log p(y | x) alone is no judge: EM's tight
        # posteriors make a few confident mistakes that outweigh many more rows classified right.
        fair = scores.iloc[1:][~scores["worse"].iloc[1:]]
        if fair.empty:
            return 0.0, scores
        return float(fair.sort_values(["accuracy", "log_lik"], ascending=False, kind="stable").index[0]), scores

    def _fit_exact(self, xv: np.ndarray, index: np.ndarray, extra: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        from bayesgen.infer import param_scope

        post = self.exact_ = self._exact_posterior(xv, index, extra)
        t = self._x.new_tensor
        state: dict = {"params": {}, "constraints": {}}
        # The exact marginals, written into the mean-field guide's parameters.
        with param_scope(state):
            pyro.param("weights_concentration", t(post["weights_concentration"]), constraint=constraints.positive)
            pyro.param("loc_loc", t(post["loc"]))
            self._structure.set_guide_to_posterior(post, t)
        self._param_state = state
        self._predictive = self._structure.predictive(post, like=self._x)
        self.losses_ = np.zeros(0)
        self.converged_ = True
        self.n_steps_ = 0
        self.fit_seconds_ = 0.0

    def _exact_posterior(
        self, xv: np.ndarray, index: np.ndarray, extra: tuple[np.ndarray, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The conjugate posterior of rows ``xv`` (model space) of classes ``index``, plus weighted ``extra`` rows,
        under this fit's prior."""
        return exact_posterior(
            xv,
            index,
            len(self.classes_),
            covariance=self.covariance,  # type: ignore[arg-type]
            class_concentration=float(self.class_concentration),
            prior_strength=float(self.prior_strength),
            shrinkage=float(self.shrinkage),
            pooled=self._pooled,
            extra=extra,
        )

    def _exact_predictive(
        self, xv: np.ndarray, index: np.ndarray, extra: tuple[np.ndarray, np.ndarray] | None = None
    ) -> dict[str, torch.Tensor]:
        """The Student-t posterior predictive of :meth:`_exact_posterior`."""
        return self._structure.predictive(self._exact_posterior(xv, index, extra), like=self._x)

    # ----------------------------------------------------------- base hooks
    def _model_and_guide(self, for_arviz: bool = False) -> tuple:
        return model, guide

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        kwargs = {"hyper": self._prior, "covariance": self.covariance, "num_classes": len(self.classes_)}
        kwargs.update(self._structure.model_kwargs())
        if getattr(self, "_x_unlabelled", None) is not None:
            kwargs["x_unlabelled"] = self._x_unlabelled
        return (self._x, self._y), kwargs

    def _ppc_statistics(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """Rows per class, the sd of the rows' totals within each class (it tests the features' covariances), and
        every modelled feature's mean and sd (standardised scale)."""
        out = {f"count[{c}]": float(np.sum(data["y"] == k)) for k, c in enumerate(self.classes_)}
        labels = to_numpy(self._y)  # a replicated row i is drawn from the class of observed row i
        for k, c in enumerate(self.classes_):
            rows = data["x"][labels == k]
            out[f"sd of row totals[{c}]"] = float(rows.sum(axis=1).std()) if len(rows) > 1 else 0.0
        for j, name in enumerate(self._modelled_names()):
            out[f"mean[{name}]"] = float(data["x"][:, j].mean())
            out[f"sd[{name}]"] = float(data["x"][:, j].std())
        return out

    def _ppc_advice(self, observed: dict[str, np.ndarray], failed: list[str]) -> str | None:
        """Why a low-rank fit fails the features' sds as a family, and what to do (None for other causes)."""
        if self.covariance != "lowrank" or not any(name.startswith("sd[all ") for name in failed):
            return None
        return (
            f"The low-rank covariance (rank {self.rank_} plus {self.noise} noise) replicates the features' sds "
            "larger than the data's in most features together, so its samples are noisier than the data: fit "
            "covariance='full' with method='exact' where each class has more rows than features (on the 8 x 8 "
            "digits it reproduces them), or a larger rank."
        )

    def _khat_advice(self, latent_size: int) -> str | None:
        """Why the joint k-hat of an SVI fit is high, and what was checked site by site (None: exact)."""
        if self.method == "exact":
            return None
        return (
            f"This k-hat judges the guide over all {latent_size:,} latent numbers at once, where small differences "
            "in every one of them add up to heavy-tailed importance ratios, and NUTS is offered only up to "
            f"{self._nuts_max_latents:,}. Site by site, the reference check compares the class weights with "
            "their exact posterior and says what the other sites were checked against. For exact intervals, fit "
            "covariance='diag' or 'full' with method='exact'."
        )

    def _reference_moments(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        from bayesgen.diagnostics import dirichlet_moments

        if getattr(self, "_x_unlabelled", None) is not None:
            why = "EM over unlabelled rows gives a conjugate update, not the mixture's exact posterior"
            return {}, {name: why for name in self._global_sites()}
        structure = self._structure
        if self.method == "exact" or not structure.conjugate:
            counts = np.bincount(to_numpy(self._y), minlength=len(self.classes_)).astype(float)
            exact = {"weights_concentration": float(self.class_concentration) + counts}
        else:
            exact = exact_posterior(
                to_numpy(self._x).astype(float),
                to_numpy(self._y),
                len(self.classes_),
                covariance=self.covariance,  # type: ignore[arg-type]
                class_concentration=float(self.class_concentration),
                prior_strength=float(self.prior_strength),
                shrinkage=float(self.shrinkage),
                pooled=getattr(self, "_pooled", None),
                pooled_shrinkage=self.pooled_shrinkage,
            )
        if self.method == "exact":  # the guide holds the exact posterior itself; its class weights still check
            exact = {"weights_concentration": exact["weights_concentration"]}
        out = {"weights": dirichlet_moments(exact["weights_concentration"])}
        if self.method == "exact":
            unchecked = {
                "loc": "the guide holds the exact marginal posterior",
                "precision": "the guide holds the exact marginal posterior",
            }
        else:
            moments, unchecked = structure.reference_moments(exact)
            out.update(moments)
        return out, unchecked

    def _arviz_dims(self) -> tuple[dict, dict]:
        dims = {**DIMS, **self._structure.dims()}
        names = self._modelled_names()
        return dims, {"class": [str(c) for c in self.classes_], "feature": names, "feature_bis": names}

    def _rebuild_param_state(self, saved: dict[str, torch.Tensor]) -> dict:
        with quiet_wishart():  # loading traces the guide once (a Wishart draw for "full")
            return super()._rebuild_param_state(saved)

    def _modelled_names(self) -> list[str]:
        """Names of the coordinates the class model sees: features, or principal components."""
        if self._subspace is not None:
            return [f"pc{j + 1}" for j in range(self._subspace["basis"].shape[1])]
        return [n for n, c in zip(self.feature_names_, self._constant, strict=True) if not c]

    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        history = getattr(self, "unlabelled_history_", None)
        scores = getattr(self, "unlabelled_scores_", None)
        meta = {
            "classes_": self.classes_.tolist(),
            "feature_names_": self.feature_names_,
            "class_counts_": self.class_counts_.tolist(),
            "unlabelled_history_": None if history is None else [float(v) for v in history],
            "unlabelled_converged_": getattr(self, "unlabelled_converged_", None),
            "unlabelled_weight_": getattr(self, "unlabelled_weight_", None),
            "unlabelled_moved_": getattr(self, "unlabelled_moved_", None),
            "rank_": self.rank_,
            "factor_guide_": getattr(self, "factor_guide_", None),
            "unlabelled_scores_": (
                None if scores is None else json.loads(scores.reset_index().to_json(orient="records"))
            ),
        }
        tensors = {
            "x": self._x.detach().cpu(),
            "y": self._y.detach().cpu(),
            "constant": torch.as_tensor(self._constant),
            "constant_values": torch.as_tensor(self._constant_values),
            "shift": torch.as_tensor(self._shift),
            "scale": torch.as_tensor(self._scale),
            **{f"prior.{k}": v.detach().cpu() for k, v in self._prior.items()},
            **{f"predictive.{k}": v.detach().cpu() for k, v in getattr(self, "_predictive", {}).items()},
        }
        if self._subspace is not None:
            tensors.update({f"subspace.{k}": torch.tensor(v, dtype=torch.float64) for k, v in self._subspace.items()})
        if getattr(self, "_x_unlabelled", None) is not None:
            tensors["x_unlabelled"] = self._x_unlabelled.detach().cpu()
        return meta, tensors

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.classes_ = np.asarray(meta["classes_"])
        self.feature_names_ = list(meta["feature_names_"])
        self.class_counts_ = np.asarray(meta["class_counts_"])
        history = meta.get("unlabelled_history_")  # a file may not record it
        self.unlabelled_history_ = None if history is None else np.asarray(history, dtype=float)
        self.unlabelled_converged_ = meta.get("unlabelled_converged_")
        self.unlabelled_weight_ = meta.get("unlabelled_weight_")
        self.unlabelled_moved_ = meta.get("unlabelled_moved_")
        self.rank_ = int(meta.get("rank_", self.rank))  # a file from before rank="auto" holds an int rank
        self.factor_guide_ = meta.get("factor_guide_", "mean_field" if self.covariance == "lowrank" else None)
        scores = meta.get("unlabelled_scores_")
        self.unlabelled_scores_ = None if scores is None else pd.DataFrame(scores).set_index("unlabelled_weight")
        self._x = tensors["x"].to(self.device_)
        self._y = tensors["y"].to(self.device_)
        self._x_unlabelled = tensors["x_unlabelled"].to(self.device_) if "x_unlabelled" in tensors else None
        self._constant = to_numpy(tensors["constant"]).astype(bool)
        self._constant_values = to_numpy(tensors["constant_values"])
        self._shift = to_numpy(tensors["shift"])
        self._scale = to_numpy(tensors["scale"])
        self._prior = {k[6:]: v.to(self.device_) for k, v in tensors.items() if k.startswith("prior.")}
        # The guide's summaries of the training rows are a function of x and y: a file without them gets them.
        summaries = self._structure.guide_statistics(
            to_numpy(self._x), to_numpy(self._y), len(self.classes_), lambda a: self._x.new_tensor(np.asarray(a))
        )
        for name, value in summaries.items():
            self._prior.setdefault(name, value)
        self._predictive = {k[11:]: v.to(self.device_) for k, v in tensors.items() if k.startswith("predictive.")}
        self._subspace = None  # a file may have neither the ``subspace`` setting nor its tensors
        saved = "subspace.basis" in tensors
        if saved != (self.subspace is not None):
            raise ValueError(
                f"the setting subspace={self.subspace!r} does not match the saved tensors, which "
                f"{'hold' if saved else 'lack'} a principal subspace (subspace.basis)"
            )
        if saved:
            self._subspace = {
                "centre": to_numpy(tensors["subspace.centre"]),
                "basis": to_numpy(tensors["subspace.basis"]),
                "residual_variance": float(tensors["subspace.residual_variance"]),
            }
            if self._subspace["basis"].shape != (int((~self._constant).sum()), self._x.shape[1]):
                raise ValueError(
                    f"subspace.basis has shape {tuple(self._subspace['basis'].shape)}, not "
                    f"(modelled features, components) = ({int((~self._constant).sum())}, {self._x.shape[1]})"
                )

    # --------------------------------------------------------- parameter draws
    def _draw_parameters(self, num: int, seed: int | None) -> dict[str, torch.Tensor]:
        """``num`` joint draws of the class parameters from the fitted posterior."""
        from bayesgen.arviz import _vectorize  # one vectorising plate, shared with the bridge
        from bayesgen.infer import param_scope

        args, kwargs = self._model_args()
        small = (self._x[:1], self._y[:1])
        with param_scope(self._param_state), seeded(seed, self.device_), torch.no_grad(), quiet_wishart():
            tr = poutine.trace(_vectorize(guide, num, -2)).get_trace(*small, **kwargs)
        C, d = len(self.classes_), self._x.shape[1]
        draws = {"weights": tr.nodes["weights"]["value"].reshape(num, C)}
        draws["loc"] = tr.nodes["loc"]["value"].reshape(num, C, d)
        draws.update(self._structure.draws_from_trace(tr.nodes, num, C, d))
        return draws

    def _joint_log_prob(self, xv: np.ndarray, num_samples: int | None, seed: int | None) -> torch.Tensor:
        """log p(z, y = c) of model-space rows under the posterior predictive, (n_rows, n_classes)."""
        x = torch.as_tensor(xv, dtype=self._x.dtype, device=self.device_)
        if self.method == "exact":
            return self._exact_joint_log_prob(x)
        num = check_count(self.num_samples if num_samples is None else num_samples, "num_samples")
        draws = self._draw_parameters(num, self._method_seed(seed))
        out = []
        structure = self._structure
        with torch.no_grad():
            prepared = structure.prepare_draws(draws)
            log_w = draws["weights"].log()
            for xb in row_chunks(x, len(self.classes_)):
                per_draw = torch.stack([structure.draw_log_prob(draws, s, xb, prepared) + log_w[s] for s in range(num)])
                out.append(torch.logsumexp(per_draw, dim=0) - math.log(num))
        return torch.cat(out)

    def _exact_joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, y = c) under the exact posterior predictive (Student-t), (n_rows, n_classes)."""
        return self._structure.predictive_joint_log_prob(self._predictive, x)

    def _check_new_x(self, X: Any, what: str = "X") -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            missing = [c for c in self.feature_names_ if c not in X.columns]
            if missing:
                raise ValueError(f"{what} lacks feature columns {missing[:10]}")
            X = X[self.feature_names_]
        elif np.ndim(X) == 1:  # one row
            X = np.asarray(X)[None, :]
        arr, _ = as_feature_matrix(X, what, n_features=len(self.feature_names_))
        return arr[:, ~self._constant]

    def _project(self, arr: np.ndarray) -> np.ndarray:
        """Modelled raw features -> their principal-component scores (unchanged without ``subspace``)."""
        if self._subspace is None:
            return arr
        return (arr - self._subspace["centre"]) @ self._subspace["basis"]

    def _to_model_space(self, arr: np.ndarray) -> np.ndarray:
        """Modelled raw features -> the standardised coordinates of the class model."""
        return (self._project(arr) - self._shift) / self._scale

    def _residual_log_density(self, arr: np.ndarray) -> np.ndarray:
        """log density of each row's part outside the principal subspace (0 without one)."""
        if self._subspace is None:
            return np.zeros(len(arr))
        basis = self._subspace["basis"]
        resid = off_subspace(arr - self._subspace["centre"], basis)
        var = self._subspace["residual_variance"]
        k = basis.shape[0] - basis.shape[1]
        return -0.5 * ((resid**2).sum(axis=1) / var + k * math.log(2 * math.pi * var))

    # ---------------------------------------------------------------- verbs
    def predict_proba(self, X: Any, *, num_samples: int | None = None, seed: int | None = None) -> np.ndarray:
        """Posterior predictive class probabilities p(y = c | x).

        With ``method="exact"`` the posterior predictive is the exact Student-t
        of the conjugate model (no sampling); otherwise it is averaged over
        ``num_samples`` posterior draws.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features), or pandas.DataFrame
        num_samples : int, optional
            Posterior draws averaged (default ``self.num_samples``).
        seed : int, optional

        Returns
        -------
        numpy.ndarray, shape (n_rows, n_classes)
            Columns in the order of ``classes_``.
        """
        self._check_fitted()
        joint = self._joint_log_prob(self._to_model_space(self._check_new_x(X)), num_samples, seed)
        return to_numpy(torch.softmax(joint, dim=-1)).astype(float)

    def predict(self, X: Any, *, num_samples: int | None = None, seed: int | None = None) -> np.ndarray:
        """Most probable class of each row (labels from ``classes_``)."""
        self._check_fitted()
        return self.classes_[self.predict_proba(X, num_samples=num_samples, seed=seed).argmax(axis=1)]

    def score_samples(self, X: Any, *, num_samples: int | None = None, seed: int | None = None) -> np.ndarray:
        """Log density log p(x) under the posterior predictive (modelled features only).

        With ``subspace``, the density of the principal-component scores times
        that of the residual (the change of basis is orthonormal).

        Returns
        -------
        numpy.ndarray, shape (n_rows,)
        """
        self._check_fitted()
        arr = self._check_new_x(X)
        joint = self._joint_log_prob(self._to_model_space(arr), num_samples, seed)
        # The model works on standardised features; the Jacobian returns the raw scale.
        log_p = to_numpy(torch.logsumexp(joint, dim=-1)).astype(float) - float(np.log(self._scale).sum())
        return log_p + self._residual_log_density(arr)

    def sample(
        self, num_samples: int, y: Any = None, *, seed: int | None = None, as_frame: bool = False
    ) -> tuple[Any, np.ndarray]:
        """Sample new labelled rows from the posterior predictive.

        ``method="exact"`` samples the exact predictive (Student-t per class,
        Dirichlet-Categorical classes); SVI fits draw class parameters from the
        guide (up to 64 joint draws, shared round-robin by the rows).

        Parameters
        ----------
        num_samples : int
            Rows to generate.
        y : None, "uniform", a class label, or array_like of ``num_samples`` labels
            None draws each row's class from the class weights (the posterior
            predictive's, near the data's own proportions; for SVI fits the
            weights of the row's joint draw); "uniform" gives exactly balanced
            classes (``num_samples % C`` of them one row more, the first in
            ``classes_`` order) in a random order; a label gives every row that
            class; a sequence gives each row its own.
        seed : int, optional
        as_frame : bool, default False
            Return a DataFrame with the feature names.

        Returns
        -------
        X : numpy.ndarray, shape (num_samples, n_features), or DataFrame
        y : numpy.ndarray, shape (num_samples,)

        Raises
        ------
        ValueError
            ``y`` names a label not in ``classes_``, or is a sequence without
            ``num_samples`` labels.
        """
        self._check_fitted()
        n = check_count(num_samples, "num_samples", minimum=0)
        seed = self._method_seed(seed)
        exact = self.method == "exact"
        if exact:
            class_weights = to_numpy(self._predictive["weights"])
        else:
            num_draws = max(1, min(n, 64))
            draws = self._draw_parameters(num_draws, seed)
            owner = torch.arange(n, device=self.device_) % num_draws
            class_weights = to_numpy(draws["weights"][owner])  # a row's class weights are its joint draw's
        index = sample_class_index(y, n, self.classes_, class_weights, np.random.default_rng(seed))
        labels = torch.as_tensor(index, device=self.device_)
        with seeded(seed + 1, self.device_), torch.no_grad():
            if exact:
                # The exact posterior predictive: a (multivariate) Student-t per class.
                xs = self._structure.sample_predictive(self._predictive, labels)
            else:
                xs = self._structure.sample_from_draws(draws, owner, labels)
            modelled = to_numpy(xs) * self._scale + self._shift
            if self._subspace is not None:
                # Back from the scores, plus the residual noise orthogonal to the basis.
                basis = self._subspace["basis"]
                noise = to_numpy(torch.randn(n, basis.shape[0], device=self.device_, dtype=torch.float64))
                noise = off_subspace(noise, basis) * math.sqrt(self._subspace["residual_variance"])
                modelled = self._subspace["centre"] + modelled @ basis.T + noise
        full = np.empty((n, len(self.feature_names_)))
        full[:, ~self._constant] = modelled
        full[:, self._constant] = self._constant_values
        if self.clip is not None:
            full = np.clip(full, float(self.clip[0]), float(self.clip[1]))
        out_y = self.classes_[index]
        if as_frame:
            return pd.DataFrame(full, columns=self.feature_names_), out_y
        return full, out_y

    def posterior(self, num_samples: int = 100, *, seed: int | None = None) -> dict[str, np.ndarray]:
        """Draws of the class parameters on the raw feature scale (modelled features).

        Parameters
        ----------
        num_samples : int, default 100
        seed : int, optional
            Default ``self.seed``.

        Returns
        -------
        dict of numpy.ndarray
            ``weights`` (S, C) and ``loc`` (S, C, d); then ``scale`` (S, C, d)
            for "diag", ``scale_tril`` (S, C, d, d) for "full", or
            ``cov_factor`` (S, C, d, r) and ``cov_diag`` (S, C, d) for "lowrank".
            With ``subspace``, d counts principal components: the parameters of
            the scores ``(x - centre) @ basis`` (see :attr:`subspace_`).
        """
        self._check_fitted()
        draws = {
            k: to_numpy(v).astype(float)
            for k, v in self._draw_parameters(check_count(num_samples, "num_samples"), self._method_seed(seed)).items()
        }
        scale = self._scale
        out = {"weights": draws["weights"], "loc": draws["loc"] * scale + self._shift}
        out.update(self._structure.raw_scale_draws(draws, scale))
        return out

    def class_means(self) -> pd.DataFrame:
        """Posterior mean of every class's location (features in columns).

        Returns
        -------
        pandas.DataFrame, shape (n_classes, n_features)
        """
        self._check_fitted()
        params = self._params_numpy()
        if "loc_loc" in params:
            loc = params["loc_loc"] * self._scale + self._shift
        else:  # the low-rank guide's locations: an exact conditional, averaged over the covariance's draws
            loc = self.posterior(1000)["loc"].mean(axis=0)
        if self._subspace is not None:
            loc = self._subspace["centre"] + loc @ self._subspace["basis"].T
        full = np.empty((len(self.classes_), len(self.feature_names_)))
        full[:, ~self._constant] = loc
        full[:, self._constant] = self._constant_values
        return pd.DataFrame(full, index=self.classes_, columns=self.feature_names_)

    @property
    def subspace_(self) -> dict[str, Any] | None:
        """With ``subspace``: ``centre`` (d,), ``basis`` (d, D) and ``residual_variance``.

        Over the modelled (non-constant) features, on their raw scale; None
        when the classes are modelled on the features themselves.
        """
        self._check_fitted()
        if self._subspace is None:
            return None
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._subspace.items()}

    def class_weights(self) -> pd.Series:
        """Posterior mean of the class weights."""
        self._check_fitted()
        conc = self._params_numpy()["weights_concentration"]
        return pd.Series(conc / conc.sum(), index=self.classes_, name="weight")

    def to_arviz(self, num_samples: int = 200, *, seed: int | None = 0, prior: bool = False) -> Any:
        """Posterior of weights, locations and covariance parts, per-row log-likelihood.

        Everything is on the standardised feature scale (see the module notes); with
        ``subspace``, on the standardised principal-component scores (``pc1``, ...).
        Full-covariance models draw one sample at a time (each draw holds a
        d × d matrix per class); the others are vectorised. After a semi-supervised
        fit the model holds the unlabelled rows too, at site ``x_unlabelled``
        (their class summed out), so the log-likelihood, the predictive checks
        and :meth:`vi_diagnostic` judge EM's posterior against the whole model.
        """
        with quiet_wishart():
            return super().to_arviz(num_samples, seed=seed, prior=prior)

    def plot_samples(self, num_per_class: int = 8, *, image_shape: tuple[int, int] | None = None, seed: int = 0) -> Any:
        """A grid of generated rows per class, drawn as images (for pixel data).

        Parameters
        ----------
        num_per_class : int, default 8
        image_shape : (int, int), optional
            Height and width; default a square of the feature count.
        seed : int, default 0

        Returns
        -------
        matplotlib.figure.Figure
        """
        from bayesgen.plots import plot_image_grid

        self._check_fitted()
        num_per_class = check_count(num_per_class, "num_per_class")
        rows = []
        for label in self.classes_:
            xs, _ = self.sample(num_per_class, y=label, seed=seed)
            rows.append(xs)
        d = len(self.feature_names_)
        side = int(round(math.sqrt(d)))
        shape = tuple(image_shape) if image_shape is not None else (side, side)
        if len(shape) != 2 or int(np.prod(shape)) != d:
            raise ValueError(
                f"image_shape={shape} does not hold the {d} features of a row"
                + ("" if image_shape is not None else "; pass image_shape=(height, width)")
            )
        return plot_image_grid(np.stack(rows), shape, row_labels=[str(c) for c in self.classes_])


# ------------------------------------------------------------------ spec recipe
# How a run spec (bayesgen.runs.spec) fits this model; the registry entry names this function (``spec_fit``).
def fit_gaussian_generator_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The generator's spec recipe: a labelled table or digits; report: TRTR/TSTR and memorisation."""
    from bayesgen.augment import memorization_check, tstr
    from bayesgen.runs.spec import SpecFit, estimator_kwargs, load_labelled_table, split_labelled

    X, y, checksum = load_labelled_table(spec)
    seed = int(spec["run"]["seed"])
    shape = spec["report"].get("image_shape")
    if shape and shape[0] * shape[1] != X.shape[1]:
        raise ValueError(
            f"{spec['_path']}: [report] image_shape {shape} holds {shape[0] * shape[1]} pixels, "
            f"but the data have {X.shape[1]} features"
        )
    X_tr, X_te, y_tr, y_te = split_labelled(spec, X, y, 0.3)
    est = GaussianGenerator(**estimator_kwargs(GaussianGenerator, spec, device))
    est.progress = progress
    est.fit(X_tr, y_tr, **fit_kwargs)
    scores = tstr(est, X_tr, y_tr, X_te, y_te, seed=seed)
    synthetic, _ = est.sample(min(len(X_tr), 2000), seed=seed)
    memo = memorization_check(synthetic, X_tr, X_te)
    report = pd.DataFrame(
        {
            "value": {
                "train_rows": len(X_tr),
                "test_rows": len(X_te),
                "bayes_classifier_accuracy": float(np.mean(est.predict(X_te) == y_te)),
                "trtr_accuracy": scores["trtr"],
                "tstr_accuracy": scores["tstr"],
                "memorization_copy_rate": memo["copy_rate"],
                "memorization_expected_rate": memo["expected_rate"],
                "memorization_passed": float(memo["passed"]),
            }
        }
    )
    figures = {}
    if shape:
        figures["samples"] = est.plot_samples(8, image_shape=tuple(shape), seed=seed)
    return SpecFit(est, checksum, report, figures)

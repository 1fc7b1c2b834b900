"""Beta-Binomial A/B(/n) test.

Generative story, for variants k = 1..K::

    rate_k      ~ Beta(prior_alpha, prior_beta)          # conversion rate of variant k
    successes_k ~ Binomial(trials_k, rate_k)             # counts per variant

or, for raw events (one row per visitor), ``outcome_i ~ Bernoulli(rate_{variant_i})``.
The Beta prior is conjugate, so the exact posterior is
``Beta(prior_alpha + successes_k, prior_beta + trials_k - successes_k)``
(:func:`exact_posterior`). The guide is a Beta per variant parameterised by its
mean and concentration, so it contains the exact posterior and SVI can reach it;
the closed form is offered as ``method="exact"`` and is the ground truth of the
tests.

Decision quantities: the probability each variant is best
``P(rate_k = max_j rate_j)``, the expected loss of choosing k
``E[max_j rate_j - rate_k]`` (Chris Stucchio's "expected loss" decision rule),
and the relative lift ``(rate_k - rate_c) / rate_c`` against a control c.

References
----------
Gelman et al. (2013), Bayesian Data Analysis, 3rd ed., ch. 2 (Beta-Binomial).
Stucchio (2015), Bayesian A/B Testing at VWO.
Bertrand & Mullainathan (2004), Are Emily and Greg More Employable than Lakisha
and Jamal?, American Economic Review 94(4) — the bundled example counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from scipy import integrate, optimize, stats
from torch.distributions import constraints

from bayesgen._checks import PRIOR_RANGE, validate_counts, validate_prior
from bayesgen._runtime import check_ci_prob, check_count, seeded, to_numpy
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.models._base import BayesianEstimator

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.runs.spec import SpecFit

__all__ = [
    "BetaBinomialTest",
    "model",
    "guide",
    "events_model",
    "events_guide",
    "exact_posterior",
    "prob_best_exact",
    "expected_loss_exact",
    "beta_hdi",
    "lift_mean_exact",
    "validate_counts",
    "validate_prior",
    "PRIOR_RANGE",
    "events_to_counts",
    "fit_ab_test_spec",
]

#: ArviZ dimension names of every site.
DIMS = {"rate": ["variant"], "successes": ["variant"]}


# --------------------------------------------------------------------------- model
def model(
    trials: torch.Tensor,
    successes: torch.Tensor | None = None,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> None:
    """Beta-Binomial model over counts.

    Parameters
    ----------
    trials : Tensor, shape (n_variants,)
        Trials (visitors) per variant.
    successes : Tensor, shape (n_variants,), optional
        Successes (conversions) per variant; None samples from the prior predictive.
    prior_alpha, prior_beta : float, default 1.0
        Beta prior shared by every variant (1, 1 is uniform).
    """
    alpha = trials.new_tensor(prior_alpha).expand(trials.shape)
    beta = trials.new_tensor(prior_beta).expand(trials.shape)
    with pyro.plate("variant", trials.shape[-1]):
        rate = pyro.sample("rate", dist.Beta(alpha, beta))
        pyro.sample("successes", dist.Binomial(total_count=trials, probs=rate), obs=successes)


def _rate_guide(num_variants: int, like: torch.Tensor) -> None:
    # Mean/concentration is the natural parameterisation of a Beta: the mean moves
    # on the logit scale and the concentration on the log scale, so Adam reaches
    # both the location and the width of the exact posterior. Starts at Beta(1, 1),
    # away from any informative answer.
    mean = pyro.param("rate_mean", lambda: like.new_full((num_variants,), 0.5), constraint=constraints.unit_interval)
    concentration = pyro.param(
        "rate_concentration", lambda: like.new_full((num_variants,), 2.0), constraint=constraints.positive
    )
    with pyro.plate("variant", num_variants):
        pyro.sample("rate", dist.Beta(mean * concentration, (1 - mean) * concentration))


def guide(
    trials: torch.Tensor,
    successes: torch.Tensor | None = None,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> None:
    """Mean-field Beta guide for :func:`model` (same signature)."""
    _rate_guide(trials.shape[-1], trials)


def events_model(
    variant: torch.Tensor,
    outcome: torch.Tensor | None = None,
    subsample: torch.Tensor | None = None,
    *,
    num_variants: int,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> None:
    """Beta-Bernoulli model over raw events, minibatched over events.

    Parameters
    ----------
    variant : Tensor of int64, shape (n_events,)
        Variant index of every event.
    outcome : Tensor, shape (n_events,), optional
        0/1 outcome of every event; None samples from the prior predictive.
    subsample : Tensor of int64, optional
        Indices of the events in this minibatch (given by the SVI runner).
    num_variants : int
        Number of variants.
    prior_alpha, prior_beta : float, default 1.0
    """
    alpha = variant.new_tensor(prior_alpha, dtype=torch.get_default_dtype()).expand(num_variants)
    beta = variant.new_tensor(prior_beta, dtype=torch.get_default_dtype()).expand(num_variants)
    with pyro.plate("variant", num_variants):
        rate = pyro.sample("rate", dist.Beta(alpha, beta))
    with pyro.plate("event", variant.shape[0], subsample=subsample, device=variant.device) as idx:
        obs = outcome.index_select(0, idx) if outcome is not None else None
        pyro.sample("outcome", dist.Bernoulli(rate[..., variant.index_select(0, idx)]), obs=obs)


def events_guide(
    variant: torch.Tensor,
    outcome: torch.Tensor | None = None,
    subsample: torch.Tensor | None = None,
    *,
    num_variants: int,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> None:
    """Beta guide for :func:`events_model` (same signature, same parameters as :func:`guide`)."""
    _rate_guide(num_variants, variant.new_zeros((), dtype=torch.get_default_dtype()))


# ----------------------------------------------------------------- closed forms
def exact_posterior(
    successes: Sequence[float] | np.ndarray,
    trials: Sequence[float] | np.ndarray,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate posterior Beta parameters of every variant.

    Parameters
    ----------
    successes, trials : array_like, shape (n_variants,)
    prior_alpha, prior_beta : float, default 1.0

    Returns
    -------
    alpha, beta : numpy.ndarray, shape (n_variants,)

    Examples
    --------
    >>> exact_posterior([235, 157], [2435, 2435])
    (array([236., 158.]), array([2201., 2279.]))
    """
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    return prior_alpha + s, prior_beta + n - s


def _quadrature_grid(alpha: np.ndarray, beta: np.ndarray, points: int = 4001) -> np.ndarray:
    # Each posterior is concentrated in a narrow band; a dense grid over every
    # variant's central mass (union of bands) integrates accurately even when
    # the bands are far apart or very narrow (millions of trials).
    parts = [
        np.linspace(stats.beta.ppf(1e-12, a, b), stats.beta.isf(1e-12, a, b), points)
        for a, b in zip(alpha, beta, strict=True)
    ]
    return np.unique(np.concatenate(parts))


def prob_best_exact(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Exact probability that each variant has the highest rate.

    ``P(k best) = ∫ f_k(x) Π_{j≠k} F_j(x) dx`` for independent Beta
    posteriors, by numerical quadrature (error far below Monte Carlo error).

    Parameters
    ----------
    alpha, beta : array_like, shape (n_variants,)
        Posterior Beta parameters (from :func:`exact_posterior`).

    Returns
    -------
    numpy.ndarray, shape (n_variants,)
        Sums to 1.
    """
    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    x = _quadrature_grid(alpha, beta)
    log_cdf = stats.beta.logcdf(x[:, None], alpha, beta)
    log_pdf = stats.beta.logpdf(x[:, None], alpha, beta)
    # Each density divided by its own integral over the grid (1 up to the 2e-12 of mass outside it): at
    # billions of trials log B(α, β) loses digits to cancellation, and the normalised densities keep
    # the probabilities summing to 1.
    log_pdf -= np.log(integrate.simpson(np.exp(log_pdf), x=x, axis=0))
    # Σ_{j≠k} log F_j by leaving k out, not by subtracting it from the total: where F_k
    # underflows to 0 the subtraction would be -inf - -inf = NaN.
    others = np.stack([np.delete(log_cdf, k, axis=1).sum(axis=1) for k in range(log_cdf.shape[1])], axis=1)
    return integrate.simpson(np.exp(log_pdf + others), x=x, axis=0)


def expected_loss_exact(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Exact expected loss ``E[max_j rate_j - rate_k]`` of choosing each variant.

    Uses ``E[max_j rate_j] = ∫_0^1 (1 - Π_j F_j(x)) dx`` by quadrature.

    Parameters
    ----------
    alpha, beta : array_like, shape (n_variants,)

    Returns
    -------
    numpy.ndarray, shape (n_variants,)
    """
    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    x = _quadrature_grid(alpha, beta)
    all_below = np.exp(stats.beta.logcdf(x[:, None], alpha, beta).sum(axis=1))
    expected_max = x[0] + integrate.simpson(1.0 - all_below, x=x)
    return expected_max - alpha / (alpha + beta)


def beta_hdi(alpha: Any, beta: Any, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval of Beta distributions: the shortest interval holding ``prob`` of the mass.

    For ``alpha > 1`` and ``beta > 1`` (an interior mode) the interval ``[ppf(t), ppf(t + prob)]`` is
    shortest where its width's derivative in the lower tail mass ``t`` vanishes, i.e. where the density
    is the same at both ends; that one-dimensional condition is solved by Brent's method. A density
    that falls from 0 (``alpha <= 1 <= beta``) gives ``[0, ppf(prob)]``, one that rises to 1
    (``beta <= 1 <= alpha``) ``[isf(prob), 1]``; the uniform Beta(1, 1) has no unique shortest
    interval and gets the equal-tailed one. A U-shaped Beta (both below 1) has a highest-density
    region of two pieces, not an interval: NaN.

    Parameters
    ----------
    alpha, beta : array_like, shape (n,)
        Beta parameters, > 0.
    prob : float
        Interval mass, in (0, 1).

    Returns
    -------
    lower, upper : numpy.ndarray, shape (n,)

    Examples
    --------
    >>> lower, upper = beta_hdi([2.0, 1.0], [5.0, 3.0], 0.9)
    >>> [round(float(v), 4) for v in (*lower, *upper)]
    [0.0302, 0.0, 0.5253, 0.5358]
    """
    prob = check_ci_prob(prob, "prob")
    a_all, b_all = np.broadcast_arrays(np.asarray(alpha, float), np.asarray(beta, float))
    if not (np.all(a_all > 0) and np.all(b_all > 0)):
        raise ValueError("Beta parameters alpha and beta must be > 0")
    lower, upper = np.full(a_all.shape, np.nan), np.full(a_all.shape, np.nan)
    for i, (a, b) in enumerate(zip(a_all.ravel(), b_all.ravel(), strict=True)):
        if a == 1 and b == 1:
            lo, hi = (1 - prob) / 2, (1 + prob) / 2
        elif a <= 1 <= b:
            lo, hi = 0.0, stats.beta.ppf(prob, a, b)
        elif b <= 1 <= a:
            lo, hi = stats.beta.isf(prob, a, b), 1.0
        elif a < 1 and b < 1:
            continue
        else:
            lo, hi = _interior_hdi(a, b, prob)
        lower.flat[i], upper.flat[i] = lo, hi
    return lower, upper


def _interior_hdi(a: float, b: float, prob: float) -> tuple[float, float]:
    # The lower end from the lower tail mass t, the upper end from the upper tail mass 1 - prob - t
    # (isf keeps an upper end near 1 from rounding to 1).
    def ends(t: float) -> tuple[float, float]:
        return stats.beta.ppf(t, a, b), stats.beta.isf(1.0 - prob - t, a, b)

    def gap(t: float) -> float:  # log density at the lower end minus at the upper end; rises with t
        lo, hi = ends(t)
        return float(stats.beta.logpdf(lo, a, b) - stats.beta.logpdf(hi, a, b))

    edge = 1e-14 * (1.0 - prob)
    first, last = edge, 1.0 - prob - edge
    # The shortest interval leaves less than 1e-14 of the mass below (above) it: it starts at 0 (ends at 1).
    if gap(first) >= 0:
        return 0.0, float(stats.beta.ppf(prob, a, b))
    if gap(last) <= 0:
        return float(stats.beta.isf(prob, a, b)), 1.0
    t = optimize.brentq(gap, first, last, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    lo, hi = ends(t)
    return float(lo), float(hi)


def lift_mean_exact(alpha: Any, beta: Any, control: int) -> np.ndarray:
    """Exact mean relative lift ``E[rate_k / rate_c] - 1`` of every variant over the control c.

    The posteriors are independent, so ``E[rate_k / rate_c] = E[rate_k] E[1 / rate_c]`` with
    ``E[1 / rate_c] = (alpha_c + beta_c - 1) / (alpha_c - 1)``, infinite for ``alpha_c <= 1``.

    Parameters
    ----------
    alpha, beta : array_like, shape (n_variants,)
    control : int
        Position of the control.

    Returns
    -------
    numpy.ndarray, shape (n_variants,)
        0 for the control itself.
    """
    alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
    ac, bc = alpha[control], beta[control]
    inverse_mean = (ac + bc - 1.0) / (ac - 1.0) if ac > 1 else np.inf
    lift = alpha / (alpha + beta) * inverse_mean - 1.0
    lift[control] = 0.0
    return lift


def _quantiles_with_mcse(values: np.ndarray, probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of independent draws and their Monte Carlo standard errors.

    The number of draws below the true q-quantile is Binomial(n, q); the order statistics at its mean
    plus and minus one binomial sd bracket the quantile with about 68 % probability, so half their
    distance is the standard error (the order-statistic method; needs no density estimate).
    """
    n = len(values)
    ordered = np.sort(values)
    est = np.quantile(values, probs)
    mcse = np.empty(len(probs))
    for j, q in enumerate(probs):
        spread = np.sqrt(n * q * (1 - q))
        lo = int(np.clip(np.floor(n * q - spread), 0, n - 1))
        hi = int(np.clip(np.ceil(n * q + spread), 0, n - 1))
        mcse[j] = (ordered[hi] - ordered[lo]) / 2
    return est, mcse


# ------------------------------------------------------------------- validation
def events_to_counts(
    events: pd.DataFrame, variant_col: str, outcome_col: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Validate raw events and aggregate them.

    Parameters
    ----------
    events : pandas.DataFrame
        One row per event (visitor), with a variant column and a 0/1 outcome.
    variant_col, outcome_col : str
        Column names.

    Returns
    -------
    variant_index : numpy.ndarray of int64, shape (n_events,)
    outcome : numpy.ndarray of float, shape (n_events,)
    successes, trials : numpy.ndarray, shape (n_variants,)
    names : list of str
        Variant names in sorted order (the index order).

    Raises
    ------
    TypeError
        ``events`` is not a DataFrame.
    ValueError
        Unknown column names, missing values, outcomes other than 0/1, fewer
        than two variants.
    """
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    for role, col in (("variant_col", variant_col), ("outcome_col", outcome_col)):
        if col not in events.columns:
            raise ValueError(f"{role}={col!r} is not a column of the data; columns are {list(events.columns)}")
    if len(events) == 0:
        raise ValueError("the events table has no rows")
    variants = events[variant_col]
    if variants.isna().any():
        raise ValueError(f"column {variant_col!r} has {int(variants.isna().sum())} missing values")
    raw = events[outcome_col]
    if raw.isna().any():
        raise ValueError(f"column {outcome_col!r} has {int(raw.isna().sum())} missing values")
    if raw.dtype == bool:
        outcome = raw.to_numpy(dtype=float)
    else:
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.isna().any() or not numeric.isin([0, 1]).all():
            bad = raw[numeric.isna() | ~numeric.isin([0, 1])].unique()[:5]
            raise ValueError(f"column {outcome_col!r} must hold only 0/1 outcomes; found {list(bad)}")
        outcome = numeric.to_numpy(dtype=float)
    names = sorted(variants.astype(str).unique())
    if any(not name.strip() for name in names):
        raise ValueError(f"column {variant_col!r} has blank variant names; name every variant")
    if len(names) < 2:
        raise ValueError(f"an A/B test needs at least two variants; column {variant_col!r} has {names}")
    index = pd.Categorical(variants.astype(str), categories=names).codes.astype(np.int64)
    trials = np.bincount(index, minlength=len(names)).astype(float)
    successes = np.bincount(index, weights=outcome, minlength=len(names))
    return index, outcome, successes, trials, names


# -------------------------------------------------------------------- estimator
class BetaBinomialTest(BayesianEstimator):
    """Bayesian A/B(/n) test of conversion rates.

    Parameters
    ----------
    prior : (float, float), default (1.0, 1.0)
        Beta(alpha, beta) prior of every variant's rate; both in [0.001, 1e6] (:data:`PRIOR_RANGE`).
    method : {"svi", "exact"}, default "svi"
        ``"svi"`` fits the Beta guide by SVI (Trace_ELBO); ``"exact"`` uses the
        conjugate posterior directly (no optimisation).
    num_steps : int, default 3000
    learning_rate : float, default 0.3
        Initial Adam learning rate (decays to ``learning_rate * final_lr_factor``).
    lr_schedule : {"exponential", "cosine"} or None, default "cosine"
    final_lr_factor : float, default 0.001
    num_particles : int, default 8
        ELBO particles per step (vectorised).
    average_last : int, default 500
        Average the guide parameters over the last steps (Polyak–Ruppert; at
        most half of ``num_steps``); see :func:`bayesgen.infer.run_svi`.
    batch_size : int, optional
        Events per minibatch when fitting raw events (:meth:`fit_events`).
        None (default): the events are summed to successes and trials per
        variant, the model's sufficient statistics, and the counts are fitted.
    convergence_rtol : float or None, default 1e-3
        Relative change of the 100-step mean loss below which the fit counts as
        converged (``converged_``); it stops the fit early only when
        ``lr_schedule`` is None. None skips the check (``converged_`` is None).
    num_samples : int, default 20000
        Posterior draws behind the lift interval of :meth:`lift` and :meth:`summary` (the other figures
        are integrals of each variant's Beta posterior) and of :meth:`posterior`.
    ci_prob : float, default 0.94
        Credible-interval mass.
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    num_threads : int, "auto" or None, default "auto"
        torch's CPU threads while fitting by SVI, the caller's count restored after: "auto" keeps a count
        you set (``OMP_NUM_THREADS``, ``torch.set_num_threads``) and otherwise uses one thread for a
        small step and the idle physical cores for a large one (:func:`bayesgen.infer.run_svi`); an int
        also applies to this estimator's other methods.
    seed : int, default 0
    progress : bool, default False
        Show a progress bar while fitting.

    Attributes
    ----------
    names_ : list of str
    successes_, trials_ : numpy.ndarray, shape (n_variants,)
    losses_ : numpy.ndarray, shape (n_steps,)
        Negative ELBO per step (empty for ``method="exact"``).
    converged_ : bool
    posterior_alpha_, posterior_beta_ : numpy.ndarray
        Beta parameters of the fitted posterior (the guide's, or the exact ones).
    exact_alpha_, exact_beta_ : numpy.ndarray
        Beta parameters of the conjugate posterior.
    data_path_ : {"counts", "events"}
        What the fit used: per-variant counts (:meth:`fit`, and
        :meth:`fit_events` without ``batch_size``) or minibatches of events.
    exact_gap_ : dict
        How far the SVI posterior is from the exact one: ``max_mean_gap_sd``
        (largest |mean difference| in exact posterior sds) and
        ``max_sd_rel_error``. A fit warns when the gap exceeds 0.25 sd or 10%:
        raise ``num_steps`` or use ``method="exact"`` (which very large counts,
        ~1e5 trials per variant and up, need).

    Examples
    --------
    >>> test = BetaBinomialTest(seed=0).fit([235, 157], [2435, 2435], names=["white", "black"])
    >>> round(float(test.prob_best()["white"]), 2)
    1.0
    """

    _model_name = "ab_test"
    _max_plate_nesting = 1

    def __init__(
        self,
        *,
        prior: tuple[float, float] = (1.0, 1.0),
        method: Literal["svi", "exact"] = "svi",
        num_steps: int = 3000,
        learning_rate: float = 0.3,
        lr_schedule: Literal["exponential", "cosine"] | None = "cosine",
        final_lr_factor: float = 0.001,
        num_particles: int = 8,
        average_last: int = 500,
        batch_size: int | None = None,
        convergence_rtol: float | None = 1e-3,
        num_samples: int = 20000,
        ci_prob: float = 0.94,
        device: DeviceLike = "auto",
        num_threads: int | Literal["auto"] | None = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.prior = prior
        self.method = method
        self.num_steps = num_steps
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.final_lr_factor = final_lr_factor
        self.num_particles = num_particles
        self.average_last = average_last
        self.batch_size = batch_size
        self.convergence_rtol = convergence_rtol
        self.num_samples = num_samples
        self.ci_prob = ci_prob
        self.device = device
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def _validate_settings(self) -> None:
        super()._validate_settings()  # shared settings and device
        self._prior = validate_prior(self.prior)
        if self.method not in ("svi", "exact"):
            raise ValueError(f"method must be 'svi' or 'exact', got {self.method!r}")
        check_ci_prob(self.ci_prob)

    def fit(
        self,
        successes: Any,
        trials: Any,
        *,
        names: Sequence[str] | None = None,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> BetaBinomialTest:
        """Fit to per-variant counts.

        Parameters
        ----------
        successes : array_like of int, shape (n_variants,)
            Conversions per variant.
        trials : array_like of int, shape (n_variants,)
            Visitors per variant.
        names : sequence of str, optional
            Variant names (default "A", "B", ...).
        checkpoint, checkpoint_every, resume
            See :func:`bayesgen.infer.run_svi`.
        distributed : bool, default False
            Counts have no rows to share between the ranks of a data-parallel fit: True raises a
            ``ValueError`` pointing to :meth:`fit_events` with ``batch_size``.

        Returns
        -------
        BetaBinomialTest
            ``self``, fitted.

        Raises
        ------
        ValueError, TypeError
            Bad counts, names or settings (see :func:`validate_counts`).
        """
        if distributed:
            raise ValueError(
                "a data-parallel fit shards rows over the ranks, and counts have none: fit the raw events "
                "(fit_events, or a spec with events) with batch_size, or fit the counts in one process"
            )
        self._validate_settings()
        s, n, names = validate_counts(successes, trials, names)
        return self._fit_counts(s, n, names, checkpoint, checkpoint_every, resume)

    def _fit_counts(
        self,
        s: np.ndarray,
        n: np.ndarray,
        names: list[str],
        checkpoint: PathLikeStr | None,
        checkpoint_every: int | None,
        resume: bool | PathLikeStr,
    ) -> BetaBinomialTest:
        self._set_data(s, n, names, events=None)
        self.data_path_ = "counts"
        if self.method == "exact":
            self._fit_exact()
        else:
            self._run_svi(
                *self._count_tensors(),
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
            self._read_guide()
        return self

    def fit_events(
        self,
        events: pd.DataFrame,
        *,
        variant_col: str,
        outcome_col: str,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> BetaBinomialTest:
        """Fit to raw events: one row per visitor with a variant and a 0/1 outcome.

        The Beta-Binomial posterior depends on the events only through each
        variant's successes and trials, so by default (``batch_size=None``)
        the events are summed to those counts and the counts are fitted, as by
        :meth:`fit`. With ``batch_size`` set, SVI runs the per-event
        Beta-Bernoulli model and subsamples events (``pyro.plate`` with
        ``subsample``), the path a model without sufficient statistics
        needs. ``data_path_`` says which ran: ``"counts"`` or ``"events"``.

        Parameters
        ----------
        events : pandas.DataFrame
        variant_col, outcome_col : str
            Column names; variants are named by their values (sorted).
        checkpoint, checkpoint_every, resume, distributed
            See :func:`bayesgen.infer.run_svi`. ``distributed=True`` fits the events path data-parallel
            under ``torchrun`` (``batch_size`` events per rank); without ``batch_size`` it raises a
            ``ValueError``, as the counts path has no rows to shard.

        Returns
        -------
        BetaBinomialTest
            ``self``, fitted.
        """
        self._validate_settings()
        if variant_col == outcome_col:
            raise ValueError(f"variant_col and outcome_col must be different columns, got {variant_col!r} for both")
        index, outcome, s, n, names = events_to_counts(events, variant_col, outcome_col)
        if distributed and (self.method == "exact" or self.batch_size is None):
            raise ValueError(
                "a data-parallel fit shards events over the ranks: set batch_size (events per rank) with "
                "method='svi'; the counts path is two sums per variant and needs no ranks"
            )
        if self.method == "exact" or self.batch_size is None:
            return self._fit_counts(s, n, names, checkpoint, checkpoint_every, resume)
        self._set_data(s, n, names, events=(index, outcome))
        self.data_path_ = "events"
        if self.batch_size is not None and not 1 <= int(self.batch_size) <= len(index):
            raise ValueError(f"batch_size must be between 1 and the {len(index)} events, got {self.batch_size}")
        dev = self.device_
        self._run_svi(
            torch.as_tensor(index, device=dev),
            torch.as_tensor(outcome, dtype=torch.get_default_dtype(), device=dev),
            model_kwargs={"num_variants": len(names), "prior_alpha": self._prior[0], "prior_beta": self._prior[1]},
            data_size=len(index) if self.batch_size is not None else None,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            distributed=distributed,
        )
        self._read_guide()
        return self

    def _set_data(self, s: np.ndarray, n: np.ndarray, names: list[str], events: tuple | None) -> None:
        self.successes_, self.trials_, self.names_ = s, n, names
        self._fitted_on = "events" if events is not None else "counts"
        self.exact_alpha_, self.exact_beta_ = exact_posterior(s, n, *self._prior)

    def _count_tensors(self) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        dev = self.device_
        return (
            torch.as_tensor(self.trials_, dtype=torch.get_default_dtype(), device=dev),
            torch.as_tensor(self.successes_, dtype=torch.get_default_dtype(), device=dev),
            self._prior[0],
            self._prior[1],
        )

    def _fit_exact(self) -> None:
        # The exact posterior written into the guide's parameters: every verb
        # (draws, ArviZ, save/load) then works the same for both methods.
        a, b = self.exact_alpha_, self.exact_beta_
        from bayesgen.infer import param_scope

        state: dict = {"params": {}, "constraints": {}}
        trials = self._count_tensors()[0]
        with param_scope(state):
            pyro.param("rate_mean", trials.new_tensor(a / (a + b)), constraint=constraints.unit_interval)
            pyro.param("rate_concentration", trials.new_tensor(a + b), constraint=constraints.positive)
        self._param_state = state
        self.losses_ = np.zeros(0)
        self.converged_ = True
        self.n_steps_ = 0
        self.fit_seconds_ = 0.0
        self._read_guide()

    def _read_guide(self, warn: bool = True) -> None:
        p = self._params_numpy()
        mean, conc = p["rate_mean"].astype(float), p["rate_concentration"].astype(float)
        self.posterior_alpha_, self.posterior_beta_ = mean * conc, (1 - mean) * conc
        # The model is conjugate, so every SVI fit can be checked against the truth.
        ea, eb = self.exact_alpha_, self.exact_beta_
        exact_sd = stats.beta.std(ea, eb)
        gap_mean = np.abs(stats.beta.mean(self.posterior_alpha_, self.posterior_beta_) - stats.beta.mean(ea, eb))
        gap_sd = np.abs(stats.beta.std(self.posterior_alpha_, self.posterior_beta_) / exact_sd - 1)
        self.exact_gap_ = {
            "max_mean_gap_sd": float((gap_mean / exact_sd).max()),
            "max_sd_rel_error": float(gap_sd.max()),
        }
        too_far = self.exact_gap_["max_mean_gap_sd"] > 0.25 or self.exact_gap_["max_sd_rel_error"] > 0.10
        if warn and too_far:
            warnings.warn(
                "the SVI posterior is off the exact conjugate posterior "
                f"(mean gap {self.exact_gap_['max_mean_gap_sd']:.2f} sd, "
                f"sd error {100 * self.exact_gap_['max_sd_rel_error']:.0f}%); "
                "increase num_steps or use method='exact'",
                UserWarning,
                stacklevel=3,
            )

    # --------------------------------------------------------- base hooks
    def _model_and_guide(self, for_arviz: bool = False) -> tuple:
        if getattr(self, "_fitted_on", "counts") == "events" and not for_arviz:
            return events_model, events_guide
        return model, guide

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        if getattr(self, "_fitted_on", "counts") == "events" and not for_arviz:
            # Only the parameter shapes matter when rebuilding the guide.
            dev = self.device_
            return (torch.zeros(1, dtype=torch.int64, device=dev),), {"num_variants": len(self.names_)}
        return self._count_tensors(), {}

    def _arviz_dims(self) -> tuple[dict, dict]:
        return DIMS, {"variant": list(self.names_)}

    def _ppc_statistics(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """The successes of every variant."""
        return {f"successes[{name}]": float(v) for name, v in zip(self.names_, data["successes"], strict=True)}

    def _reference_moments(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
        a, b = self.exact_alpha_, self.exact_beta_
        return {"rate": (stats.beta.mean(a, b), stats.beta.std(a, b))}, {}

    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {"names_": self.names_, "fitted_on": self._fitted_on}
        tensors = {"successes": torch.as_tensor(self.successes_), "trials": torch.as_tensor(self.trials_)}
        return meta, tensors

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self._prior = validate_prior(self.prior)
        s, n = to_numpy(tensors["successes"]), to_numpy(tensors["trials"])
        names = meta["names_"]
        if not isinstance(names, list) or len(names) != len(s) or len(set(map(str, names))) != len(names):
            raise ValueError(f"names_ must be {len(s)} distinct variant names, got {names!r}")
        if meta["fitted_on"] not in ("counts", "events"):
            raise ValueError(f"fitted_on must be 'counts' or 'events', got {meta['fitted_on']!r}")
        self.names_ = [str(v) for v in names]
        self._set_data(s, n, self.names_, events=None)
        self._fitted_on = meta["fitted_on"]

    def _rebuild_param_state(self, saved: dict[str, torch.Tensor]) -> dict:
        state = super()._rebuild_param_state(saved)
        self._param_state = state
        self._read_guide(warn=False)  # a reloaded model was judged when it was fitted
        return state

    # ------------------------------------------------------------ verbs
    def posterior(self, num_samples: int | None = None, *, seed: int | None = None) -> dict[str, np.ndarray]:
        """Draws of every variant's rate from the fitted posterior (the contract of
        :meth:`~bayesgen.models._base.BayesianEstimator.posterior`).

        Parameters
        ----------
        num_samples : int, optional
            Default ``self.num_samples``.
        seed : int, optional
            Default ``self.seed``; the same seed gives the same draws.

        Returns
        -------
        dict
            ``rate``: numpy.ndarray, shape (num_samples, n_variants), variants in ``names_`` order.
            :meth:`rate_draws` gives the same draws as a table with a column per variant.
        """
        return {"rate": self.rate_draws(num_samples, seed=seed).to_numpy()}

    def rate_draws(self, num_samples: int | None = None, *, seed: int | None = None) -> pd.DataFrame:
        """:meth:`posterior`'s rate draws as a table, one column per variant.

        Returns
        -------
        pandas.DataFrame, shape (num_samples, n_variants)
        """
        self._check_fitted()
        num = check_count(self.num_samples if num_samples is None else num_samples, "num_samples")
        seed = self._method_seed(seed)
        a = torch.as_tensor(self.posterior_alpha_, dtype=torch.float64)
        b = torch.as_tensor(self.posterior_beta_, dtype=torch.float64)
        with seeded(seed):
            draws = dist.Beta(a, b).sample((num,))
        return pd.DataFrame(to_numpy(draws), columns=self.names_)

    def prob_best(self, *, exact: bool | None = None) -> pd.Series:
        """Probability that each variant has the highest rate.

        Parameters
        ----------
        exact : bool, optional
            True integrates the exact conjugate posterior; False integrates the
            fitted posterior (a Beta per variant, the guide's; with
            ``method="exact"`` it is the exact one). Default: exact for
            ``method="exact"``, the fitted guide for ``method="svi"``. Either way
            it is a one-dimensional integral (:func:`prob_best_exact`), with no
            Monte Carlo error.

        Returns
        -------
        pandas.Series
            Indexed by variant name; sums to 1.
        """
        self._check_fitted()
        return pd.Series(prob_best_exact(*self._betas(exact)), index=self.names_, name="prob_best")

    def expected_loss(self, *, exact: bool | None = None) -> pd.Series:
        """Expected loss ``E[max_j rate_j - rate_k]`` of shipping each variant.

        Parameters
        ----------
        exact : bool, optional
            As in :meth:`prob_best`.

        Returns
        -------
        pandas.Series
            In rate units (0.001 = 0.1 percentage point), indexed by variant.
        """
        self._check_fitted()
        return pd.Series(expected_loss_exact(*self._betas(exact)), index=self.names_, name="expected_loss")

    def lift(self, control: str | int = 0, *, ci_prob: float | None = None) -> pd.DataFrame:
        """Relative lift ``(rate_k - rate_control) / rate_control`` with a credible interval.

        The mean (:func:`lift_mean_exact`) and ``prob_positive`` (a one-dimensional integral, as in
        :func:`prob_best_exact`) are computed from the Beta posteriors (the exact ones for
        ``method="exact"``, the fitted guide's for ``method="svi"``) without draws; the interval
        ends are quantiles of ``num_samples`` posterior draws, with their Monte Carlo standard
        errors.

        Parameters
        ----------
        control : str or int, default 0
            Control variant, by name or position.
        ci_prob : float, optional
            Interval mass; default ``self.ci_prob``.

        Returns
        -------
        pandas.DataFrame
            One row per other variant: ``mean``, ``lower``, ``upper`` (equal-tailed),
            ``prob_positive`` (P(lift > 0)), and ``lower_mcse``, ``upper_mcse`` (Monte Carlo
            standard errors of the interval ends). ``attrs["monte_carlo"]`` names the columns
            computed from draws.
        """
        self._check_fitted()
        return self._lift_table(self.rate_draws(), control, ci_prob)

    def _lift_table(self, draws: pd.DataFrame, control: str | int, ci_prob: float | None) -> pd.DataFrame:
        ctrl = self._variant_name(control)
        c = self.names_.index(ctrl)
        prob = check_ci_prob(self.ci_prob if ci_prob is None else ci_prob)
        a, b = self._betas(None)
        means = lift_mean_exact(a, b, c)
        base = draws[ctrl].to_numpy()
        rows = {}
        for k, name in enumerate(self.names_):
            if name == ctrl:
                continue
            rel = draws[name].to_numpy() / base - 1.0
            (lo, hi), (lo_se, hi_se) = _quantiles_with_mcse(rel, [(1 - prob) / 2, (1 + prob) / 2])
            rows[name] = {
                "mean": means[k],
                "lower": lo,
                "upper": hi,
                "prob_positive": prob_best_exact(a[[k, c]], b[[k, c]])[0],
                "lower_mcse": lo_se,
                "upper_mcse": hi_se,
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = f"vs {ctrl}"
        table.attrs["monte_carlo"] = ["lower", "upper"]
        table.attrs["num_draws"] = len(draws)
        return table

    def summary(self, control: str | int = 0) -> pd.DataFrame:
        """One row per variant: data, posterior of the rate, P(best), expected loss, lift.

        Every figure with a closed form or a one-dimensional integral comes from the Beta posterior
        of each variant: the conjugate Beta(``exact_alpha_``, ``exact_beta_``) with
        ``method="exact"``, the fitted guide's Beta(``posterior_alpha_``, ``posterior_beta_``) with
        ``method="svi"``. These are the rate's mean, sd, equal-tailed interval
        (``scipy.stats.beta.ppf``) and highest-density interval (:func:`beta_hdi`), P(best),
        expected loss and the mean lift. The ends of the lift interval, quantiles of a ratio of Beta
        variables, have no closed form; they are quantiles of ``num_samples`` posterior draws, and
        the ``*_mcse`` columns are their Monte Carlo standard errors.

        Parameters
        ----------
        control : str or int, default 0
            Control variant for the lift columns.

        Returns
        -------
        pandas.DataFrame
            Indexed by variant: ``successes``, ``trials``, ``observed_rate``, ``rate_mean``,
            ``rate_sd``, ``rate_{pct}%_lower``/``_upper`` (equal-tailed, ``pct = 100 * ci_prob``),
            ``rate_{pct}%_hdi_lower``/``_upper``, ``prob_best``, ``expected_loss``, ``lift_mean``,
            ``lift_{pct}%_lower``/``_upper`` and their Monte Carlo standard errors
            ``lift_{pct}%_lower_mcse``/``_upper_mcse`` (all 0 for the control, its lift over itself).
            ``attrs["monte_carlo"]`` names the columns computed from draws and
            ``attrs["num_draws"]`` their number.

        Examples
        --------
        >>> test = BetaBinomialTest(method="exact").fit([235, 157], [2435, 2435], names=["white", "black"])
        >>> table = test.summary()
        >>> round(float(table.loc["black", "rate_mean"]), 5), table.attrs["monte_carlo"]
        (0.06483, ['lift_94%_lower', 'lift_94%_upper'])
        """
        self._check_fitted()
        draws = self.rate_draws()
        prob = float(self.ci_prob)
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        pct = f"{100 * prob:g}"
        a, b = self._betas(None)
        rate = {
            "rate_mean": stats.beta.mean(a, b),
            "rate_sd": stats.beta.std(a, b),
            f"rate_{pct}%_lower": stats.beta.ppf(lo, a, b),
            f"rate_{pct}%_upper": stats.beta.ppf(hi, a, b),
        }
        hdi = beta_hdi(a, b, prob)
        decision = {"prob_best": prob_best_exact(a, b), "expected_loss": expected_loss_exact(a, b)}
        table = pd.DataFrame(
            {
                "successes": self.successes_.astype(int),
                "trials": self.trials_.astype(int),
                "observed_rate": self.successes_ / self.trials_,
                **rate,
                f"rate_{pct}%_hdi_lower": hdi[0],
                f"rate_{pct}%_hdi_upper": hdi[1],
                **decision,
            },
            index=pd.Index(self.names_, name="variant"),
        )
        lift = self._lift_table(draws, control, None)
        ctrl = self._variant_name(control)
        columns = {
            "mean": "lift_mean",
            "lower": f"lift_{pct}%_lower",
            "upper": f"lift_{pct}%_upper",
            "lower_mcse": f"lift_{pct}%_lower_mcse",
            "upper_mcse": f"lift_{pct}%_upper_mcse",
        }
        for source, column in columns.items():
            table[column] = lift[source].reindex(self.names_).to_numpy()
        # The control's lift over itself is identically zero: its mean, interval and their Monte Carlo errors.
        table.loc[ctrl, list(columns.values())] = 0.0
        table.attrs["monte_carlo"] = [columns["lower"], columns["upper"]]
        table.attrs["num_draws"] = len(draws)
        return table

    def exact_summary(self) -> pd.DataFrame:
        """The conjugate posterior of every variant: Beta parameters, mean and sd.

        Returns
        -------
        pandas.DataFrame
            Columns ``alpha``, ``beta``, ``mean``, ``sd``, ``prob_best``, ``expected_loss``.
        """
        self._check_fitted()
        a, b = self.exact_alpha_, self.exact_beta_
        return pd.DataFrame(
            {
                "alpha": a,
                "beta": b,
                "mean": stats.beta.mean(a, b),
                "sd": stats.beta.std(a, b),
                "prob_best": prob_best_exact(a, b),
                "expected_loss": expected_loss_exact(a, b),
            },
            index=pd.Index(self.names_, name="variant"),
        )

    def sample(self, num_samples: int = 1000, *, trials: Any = None, seed: int | None = None) -> pd.DataFrame:
        """Posterior predictive successes: what a repeat of the test could show.

        Parameters
        ----------
        num_samples : int, default 1000
        trials : array_like, shape (n_variants,), optional
            Trials per variant of the hypothetical repeat; default the observed ones.
        seed : int, optional

        Returns
        -------
        pandas.DataFrame, shape (num_samples, n_variants)
        """
        self._check_fitted()
        n = self.trials_ if trials is None else validate_counts(np.zeros(len(self.names_)), trials, self.names_)[1]
        seed = self._method_seed(seed)
        rates = self.posterior(num_samples, seed=seed)["rate"]
        with seeded(seed + 1):
            counts = dist.Binomial(torch.tensor(n), torch.tensor(rates)).sample()
        return pd.DataFrame(to_numpy(counts).astype(int), columns=self.names_)

    def plot(self, *, ax: Any = None) -> Any:
        """Posterior density of every variant's rate, labelled with P(best).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional

        Returns
        -------
        matplotlib.figure.Figure
        """
        from bayesgen.plots import plot_rate_posteriors

        self._check_fitted()
        return plot_rate_posteriors(
            self.posterior_alpha_, self.posterior_beta_, self.names_, self.prob_best().to_numpy(), ax=ax
        )

    # ---------------------------------------------------------- helpers
    def _betas(self, exact: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """Each variant's Beta posterior that a figure integrates: the exact one, or the fitted guide's
        (``exact=None``: the one ``method`` names)."""
        if self.method == "exact" if exact is None else bool(exact):
            return np.asarray(self.exact_alpha_, float), np.asarray(self.exact_beta_, float)
        return np.asarray(self.posterior_alpha_, float), np.asarray(self.posterior_beta_, float)

    def _variant_name(self, variant: str | int) -> str:
        if isinstance(variant, int | np.integer) and not isinstance(variant, bool):
            if not -len(self.names_) <= variant < len(self.names_):
                raise ValueError(f"variant index {variant} is out of range for {len(self.names_)} variants")
            return self.names_[variant]
        if str(variant) not in self.names_:
            raise ValueError(f"unknown variant {variant!r}; variants are {self.names_}")
        return str(variant)


# ------------------------------------------------------------------ spec recipe
# How a run spec (bayesgen.runs.spec) fits this model; the registry entry names this function (``spec_fit``).
def fit_ab_test_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The A/B test's spec recipe: counts or raw events from a CSV; report: P(best), loss, lift."""
    from pathlib import Path

    from bayesgen.datasets import file_checksum, load_ab_counts, read_csv, resolve_source
    from bayesgen.runs.spec import SpecFit, estimator_kwargs

    data = dict(spec["data"])
    base = Path(spec["_path"]).parent
    est = BetaBinomialTest(**estimator_kwargs(BetaBinomialTest, spec, device))
    est.progress = progress
    fmt = data.get("format", "counts")
    source = resolve_source(str(data.get("source", "")), base)
    control = spec["report"].get("control", 0)

    def check_control(names: list[str]) -> None:  # before the fit, so a typo costs no work
        n = len(names)
        if (control not in names) if isinstance(control, str) else not -n <= control < n:
            raise ValueError(
                f"{spec['_path']}: [report] control {control!r} is not a variant; the variants "
                f"are {list(names)} (or an index below {n})"
            )

    if fmt == "counts":
        s, n, names = load_ab_counts(
            source,
            variant_col=data.get("variant_col", "variant"),
            successes_col=data.get("successes_col", "successes"),
            trials_col=data.get("trials_col", "trials"),
        )
        check_control(list(names))
        est.fit(s, n, names=names, **fit_kwargs)
    elif fmt == "events":
        for key in ("variant_col", "outcome_col"):
            if key not in data:
                raise ValueError(f"{spec['_path']}: [data] format='events' needs {key}")
        events = read_csv(source)
        check_control(events_to_counts(events, data["variant_col"], data["outcome_col"])[-1])
        est.fit_events(events, variant_col=data["variant_col"], outcome_col=data["outcome_col"], **fit_kwargs)
    else:
        raise ValueError(f"{spec['_path']}: [data] format must be 'counts' or 'events', got {fmt!r}")
    return SpecFit(est, file_checksum(source), est.summary(control=control), {"posterior": est.plot()})

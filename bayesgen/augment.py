"""Generative data augmentation and how to judge it.

A *generator* is any fitted object with ``sample(n, y=label, seed=...) -> (X, y)``
(:class:`~bayesgen.models.gaussian_generator.GaussianGenerator`; later the
conditional VAE). :func:`augment` adds its samples to a training set and marks
which rows are synthetic. The evaluation helpers answer the three questions an
analyst should ask before trusting synthetic rows:

* Are they *useful*? :func:`tstr` — train on synthetic, test on real (TSTR),
  next to train on real, test on real (TRTR).
* Are they *new*? :func:`memorization_check` — distance from each synthetic
  row to its nearest training row, against the same distance for held-out real
  rows. A generator that copies its training data puts synthetic rows much
  closer to training rows than genuinely new real rows are.
* Do they *help when data are scarce*? :func:`low_data_experiment` — k real
  rows per class, with and without augmentation, on a fixed test set.

References
----------
Esteban, Hyland & Rätsch (2017), Real-valued (medical) time series generation
with recurrent conditional GANs (TSTR/TRTR).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bayesgen._labels import class_index, sample_class_index
from bayesgen._runtime import (
    MAX_SEED,
    as_feature_matrix,
    available_memory,
    check_count,
    check_labels,
    check_real,
    check_seed,
    format_bytes,
    fresh_seed,
)

__all__ = [
    "AugmentedData",
    "augment",
    "check_output_memory",
    "tstr",
    "memorization_check",
    "low_data_experiment",
    "default_classifier",
    "mlp_classifier",
    "LedoitWolfSampler",
]


@dataclass
class AugmentedData:
    """Real rows followed by synthetic ones.

    Attributes
    ----------
    X : numpy.ndarray or pandas.DataFrame, shape (n_real + n_synthetic, n_features)
    y : numpy.ndarray, shape (n_real + n_synthetic,)
    synthetic : numpy.ndarray of bool
        True for generated rows.
    """

    X: Any
    y: np.ndarray
    synthetic: np.ndarray

    def to_frame(self, label: str = "y", flag: str = "synthetic") -> pd.DataFrame:
        """One table: features, the label column and a 0/1 ``synthetic`` column."""
        frame = self.X.copy() if isinstance(self.X, pd.DataFrame) else pd.DataFrame(self.X)
        frame = frame.reset_index(drop=True)
        if label == flag:
            raise ValueError(f"label and flag must be different column names, got {label!r} for both")
        taken = [c for c in (label, flag) if c in frame.columns]
        if taken:
            raise ValueError(f"column names {taken} are already feature columns; pass other label=/flag= names")
        frame[label] = self.y
        frame[flag] = self.synthetic.astype(int)
        return frame


def _per_class(num_per_class: int | Mapping[Any, int], classes: Sequence[Any]) -> dict[Any, int]:
    if isinstance(num_per_class, Mapping):
        unknown = [c for c in num_per_class if c not in set(classes)]
        if unknown:
            raise ValueError(f"num_per_class names unknown classes {unknown}; classes are {list(classes)}")
        given = {c: num_per_class.get(c, 0) for c in classes}
    else:
        given = {c: num_per_class for c in classes}
    return {c: check_count(v, f"num_per_class[{c}]", minimum=0) for c, v in given.items()}


#: Copies of the synthetic rows alive at once while they are drawn and joined into one table.
_COPIES_WHILE_BUILDING = 3


def check_output_memory(n_rows: int, n_classes: int, n_columns: int, asked_by: str) -> None:
    """Refuse, before anything is drawn, synthetic rows that would not fit in the memory available.

    The rows are float64 and are copied while they are drawn and joined into
    the output table, so about three times their size must be free.

    Parameters
    ----------
    n_rows : int
        Synthetic rows in all.
    n_classes, n_columns : int
        Classes drawn from and feature columns, for the message.
    asked_by : str
        What asked for the rows, for the message (``"--num-per-class 1000000000"``).

    Raises
    ------
    NotEnoughMemoryError
        The rows need more than :func:`bayesgen._runtime.available_memory` says is free.
    """
    from bayesgen.models import NotEnoughMemoryError

    size = float(n_rows) * n_columns * 8
    needed = _COPIES_WHILE_BUILDING * size
    free = available_memory()
    if free is None or needed <= free:
        return
    raise NotEnoughMemoryError(
        f"{asked_by} asks for {n_classes} classes × {n_rows / max(n_classes, 1):.3g} rows × {n_columns} columns "
        f"({format_bytes(size)} as float64, about {format_bytes(needed)} while the table is built), "
        f"more than the memory available ({format_bytes(free)}); ask for fewer rows"
    )


def augment(
    X: Any,
    y: Any,
    generator: Any,
    num_per_class: int | Mapping[Any, int] = 100,
    *,
    seed: int | None = 0,
) -> AugmentedData:
    """Append generated rows to a training set.

    Parameters
    ----------
    X : array_like, shape (n_rows, n_features), or pandas.DataFrame
        Real training rows.
    y : array_like, shape (n_rows,)
        Their labels.
    generator : object with ``sample(n, y=label, seed=...)``
        A fitted generator; an unfitted bayesgen estimator is fitted on (X, y) first.
    num_per_class : int or dict, default 100
        Synthetic rows per class (a dict gives a number per class label).
    seed : int or None, default 0
        None draws fresh randomness (not repeatable).

    Returns
    -------
    AugmentedData
        ``X``, ``y`` and the ``synthetic`` mask (real rows first).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from bayesgen.models.gaussian_generator import GaussianGenerator
    >>> X, y = load_digits(return_X_y=True)
    >>> gen = GaussianGenerator(covariance="diag", method="exact", constant_features="keep")
    >>> data = augment(X, y, gen, num_per_class=10)
    >>> int(data.synthetic.sum()), len(data.y) - len(y)
    (100, 100)
    """
    if not hasattr(generator, "sample"):
        raise TypeError(f"generator must have a sample(n, y=...) method, got {type(generator).__name__}")
    arr = as_feature_matrix(X, "X")[0]
    labels = check_labels(y, len(arr), "y")
    if hasattr(generator, "fit") and not hasattr(generator, "losses_"):
        generator.fit(X, labels)
    if getattr(generator, "conditional", True) is False:
        raise ValueError(
            f"{type(generator).__name__} is not conditional: it cannot make rows of a chosen class; "
            "fit it with conditional=True (and labels) to use it for augmentation"
        )
    classes = getattr(generator, "classes_", None)
    classes = list(np.unique(labels) if classes is None else classes)
    class_index(labels, classes, len(labels), "y")  # every label is one of the generator's classes
    counts = _per_class(num_per_class, classes)
    check_output_memory(sum(counts.values()), len(counts), arr.shape[1], f"num_per_class={num_per_class!r}")
    # A drawn seed: else each class's draw would fall back to the generator's seed.
    seed = fresh_seed() if seed is None else check_seed(seed)
    parts_x, parts_y = [], []
    for offset, (label, n) in enumerate(counts.items()):
        if n == 0:
            continue
        xs, ys = generator.sample(n, y=label, seed=(seed + offset) % (MAX_SEED + 1))
        parts_x.append(np.asarray(xs, dtype=float))
        parts_y.append(np.asarray(ys))
    n_real = len(labels)
    if parts_x:
        synth_x, synth_y = np.concatenate(parts_x), np.concatenate(parts_y)
        if synth_x.shape[1] != arr.shape[1]:
            raise ValueError(f"X has {arr.shape[1]} feature columns but the generator makes rows of {synth_x.shape[1]}")
    else:
        synth_x = np.empty((0, arr.shape[1]))
        synth_y = np.empty(0, dtype=labels.dtype)
    if isinstance(X, pd.DataFrame):
        out_x: Any = pd.concat([X.reset_index(drop=True), pd.DataFrame(synth_x, columns=X.columns)], ignore_index=True)
    else:
        out_x = np.concatenate([np.asarray(X, dtype=float), synth_x])
    out_y = np.concatenate([labels, synth_y.astype(labels.dtype, copy=False)])
    mask = np.r_[np.zeros(n_real, bool), np.ones(len(synth_y), bool)]
    return AugmentedData(X=out_x, y=out_y, synthetic=mask)


class LedoitWolfSampler:
    """A plug-in Gaussian per class with Ledoit–Wolf shrunk covariance: the baseline a generator must beat.

    Not Bayesian: each class's mean and covariance are point estimates (the sample mean and
    scikit-learn's :class:`~sklearn.covariance.LedoitWolf`, the covariance shrunk toward a scaled
    identity by the intensity that minimises its expected Frobenius loss), and new rows are drawn
    from that normal. It has the generator interface :func:`augment` and
    :func:`low_data_experiment` use, so it is measured beside bayesgen's generators on the same
    rows (``low_data_experiment(LedoitWolfSampler, ...)``).

    Parameters
    ----------
    clip : (float, float), optional
        Clip sampled values to this range (e.g. ``(0, 1)`` for pixels).
    seed : int or None, default 0
        Seed of ``sample`` when it is given none; None draws fresh randomness.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The class labels, sorted.
    means_, covariances_ : numpy.ndarray
        Per class, shapes (n_classes, n_features) and (n_classes, n_features, n_features).
    shrinkages_ : numpy.ndarray
        Each class's Ledoit–Wolf shrinkage intensity (0: the sample covariance, 1: the scaled identity).
    class_weights_ : numpy.ndarray
        The classes' shares of the training rows.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> data = augment(X, y, LedoitWolfSampler(clip=(0, 16)), num_per_class=10)
    >>> int(data.synthetic.sum())
    100
    """

    def __init__(self, *, clip: tuple[float, float] | None = None, seed: int | None = 0) -> None:
        self.clip = clip
        self.seed = seed

    def fit(self, X: Any, y: Any) -> LedoitWolfSampler:
        """Estimate each class's mean and shrunk covariance.

        Raises
        ------
        ValueError
            Rows or labels malformed or non-finite, or a class with fewer than 2 rows.
        """
        from sklearn.covariance import LedoitWolf

        arr, names = as_feature_matrix(X, "X")
        labels = check_labels(y, len(arr), "y")
        if self.clip is not None:
            low, high = (check_real(v, "clip") for v in self.clip)
            if not low < high:
                raise ValueError(f"clip must be (low, high) with low < high, got {self.clip!r}")
        if self.seed is not None:
            check_seed(self.seed)
        self.classes_ = np.unique(labels)
        means, covs, shrink, weights = [], [], [], []
        for c in self.classes_:
            rows = arr[labels == c]
            if len(rows) < 2:
                label = c.item() if hasattr(c, "item") else c
                raise ValueError(f"class {label!r} has {len(rows)} row(s); a covariance needs at least 2")
            lw = LedoitWolf().fit(rows)
            means.append(lw.location_)
            covs.append(lw.covariance_)
            shrink.append(lw.shrinkage_)
            weights.append(len(rows) / len(arr))
        self.means_, self.covariances_ = np.array(means), np.array(covs)
        self.shrinkages_, self.class_weights_ = np.array(shrink), np.array(weights)
        self.feature_names_in_ = names
        return self

    def sample(self, num_samples: int, y: Any = None, *, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw new labelled rows from the per-class normals.

        Parameters
        ----------
        num_samples : int
        y : None, "uniform", a class label, or array_like of ``num_samples`` labels
            None draws each row's class from the training proportions; "uniform" gives exactly
            balanced classes (``num_samples % C`` of them one row more, the first in ``classes_``
            order) in a random order; a label gives every row that class; a sequence gives each
            row its own.
        seed : int, optional
            Defaults to the sampler's ``seed``.

        Returns
        -------
        X : numpy.ndarray, shape (num_samples, n_features)
        y : numpy.ndarray, shape (num_samples,)

        Raises
        ------
        ValueError
            ``y`` names a label not in ``classes_``, or is a sequence without ``num_samples`` labels.
        """
        if not hasattr(self, "classes_"):
            raise ValueError("this LedoitWolfSampler is not fitted yet; call fit(X, y) first")
        n = check_count(num_samples, "num_samples", minimum=0)
        seed = check_seed(seed) if seed is not None else (fresh_seed() if self.seed is None else self.seed)
        rng = np.random.default_rng(seed)
        index = sample_class_index(y, n, self.classes_, self.class_weights_, rng)
        X = np.empty((n, self.means_.shape[1]))
        for c in np.unique(index):
            rows = index == c
            X[rows] = rng.multivariate_normal(self.means_[c], self.covariances_[c], size=int(rows.sum()))
        if self.clip is not None:
            X = np.clip(X, float(self.clip[0]), float(self.clip[1]))
        return X, self.classes_[index]


def default_classifier() -> Any:
    """Standardised logistic regression: the standard yardstick for TSTR."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def mlp_classifier(seed: int = 0) -> Any:
    """Standardised one-hidden-layer perceptron: scikit-learn's ``MLPClassifier`` with its defaults.

    A classifier that can learn a curved decision rule. The Gaussian generator's
    own rule is quadratic when its classes have their own covariances, and
    that is where its advantage with few rows lies; a linear classifier
    trained on its samples can only take the rule's linear part, which is
    no better than what it learns from the real rows. So with labelled rows
    alone, augmentation helps this classifier and not logistic regression:
    on MNIST at 20 rows per class (``subspace=30``), +2.6 to +5.2 points
    against about zero (``benchmarks/RESULTS.md``). Pass it as
    ``classifier=mlp_classifier`` to :func:`tstr` or :func:`low_data_experiment`.

    Parameters
    ----------
    seed : int, default 0
        The network's ``random_state`` (its initial weights and minibatches).
    """
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = check_seed(seed)
    return make_pipeline(StandardScaler(), MLPClassifier(random_state=seed))


def tstr(
    generator: Any,
    X_train: Any,
    y_train: Any,
    X_test: Any,
    y_test: Any,
    *,
    num_per_class: int | Mapping[Any, int] | None = None,
    classifier: Callable[[], Any] = default_classifier,
    seed: int | None = 0,
) -> dict[str, float]:
    """Train-on-synthetic/test-on-real accuracy next to train-on-real/test-on-real.

    Parameters
    ----------
    generator : fitted generator (fitted on ``X_train, y_train``)
    X_train, y_train : real training data (for TRTR)
    X_test, y_test : real test data
    num_per_class : int or dict, optional
        Synthetic rows per class; default the training class counts.
    classifier : callable, default :func:`default_classifier`
        Returns a fresh scikit-learn classifier (e.g. :func:`mlp_classifier`).
    seed : int or None, default 0
        None draws fresh randomness (not repeatable).

    Returns
    -------
    dict
        ``tstr``, ``trtr`` accuracies and ``gap = trtr - tstr``.
    """
    train = as_feature_matrix(X_train, "X_train")[0]
    labels = check_labels(y_train, len(train), "y_train")
    test = as_feature_matrix(X_test, "X_test", n_features=train.shape[1])[0]
    test_labels = check_labels(y_test, len(test), "y_test")
    if num_per_class is None:
        values, counts = np.unique(labels, return_counts=True)
        num_per_class = dict(zip(values.tolist(), counts.tolist(), strict=True))
    classes = list(getattr(generator, "classes_", np.unique(labels)))
    class_index(test_labels, classes, len(test_labels), "y_test")  # every label is one of the generator's classes
    seed = fresh_seed() if seed is None else seed
    parts = [
        generator.sample(n, y=c, seed=seed + i)
        for i, (c, n) in enumerate(_per_class(num_per_class, classes).items())
        if n
    ]
    if not parts:
        raise ValueError("num_per_class asks for no synthetic rows; TSTR needs some")
    Xs = np.concatenate([np.asarray(p[0], dtype=float) for p in parts])
    ys = np.concatenate([np.asarray(p[1]) for p in parts])
    tstr_acc = float(classifier().fit(Xs, ys).score(test, test_labels))
    trtr_acc = float(classifier().fit(train, labels).score(test, test_labels))
    return {"tstr": tstr_acc, "trtr": trtr_acc, "gap": trtr_acc - tstr_acc}


def memorization_check(
    X_synthetic: Any,
    X_train: Any,
    X_holdout: Any,
    *,
    quantile: float = 0.05,
    max_copy_rate: float | None = None,
) -> dict[str, float | bool]:
    """Are synthetic rows copies of training rows?

    The distance from each held-out *real* row to its nearest training row
    shows how close genuinely new data come to the training set. A synthetic
    row closer to a training row than the ``quantile`` of those distances is
    "suspiciously close". A generator of new data has about ``quantile`` of its
    rows there; a copier has nearly all of them.

    Parameters
    ----------
    X_synthetic, X_train, X_holdout : array_like, shape (n, n_features)
    quantile : float, default 0.05
    max_copy_rate : float, optional
        Pass threshold for the share of suspiciously close synthetic rows;
        default ``2 * quantile``.

    Returns
    -------
    dict
        ``copy_rate`` (share of synthetic rows below the threshold),
        ``expected_rate`` (= quantile), ``exact_copies`` (share at distance 0),
        ``median_synthetic`` and ``median_holdout`` nearest-neighbour
        distances, ``threshold`` and ``passed``.
    """
    from sklearn.neighbors import NearestNeighbors

    quantile = check_real(quantile, "quantile", low=0.0, high=1.0)
    train = as_feature_matrix(X_train, "X_train")[0]
    X_synthetic = as_feature_matrix(X_synthetic, "X_synthetic", n_features=train.shape[1])[0]
    X_holdout = as_feature_matrix(X_holdout, "X_holdout", n_features=train.shape[1])[0]
    index = NearestNeighbors(n_neighbors=1).fit(train)
    d_syn = index.kneighbors(X_synthetic)[0][:, 0]
    d_hold = index.kneighbors(X_holdout)[0][:, 0]
    threshold = float(np.quantile(d_hold, quantile))
    copy_rate = float(np.mean(d_syn < threshold))
    limit = 2 * quantile if max_copy_rate is None else max_copy_rate
    exact = float(np.mean(d_syn <= 1e-9 * (1 + np.abs(train).max())))
    return {
        "copy_rate": copy_rate,
        "expected_rate": float(quantile),
        "exact_copies": exact,
        "median_synthetic": float(np.median(d_syn)),
        "median_holdout": float(np.median(d_hold)),
        "threshold": threshold,
        "passed": bool(copy_rate <= limit and exact == 0.0),
    }


def low_data_experiment(
    make_generator: Callable[[], Any],
    X_train: Any,
    y_train: Any,
    X_test: Any,
    y_test: Any,
    *,
    k_per_class: Sequence[int] = (20, 100),
    num_synthetic_per_class: int = 500,
    classifier: Callable[[], Any] = default_classifier,
    repeats: int = 3,
    seed: int | None = 0,
    unlabelled: Any = None,
) -> pd.DataFrame:
    """Accuracy with k real rows per class, with and without augmentation.

    For each k and repeat, k rows per class are drawn from the training data;
    a classifier is trained on them alone, and on them plus
    ``num_synthetic_per_class`` rows per class from a generator fitted to the
    same k rows. Both are scored on the same real test set. With
    ``unlabelled``, the generator is fitted semi-supervised,
    ``fit(X_k, y_k, unlabelled=unlabelled)`` (the classifier still sees the
    labelled and synthetic rows only).

    Parameters
    ----------
    make_generator : callable
        Returns a fresh, unfitted generator (``fit(X, y)`` and ``sample``).
    X_train, y_train, X_test, y_test : array_like
    k_per_class : sequence of int, default (20, 100)
    num_synthetic_per_class : int, default 500
    classifier : callable, default :func:`default_classifier`
        Returns a fresh scikit-learn classifier. Which one matters: with labelled rows
        only, the Gaussian generator's samples help a classifier that can learn a curved
        rule (:func:`mlp_classifier`) more than a linear one (see :func:`mlp_classifier`).
    repeats : int, default 3
    seed : int, default 0
    unlabelled : array_like, optional
        Rows without labels for a semi-supervised generator (same features).

    Returns
    -------
    pandas.DataFrame
        Columns ``k``, ``repeat``, ``real_only``, ``augmented``, ``gain``.
    """
    X_train = as_feature_matrix(X_train, "X_train")[0]
    labels = check_labels(y_train, len(X_train), "y_train")
    X_test = as_feature_matrix(X_test, "X_test", n_features=X_train.shape[1])[0]
    if unlabelled is not None:  # checked before any fit
        unlabelled = as_feature_matrix(unlabelled, "unlabelled", n_features=X_train.shape[1])[0]
    y_test = check_labels(y_test, len(X_test), "y_test")
    k_per_class = [check_count(k, "k_per_class") for k in k_per_class]
    repeats = check_count(repeats, "repeats")
    seed = fresh_seed() if seed is None else seed
    rng = np.random.default_rng(seed)
    rows = []
    for k in k_per_class:
        for rep in range(repeats):
            take = []
            for c in np.unique(labels):
                idx = np.nonzero(labels == c)[0]
                if len(idx) < k:
                    raise ValueError(f"class {c!r} has {len(idx)} training rows, fewer than k={k}")
                take.append(rng.choice(idx, size=k, replace=False))
            sel = np.concatenate(take)
            Xk, yk = X_train[sel], labels[sel]
            real = float(classifier().fit(Xk, yk).score(X_test, y_test))
            gen = make_generator()
            gen = gen.fit(Xk, yk) if unlabelled is None else gen.fit(Xk, yk, unlabelled=unlabelled)
            data = augment(Xk, yk, gen, num_per_class=num_synthetic_per_class, seed=seed + 1000 * rep + k)
            aug = float(classifier().fit(data.X, data.y).score(X_test, y_test))
            rows.append({"k": k, "repeat": rep, "real_only": real, "augmented": aug, "gain": aug - real})
    return pd.DataFrame(rows)

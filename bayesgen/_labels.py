"""Class labels to class indices: the one rule behind every generator's ``sample(n, y=...)``.

A fitted generator knows its classes (``classes_``); each row it generates belongs to one of them.
:func:`sample_class_index` decides which, from the ``y`` a user passes to ``sample``:

* ``None``: each row's class is drawn from the class weights (the training proportions, or per-row
  weights such as one posterior draw of the weights per row);
* ``"uniform"``: exactly balanced classes, ``n // C`` rows each and one more for the first
  ``n % C`` classes (in the order of ``classes_``), the rows in a random order;
* one label: that class for every row;
* a sequence of ``n`` labels: those classes, row by row.

A label is known when it equals one of the classes (``1`` and ``1.0`` are the same label; ``"1"`` is
not ``1``). :func:`class_index` turns given labels into indices by the same rule, for the methods
that take labels of rows (``encode``, ``decode``, the augmentation helpers).

Randomness comes from a :class:`numpy.random.Generator` the caller seeds, so the rule is the same
whatever the model computes with. Importing this module imports NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["class_index", "sample_class_index"]


def class_index(y: Any, classes: Any, n: int, what: str = "y") -> np.ndarray:
    """The class index of each of ``n`` rows, from one label or a sequence of ``n`` labels.

    Parameters
    ----------
    y : label or array_like, shape (n,)
        One label (a string is one label) for every row, or one label per row.
    classes : array_like, shape (n_classes,)
        The known classes; a row's index is its label's position here.
    n : int
        Rows.
    what : str, default "y"
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    Raises
    ------
    ValueError
        ``y`` is neither one label nor a 1-D sequence; a sequence without ``n`` entries; a label that is
        not one of ``classes`` (the message names the unknown labels and the classes).

    Examples
    --------
    >>> class_index(["b", "a", "b"], ["a", "b"], 3).tolist()
    [1, 0, 1]
    >>> class_index("b", ["a", "b"], 2).tolist()
    [1, 1]
    """
    known = np.asarray(classes).tolist()
    lookup = {c: i for i, c in enumerate(known)}
    labels = np.asarray(y, dtype=object)  # dtype=object: [1, "a"] stays 1 and "a", not "1" and "a"
    if labels.ndim == 0:
        labels = np.full(n, labels.item(), dtype=object)
    elif labels.ndim != 1:
        raise ValueError(f"{what} must be one label or a 1-D sequence of labels, got shape {labels.shape}")
    elif len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} labels for {n} rows; give one label, or one per row")
    values = labels.tolist()
    unknown = []
    for value in dict.fromkeys(_hashable(v) for v in values):
        if value not in lookup:
            unknown.append(value)
    if unknown:
        shown = sorted(unknown, key=str)[:10]
        more = f" and {len(known) - 20} more" if len(known) > 20 else ""
        raise ValueError(f"{what} has unknown labels {shown}; the classes are {known[:20]}{more}")
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)  # an unhashable label (a list) is no class; its repr names it in the error
    return value


def sample_class_index(
    y: Any, n: int, classes: Any, weights: Any, rng: np.random.Generator, what: str = "y"
) -> np.ndarray:
    """The class index of each of ``n`` rows to generate, by the rule in this module's docstring.

    Parameters
    ----------
    y : None, "uniform", a label, or array_like of ``n`` labels
        None draws each row's class from ``weights``; "uniform" gives exactly balanced classes
        (``n % C`` of them one row more, the first in ``classes`` order) in a random order; a label
        gives that class to every row; a sequence gives each row its own.
    n : int
        Rows.
    classes : array_like, shape (C,)
        The known classes.
    weights : array_like, shape (C,) or (n, C)
        Non-negative class weights (normalised here), one set for all rows or one per row; used only
        when ``y`` is None.
    rng : numpy.random.Generator
        The source of randomness (for None and "uniform").
    what : str, default "y"
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    Raises
    ------
    ValueError
        As :func:`class_index`; or ``weights`` of the wrong shape, negative, or all zero.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> np.bincount(sample_class_index("uniform", 7, ["a", "b", "c"], [1, 1, 1], rng)).tolist()
    [3, 2, 2]
    >>> sample_class_index("c", 2, ["a", "b", "c"], [1, 1, 1], rng).tolist()
    [2, 2]
    """
    C = len(np.asarray(classes))
    if y is None:
        return _draw(np.asarray(weights, dtype=float), n, C, rng)
    if isinstance(y, str) and y == "uniform":
        return rng.permutation(np.arange(n, dtype=np.int64) % C)
    return class_index(y, classes, n, what)


def _draw(weights: np.ndarray, n: int, C: int, rng: np.random.Generator) -> np.ndarray:
    """One class per row from (possibly per-row) weights, by inverting the cumulative weights."""
    if weights.shape not in ((C,), (n, C)):
        raise ValueError(f"class weights must have shape ({C},) or ({n}, {C}), got {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("class weights must be finite and non-negative")
    total = weights.sum(axis=-1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("class weights must not all be zero")
    cumulative = np.cumsum(weights / total, axis=-1)
    u = rng.random(n)
    if weights.ndim == 1:
        index = np.searchsorted(cumulative, u, side="right")
    else:
        index = (u[:, None] >= cumulative).sum(axis=-1)
    return np.minimum(index, C - 1).astype(np.int64)  # rounding can leave the last cumulative weight below u

"""Argument checks that import no torch, for the command line to run before it imports a model.

Importing this module imports nothing heavy (NumPy only inside the checks that take arrays), so ``bayesgen``
refuses a bad argument at once; the library's estimators use the same checks (:mod:`bayesgen._runtime`
re-exports :data:`MAX_SEED`, :mod:`bayesgen.models.ab_test` re-exports :func:`validate_prior` and
:func:`validate_counts`).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for --help
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import numpy as np

__all__ = ["MAX_COUNT", "MAX_SEED", "PRIOR_RANGE", "validate_counts", "validate_prior"]

#: The largest seed: seeds are integers in [0, 2**32 - 1], the range NumPy, scikit-learn and torch all accept
#: (offsets a method adds to a seed stay within torch's 64 bits).
MAX_SEED = 2**32 - 1

#: The range of a Beta prior's parameters: pseudo-counts from a thousandth (far vaguer than Jeffreys' 0.5)
#: to a million. Smaller values underflow in float32 (the SVI guide starts from them), larger ones swamp any data.
PRIOR_RANGE = (1e-3, 1e6)


def validate_prior(prior: Any) -> tuple[float, float]:
    """Check a ``(alpha, beta)`` prior: two numbers in :data:`PRIOR_RANGE`.

    Parameters
    ----------
    prior : sequence of two numbers
        The Beta prior's ``alpha`` and ``beta``.

    Returns
    -------
    tuple of float
        ``(alpha, beta)``.

    Raises
    ------
    ValueError
        If it is not two numbers, or either is outside ``PRIOR_RANGE`` (NaN included).

    Examples
    --------
    >>> validate_prior([1, 1])
    (1.0, 1.0)
    """
    try:
        values = [float(v) for v in prior]
    except (TypeError, ValueError) as err:
        raise ValueError(f"prior must be two positive numbers (alpha, beta), got {prior!r}") from err
    if len(values) != 2:
        raise ValueError(f"prior must be two positive numbers (alpha, beta), got {len(values)} values")
    low, high = PRIOR_RANGE
    if not all(low <= v <= high for v in values):  # NaN fails too
        raise ValueError(
            f"prior parameters must be in [{low:g}, {high:g}], got alpha={values[0]:g}, beta={values[1]:g}"
        )
    return values[0], values[1]


MAX_COUNT = 2.0**53  # above it, float64 cannot tell n from n + 1, so trials - successes loses its meaning


def _as_count_array(values: Any, what: str) -> np.ndarray:
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind in "OUSV" or arr.dtype == bool:
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{what} must be numbers, got {arr.dtype} values like {arr.ravel()[:3].tolist()}") from err
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional (one value per variant), got shape {arr.shape}")
    return arr


def validate_counts(
    successes: Any, trials: Any, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check per-variant counts and return them as float arrays with names.

    Parameters
    ----------
    successes, trials : array_like, shape (n_variants,)
    names : sequence of str, optional
        Variant names; default the index of ``successes`` when it is a
        labelled pandas Series, else "A", "B", ...

    Returns
    -------
    successes, trials : numpy.ndarray
    names : list of str

    Raises
    ------
    TypeError
        Non-numeric counts.
    ValueError
        NaN or infinite, negative or non-integer counts, zero trials,
        successes > trials, mismatched lengths, fewer than two variants,
        wrong number of or duplicate names.

    Examples
    --------
    >>> successes, trials, names = validate_counts([235, 157], [2435, 2435])
    >>> names
    ['A', 'B']
    """
    import numpy as np

    pd = sys.modules.get("pandas")  # a pandas Series can only have been given once pandas is imported
    if (
        pd is not None
        and isinstance(successes, pd.Series)
        and isinstance(trials, pd.Series)
        and not successes.index.equals(trials.index)
    ):
        # Two labelled Series are paired by label, never by position.
        if set(successes.index) != set(trials.index) or not successes.index.is_unique:
            raise ValueError(
                f"successes and trials are Series with different variants: {list(successes.index)} "
                f"vs {list(trials.index)}"
            )
        trials = trials.reindex(successes.index)
    if (
        names is None
        and pd is not None
        and isinstance(successes, pd.Series)
        and not isinstance(successes.index, pd.RangeIndex)
    ):
        names = [str(v) for v in successes.index]  # a labelled Series names its variants
    s = _as_count_array(successes, "successes")
    n = _as_count_array(trials, "trials")
    if s.shape != n.shape:
        raise ValueError(f"successes has {s.size} values but trials has {n.size}; give one of each per variant")
    if s.size < 2:
        raise ValueError(f"an A/B test needs at least two variants, got {s.size}")
    if names is None:
        names = [_default_name(i) for i in range(s.size)]
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of names, not one string ({names!r}); e.g. names=['A', 'B']")
    names = [str(v) for v in names]
    if len(names) != s.size:
        raise ValueError(f"{len(names)} names given for {s.size} variants")
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if any(not name.strip() for name in names):
        raise ValueError(f"variant names must not be blank, got {names}")
    for what, arr in (("successes", s), ("trials", n)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{what} of variant {names[int(np.argmax(bad))]!r} is NaN or infinite")
        if (arr < 0).any():
            k = int(np.argmax(arr < 0))
            raise ValueError(f"{what} of variant {names[k]!r} is negative ({arr[k]:g})")
        if (arr != np.round(arr)).any():
            k = int(np.argmax(arr != np.round(arr)))
            raise ValueError(f"{what} of variant {names[k]!r} is not a whole number ({arr[k]:g})")
        if (arr > MAX_COUNT).any():
            k = int(np.argmax(arr > MAX_COUNT))
            raise ValueError(
                f"{what} of variant {names[k]!r} ({arr[k]:.3g}) is above 2**53, the largest count a float holds exactly"
            )
    if (n == 0).any():
        raise ValueError(f"variant {names[int(np.argmax(n == 0))]!r} has zero trials")
    if (s > n).any():
        k = int(np.argmax(s > n))
        raise ValueError(f"variant {names[k]!r} has more successes ({s[k]:g}) than trials ({n[k]:g})")
    return s, n, names


def _default_name(i: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[i] if i < 26 else f"V{i + 1}"

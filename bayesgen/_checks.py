"""Argument checks in pure Python, for the command line to run before it imports torch.

This module imports nothing heavy (no torch, NumPy or pandas), so ``bayesgen`` refuses a bad argument at once;
the library's estimators use the same checks (:mod:`bayesgen._runtime` re-exports :data:`MAX_SEED`,
:mod:`bayesgen.models.ab_test` re-exports :func:`validate_prior`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_SEED", "PRIOR_RANGE", "validate_prior"]

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
        raise ValueError(f"prior parameters must be in [{low:g}, {high:g}], got alpha={values[0]:g}, "
                         f"beta={values[1]:g}")
    return values[0], values[1]

"""Names of a site's scalars, as ArviZ's summary writes them (``rate[white]``, ``loc[3, p12]``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["element_labels"]


def element_labels(estimator: Any, name: str, shape: tuple[int, ...]) -> list[str]:
    """Labels of a site's scalars as ArviZ's summary writes them: ``rate[white]``, ``loc[3, p12]``.

    Uses the estimator's dims and coords where they fit the shape, else indices.
    """
    dims, coords = estimator._arviz_dims() if estimator is not None else ({}, {})
    site_dims = list(dims.get(name, []))[-len(shape) :] if shape else []
    axes = []
    for size, dim in zip(shape, [None] * (len(shape) - len(site_dims)) + site_dims, strict=True):
        values = coords.get(dim) if dim is not None else None
        axes.append(
            [str(v) for v in values] if values is not None and len(values) == size else [str(i) for i in range(size)]
        )
    if not shape:
        return [name]
    return [f"{name}[{', '.join(axes[k][i] for k, i in enumerate(index))}]" for index in np.ndindex(*shape)]

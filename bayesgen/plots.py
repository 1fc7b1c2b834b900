"""Matplotlib figures shared by the models and the CLI.

Every function returns a :class:`matplotlib.figure.Figure` and draws on a
given ``ax`` when one is passed; none of them calls ``plt.show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "describe_model",
    "format_probability",
    "plot_image_grid",
    "plot_loss",
    "plot_rate_posteriors",
    "render_model_graph",
    "show_figure",
]


def _in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, or a page executed by MyST-NB)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_figure(fig: Any, name: str, *, folder: Any, dpi: int = 100) -> Path | None:
    """Show a figure inline in a notebook, or save it as a PNG when run as a script.

    Tutorials call this for every figure, so a tutorial run as a notebook (or rendered
    into the documentation) shows its figures, and one run as a script writes them to
    ``folder`` (and can print the path returned).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    name : str
        File name without extension, e.g. ``"samples"``: letters, digits, ``-`` and ``_``.
    folder : str or path-like
        Where a script run writes ``<name>.png`` (created if missing; an earlier
        figure of the same name is replaced).
    dpi : int, default 100

    Returns
    -------
    pathlib.Path or None
        The PNG written, or None when the figure was shown in a notebook.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(); _ = fig.add_subplot().plot([0, 1])
    >>> import tempfile; folder = tempfile.mkdtemp()
    >>> show_figure(fig, "line", folder=folder).name
    'line.png'
    """
    import io
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"figure name {name!r}: use letters, digits, '-' and '_' only")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(data=buffer.getvalue(), format="png"))
        return None
    from bayesgen.io import write_bytes

    target = Path(folder) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, buffer.getvalue(), overwrite=True)
    return target


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_loss(losses: Sequence[float], *, window: int = 50, ax: Any = None) -> Any:
    """Loss (negative ELBO) per step with a moving average.

    Parameters
    ----------
    losses : array_like, shape (num_steps,)
    window : int, default 50
        Width of the moving average.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, (6, 3.5))
    y = np.asarray(losses, dtype=float)
    ax.plot(y, lw=0.6, alpha=0.5, label="loss per step")
    if len(y) >= window > 1:
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(y)), smooth, lw=1.5, label=f"moving average ({window})")
    if len(y) and np.all(y > 0) and y.max() / max(y.min(), 1e-300) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss (−ELBO)")
    ax.legend(loc="upper right")
    return fig


def format_probability(p: float, digits: int = 3) -> str:
    """A probability to ``digits`` decimals that never rounds to a certainty it is not.

    ``0.99999`` reads ``">0.999"``, not ``"1.000"``, and ``1e-7`` reads ``"<0.001"``, not ``"0.000"``;
    exactly 0 and 1 (and NaN) print as they are.

    Examples
    --------
    >>> format_probability(0.999996, 4), format_probability(0.25), format_probability(1e-9)
    ('>0.9999', '0.250', '<0.001')
    """
    step = 10.0**-digits
    if 0.0 < p < step / 2:
        return f"<{step:.{digits}f}"
    if 1.0 - step / 2 <= p < 1.0:
        return f">{1.0 - step:.{digits}f}"
    return f"{p:.{digits}f}"


def _equals(p: float) -> str:
    text = format_probability(float(p))
    return text if text[0] in "<>" else f"= {text}"


def plot_rate_posteriors(
    alpha: Sequence[float],
    beta: Sequence[float],
    names: Sequence[str],
    prob_best: Sequence[float] | None = None,
    *,
    ax: Any = None,
) -> Any:
    """Beta posterior density of each variant's rate.

    Parameters
    ----------
    alpha, beta : array_like, shape (n_variants,)
    names : sequence of str
    prob_best : array_like, optional
        Shown in the legend.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, (6, 3.5))
    a, b = np.asarray(alpha, float), np.asarray(beta, float)
    lo = stats.beta.ppf(1e-4, a, b).min()
    hi = stats.beta.isf(1e-4, a, b).max()
    x = np.linspace(lo, hi, 800)
    for k, name in enumerate(names):
        label = name if prob_best is None else f"{name}  (P(best) {_equals(prob_best[k])})"
        y = stats.beta.pdf(x, a[k], b[k])
        ax.plot(x, y, label=label)
        ax.fill_between(x, y, alpha=0.15)
    ax.set_xlabel("rate")
    ax.set_ylabel("posterior density")
    ax.legend(loc="upper right")
    return fig


def plot_image_grid(
    images: np.ndarray,
    image_shape: tuple[int, int],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cmap: str = "gray_r",
) -> Any:
    """Rows of images, e.g. generated samples per class.

    Parameters
    ----------
    images : numpy.ndarray, shape (n_rows, n_cols, height * width)
    image_shape : (int, int)
        Height and width of one image.
    row_labels : sequence of str, optional
        Written left of each row, right-aligned to the row's first image.
    col_labels : sequence of str, optional
        Written above each column of the first row.
    cmap : str, default "gray_r"

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    images = np.asarray(images, dtype=float)
    if images.ndim == 2:
        images = images[None]
    n_rows, n_cols = images.shape[:2]
    for labels, n, what in ((row_labels, n_rows, "row"), (col_labels, n_cols, "column")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{what}_labels names {len(labels)} {what}s, the grid has {n}")
    label_width = 0.0 if row_labels is None else 0.09 * max(len(str(label)) for label in row_labels)
    height = 0.8 * n_rows + (0.25 if col_labels is not None else 0.0)
    fig = Figure(figsize=(0.8 * n_cols + 0.6 + label_width, height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    lo, hi = np.nanmin(images), np.nanmax(images)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[r, c].reshape(image_shape), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels is not None:
            # Right-aligned, so a long label ends left of its row instead of running over the first image.
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", labelpad=6)
    if col_labels is not None:
        for c in range(n_cols):
            axes[0, c].set_title(col_labels[c], fontsize="small")
    return fig


_WRAPPERS = ("Independent", "ExpandedDistribution", "MaskedDistribution")


def describe_model(estimator: Any) -> str:
    """A text rendering of a fitted estimator's model: one line per sample site.

    Each line gives the site, its distribution (inside Pyro's ``to_event``,
    ``expand`` and mask wrappers) with batch and event shapes, its plates, and
    whether it is latent, observed or deterministic; needs no Graphviz.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.

    Returns
    -------
    str
    """
    import torch
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    from bayesgen.infer import param_scope

    estimator._check_fitted()
    model, _ = estimator._model_and_guide(for_arviz=True)
    args, kwargs = estimator._model_args(for_arviz=True)
    with param_scope(estimator._param_state), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    lines = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name.startswith("_") or site_is_subsample(site):
            continue
        fn = site["fn"]
        # Name the distribution, not the wrappers Pyro puts around it (to_event, expand, masks).
        while hasattr(fn, "base_dist") and type(fn).__name__ in _WRAPPERS:
            fn = fn.base_dist
        shape = f"batch {tuple(site['fn'].batch_shape)}, event {tuple(site['fn'].event_shape)}"
        plates = [f.name for f in site["cond_indep_stack"]]
        where = f" in plates {', '.join(plates)}" if plates else ""
        if site.get("infer", {}).get("_deterministic"):
            role = "deterministic"
        else:
            role = "observed" if site["is_observed"] else "latent"
        lines.append(f"{name} ~ {type(fn).__name__} ({shape}){where}: {role}")
    return "\n".join(lines)


def render_model_graph(estimator: Any, path: Any) -> Any:
    """Draw a fitted estimator's model with Pyro's ``render_model`` and write it as SVG.

    Always writes the text rendering of :func:`describe_model` next to it
    (``path`` with suffix ``.txt``). The SVG needs the ``graphviz`` Python
    package and Graphviz's ``dot`` program; the picture shows every sample
    site, its distribution and its plates.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.
    path : str or os.PathLike
        Where the SVG goes.

    Returns
    -------
    pathlib.Path or None
        ``path``, or None when Graphviz is not installed (``dot`` missing or
        the ``graphviz`` package absent): the graph is optional.
    """
    from pathlib import Path

    import pyro
    import torch

    from bayesgen.infer import param_scope
    from bayesgen.io import write_bytes, write_text

    path = Path(path)
    write_text(path.with_suffix(".txt"), describe_model(estimator) + "\n")
    try:
        import graphviz
    except ImportError:
        return None
    model, _ = estimator._model_and_guide(for_arviz=True)
    args, kwargs = estimator._model_args(for_arviz=True)
    with param_scope(estimator._param_state), torch.no_grad():
        graph = pyro.render_model(model, model_args=args, model_kwargs=kwargs, render_distributions=True)
    try:
        svg = graph.pipe(format="svg")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError, OSError):
        return None
    write_bytes(path, svg)
    return path

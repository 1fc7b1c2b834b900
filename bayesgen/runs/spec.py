"""Run specs: TOML files under ``models/`` that name a model, its data, priors, inference settings and seed.

Spec sections: ``[run]`` (``name``, ``model``, ``seed``), ``[data]``,
``[model]`` (priors and structure), ``[inference]`` (SVI settings, device) and
an optional ``[report]``. Keys of ``[model]`` and ``[inference]`` are the
estimator's ``__init__`` parameters; unknown keys are errors. ``[run] model``
is a name in :mod:`bayesgen.registry`, whose entry lists the ``[data]`` and
``[report]`` keys that model's specs may hold and names its spec recipe (a
``fit_<model>_spec`` function in the model's module, called by :func:`fit_spec`).

:func:`load_spec` reads a spec with :mod:`tomllib` and checks every section and
key before anything is fitted: reading a spec never executes code.
:func:`fit_spec` fits a spec and writes nothing; :func:`bayesgen.runs.folder.run_spec`
fits one and writes its run folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesgen import registry
from bayesgen._checks import MAX_SEED
from bayesgen._runtime import check_count
from bayesgen._typing import DeviceLike, PathLikeStr

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from bayesgen.models._base import BayesianEstimator

__all__ = [
    "load_spec",
    "check_run_name",
    "SpecFit",
    "fit_spec",
    "estimator_kwargs",
    "load_labelled_table",
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
    _check_data(spec["data"], path)
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


def _check_data(data: dict[str, Any], path: Path) -> None:
    """Types and ranges of the [data] keys that several models read; each recipe checks its own."""
    for key in ("source", "description", "label"):
        value = data.get(key)
        if key not in data or (key == "label" and isinstance(value, int) and not isinstance(value, bool)):
            continue  # absent, or a label column named by its position
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: [data] {key} must be a non-empty string, got {value!r}")
    if "test_fraction" in data:
        value = data["test_fraction"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{path}: [data] test_fraction must be a number in (0, 1), got {value!r}")
    if "scale" in data and not isinstance(data["scale"], bool):
        raise ValueError(f"{path}: [data] scale must be true or false, got {data['scale']!r}")
    if "max_train_rows" in data:
        check_count(data["max_train_rows"], f"{path}: [data] max_train_rows", minimum=1)


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


# ------------------------------------------------------------ spec recipes
# Each model's registry entry names its own recipe (``spec_fit``), which lives in the model's module. A recipe
# is called as ``recipe(spec, device, progress, fit_kwargs)``: it loads the spec's data, fits the estimator
# (``fit_kwargs`` go to its ``fit``) and builds the model's report table and figures. The helpers below are
# the parts recipes share.
@dataclass
class SpecFit:
    """What a spec recipe returns: the fitted estimator, the data checksum, the model's report table and figures."""

    estimator: BayesianEstimator
    data_checksum: str
    report: pd.DataFrame
    figures: dict[str, Any]


def estimator_kwargs(cls: type[BayesianEstimator], spec: dict[str, Any], device: DeviceLike | None) -> dict[str, Any]:
    """The keyword arguments of ``cls(...)`` a spec asks for: its ``[model]``, ``[inference]`` and seed.

    Parameters
    ----------
    cls : type
        The model's estimator class.
    spec : dict
        A spec from :func:`load_spec`.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Overrides the spec's ``[inference] device``.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        A ``[model]`` or ``[inference]`` key that is not a parameter of ``cls``.
    """
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


def split_labelled(
    spec: dict[str, Any], X: np.ndarray, y: np.ndarray, default_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A spec's stratified train/test split (``[data] test_fraction``, seeded by ``[run] seed``).

    Returns ``X_train, X_test, y_train, y_test``; a split the data cannot make (a class with one row,
    an empty train or test set) is a ``ValueError`` naming the spec key.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    fraction = float(spec["data"].get("test_fraction", default_fraction))
    try:
        return train_test_split(X, y, test_size=fraction, random_state=int(spec["run"]["seed"]), stratify=y)
    except ValueError as err:
        raise ValueError(
            f"{spec['_path']}: [data] test_fraction = {fraction:g} cannot split {len(y)} rows of "
            f"{len(np.unique(y))} classes into stratified train and test sets ({err})"
        ) from None


def load_labelled_table(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """A spec's labelled table: ``sklearn:digits`` or a CSV with a ``[data] label`` column.

    Parameters
    ----------
    spec : dict
        A spec from :func:`load_spec`.

    Returns
    -------
    X : numpy.ndarray, shape (n_rows, n_features)
    y : numpy.ndarray, shape (n_rows,)
    checksum : str
        :func:`bayesgen.datasets.array_checksum` of ``X`` and ``y``.
    """
    from bayesgen.datasets import array_checksum, load_digits, read_csv, resolve_source
    from bayesgen.models.gaussian_generator import validate_xy

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

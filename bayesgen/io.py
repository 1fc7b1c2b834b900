"""The one home for writing files: whole or not at all.

Every file bayesgen writes goes to a temporary name in its own folder, is
flushed to disk (``fsync``) and then renamed over the target with
:func:`os.replace`, so a reader sees the old file or the new one, never half
of one. On any error the temporary file is removed and the target is left as
it was; the error is raised again as one :class:`WriteError` that names the
file and the cause (``no space left on device writing runs/x/posterior.nc;
nothing was written``).

Folders of several files (run folders, saved models, the tour) are built in a
staging folder next to the target, ``<parent>/.<name>.partial``, and renamed
into place only once every file is written (:func:`staged_folder`). A lock
file ``<parent>/.<name>.lock`` held with :func:`fcntl.flock` keeps a second
process from writing the same target at the same time; a staging folder whose
lock is not held was left by a process that died, and is cleared (or resumed,
when it holds a checkpoint and the caller asks for that).

A target that exists (a file, or a folder that is not empty) is replaced only
with ``overwrite=True``, and then only after the new content is complete: the
old one is moved aside, the new one renamed in, the old one deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bayesgen._typing imports torch; writing a CSV must not
    from bayesgen._typing import PathLikeStr

__all__ = [
    "WriteError",
    "atomic_path",
    "check_not_input",
    "check_target",
    "file_sha256",
    "lock_path",
    "staged_folder",
    "staging_path",
    "write_bytes",
    "write_datatree",
    "write_json",
    "write_text",
]

logger = logging.getLogger(__name__)

# Below this many free bytes a failed write is reported as a full disk: netCDF/HDF5 reports one as
# "NetCDF: HDF error", without an errno.
_NEARLY_FULL = 1 << 20


class WriteError(OSError):
    """A file could not be written; nothing was written in its place.

    ``str(err)`` is one line that names the file and the cause.
    """

    def __init__(self, message: str, *, code: int | None = None, filename: PathLikeStr | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = code
        self.filename = None if filename is None else str(filename)

    def __str__(self) -> str:
        return self.message


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL


def _write_error(target: Path, err: BaseException, folder: Path) -> WriteError:
    """One clear error for a failed write of ``target`` (called before the temporary file is removed)."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or _disk_full(folder):
        what = "no space left on device" if code != errno.EDQUOT else "disk quota exceeded"
        return WriteError(f"{what} writing {target}; nothing was written", code=errno.ENOSPC, filename=target)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(
            f"no permission to write {target}: {getattr(err, 'strerror', None) or err}; nothing was written",
            code=code,
            filename=target,
        )
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    cause = getattr(err, "strerror", None) or text
    return WriteError(f"could not write {target}: {cause}; nothing was written", code=code, filename=target)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(path: PathLikeStr, *, overwrite: bool = False, what: str = "--out") -> Path:
    """Refuse to replace an existing file or a folder that is not empty, unless ``overwrite``.

    Parameters
    ----------
    path : str or os.PathLike
        The file or folder about to be written.
    overwrite : bool, default False
        Allow replacing what is there.
    what : str, default "--out"
        How the message names the target.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return path
    if path.is_dir():
        if next(path.iterdir(), None) is None:
            return path
        raise ValueError(
            f"{what} {path} is a folder that is not empty; choose another or pass --overwrite "
            "(overwrite=True) to replace it"
        )
    raise ValueError(f"{what} {path} already exists; choose another or pass --overwrite (overwrite=True) to replace it")


def check_not_input(out: PathLikeStr, *inputs: PathLikeStr | None) -> None:
    """Refuse an output path that is one of the inputs (so writing cannot destroy what it reads).

    Raises
    ------
    ValueError
        ``out`` names the same file or folder as an input.
    """
    out = Path(out)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        same = out.resolve() == source.resolve()
        if not same and out.exists() and source.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, source)
        if same:
            raise ValueError(f"--out {out} is the input {source}; write the output to another file")


@contextlib.contextmanager
def atomic_path(path: PathLikeStr, *, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path`` through: renamed into place when the block ends without error.

    For writers that take a file name (``DataFrame.to_csv``, ``Figure.savefig``,
    ``DataTree.to_netcdf``, ``torch.save``). The temporary file sits in the same
    folder and keeps the target's suffix, so writers that read the format from
    the suffix still do.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Its folder is created.
    overwrite : bool, default True
        Replace an existing file; False refuses (see :func:`check_target`).

    Yields
    ------
    pathlib.Path
        Where to write.

    Raises
    ------
    WriteError
        The write failed (full disk, no permission, a writer's RuntimeError);
        the target is untouched.

    Examples
    --------
    >>> import pandas as pd
    >>> from bayesgen.io import atomic_path
    >>> with atomic_path("table.csv") as tmp:  # doctest: +SKIP
    ...     pd.DataFrame({"a": [1]}).to_csv(tmp)
    """
    target = check_target(path, overwrite=overwrite)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(target, err, folder.parent if not folder.exists() else folder) from err
    tmp = folder / f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}"
    try:
        yield tmp
        if not tmp.is_file():
            raise WriteError(
                f"could not write {target}: the writer produced no file; nothing was written", filename=target
            )
        _fsync_file(tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:
        # netCDF/HDF5 report a failed write as a RuntimeError; other RuntimeErrors are the writer's own.
        io_error = (
            isinstance(err, OSError)
            or _disk_full(folder)
            or any(word in str(err).lower() for word in ("netcdf", "hdf"))
        )
        failure = _write_error(target, err, folder) if io_error and not isinstance(err, WriteError) else err
        tmp.unlink(missing_ok=True)
        if failure is err:
            raise
        raise failure from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def write_bytes(path: PathLikeStr, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` whole or not at all (see :func:`atomic_path`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "xb") as fh:
            fh.write(data)
    return Path(path)


def write_text(path: PathLikeStr, text: str, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` whole or not at all (see :func:`atomic_path`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return write_bytes(path, text.encode(encoding), overwrite=overwrite)


def write_json(path: PathLikeStr, value: Any, *, overwrite: bool = True, **dumps: Any) -> Path:
    """Write ``value`` as indented JSON, whole or not at all (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or os.PathLike
    value : object
        Anything :func:`json.dumps` takes (with ``dumps``' options; ``indent`` defaults to 2).
    overwrite : bool, default True

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(value, **dumps), overwrite=overwrite)


def write_datatree(path: PathLikeStr, tree: Any, *, overwrite: bool = True) -> Path:
    """Write an ArviZ DataTree as netCDF-4, compressed, whole or not at all (see :func:`atomic_path`).

    Every numeric variable (coordinates too) is stored with zlib (level 1) and the byte shuffle
    filter: lossless, read back by any netCDF reader (``xarray.open_datatree``,
    ``arviz.from_netcdf``) as it was written. Replicated integer counts (a
    topic model's words, mostly zeros) shrink the most.

    Parameters
    ----------
    path : str or os.PathLike
    tree : xarray.DataTree
    overwrite : bool, default True

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import numpy as np

    encoding = {
        node.path: {
            name: {"zlib": True, "complevel": 1, "shuffle": True}
            for name, var in node.to_dataset(inherit=False).variables.items()
            if np.issubdtype(var.dtype, np.number) or var.dtype == bool
        }
        for node in tree.subtree
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        tree.to_netcdf(tmp, engine="netcdf4", encoding={k: v for k, v in encoding.items() if v})
    return Path(path)


def file_sha256(path: PathLikeStr) -> str:
    """The SHA-256 of a file's bytes, as hex.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def staging_path(target: PathLikeStr) -> Path:
    """The staging folder :func:`staged_folder` builds ``target`` in: ``<parent>/.<name>.partial``."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def lock_path(target: PathLikeStr) -> Path:
    """The lock file that marks a live writer of ``target``: ``<parent>/.<name>.lock``."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def _writer_lock(target: Path) -> Iterator[None]:
    """Hold the lock of ``target`` (refusing at once when another process holds it)."""
    path = lock_path(target)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"another process is writing {target} (it holds {path}); wait for it to finish or choose another --out"
            ) from None
        # The holder before us may have removed the file after we opened it: then our lock guards nothing.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise ValueError(f"could not take the lock {path} for {target}")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(
    target: PathLikeStr,
    *,
    overwrite: bool = False,
    keep: Callable[[Path, BaseException | None], bool] | None = None,
    reuse: bool = False,
) -> Iterator[Path]:
    """Build a folder in a staging folder next to it and rename it into place when complete.

    Parameters
    ----------
    target : str or os.PathLike
        The folder to write.
    overwrite : bool, default False
        Replace an existing file or a folder that is not empty; the old content
        is removed only after the new one is in place. An interrupted write's
        staging folder that ``keep`` would keep is also discarded.
    keep : callable, optional
        ``keep(staging, error) -> bool``: after ``error``, keep the staging folder
        (for example, when it holds a checkpoint to resume from) instead of
        removing it. Called with ``error=None`` on a staging folder found at the
        start: whether an interrupted write is worth resuming.
    reuse : bool, default False
        Start from the staging folder an interrupted write left (resume);
        without it such a folder is removed first, or refused when ``keep``
        says it is worth keeping.

    Yields
    ------
    pathlib.Path
        The staging folder to write into.

    Raises
    ------
    ValueError
        ``target`` exists and ``overwrite`` is False; another process is
        writing ``target``; ``reuse`` with no staging folder to resume; a
        staging folder worth keeping and neither ``reuse`` nor ``overwrite``.
    WriteError
        The folder could not be created or renamed into place.
    """
    target = Path(target)
    check_target(target, overwrite=overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(target, err, parent) from err
    staging = staging_path(target)
    with _writer_lock(target):
        if reuse:
            if not staging.is_dir():
                raise ValueError(f"nothing to resume for {target}: no interrupted run in {staging}")
        elif staging.exists() or staging.is_symlink():
            if keep is not None and staging.is_dir() and keep(staging, None) and not overwrite:
                raise ValueError(
                    f"{staging} holds an interrupted write of {target} that can be resumed: pass "
                    "--resume to continue it, or --overwrite to discard it and start again"
                )
            logger.warning("removing %s, left by a write of %s that did not finish", staging, target)
            _remove(staging)
        if not staging.is_dir():
            try:
                os.mkdir(staging)
            except OSError as err:
                raise _write_error(target, err, parent) from err
        try:
            yield staging
            _commit(staging, target, overwrite=overwrite)
        except BaseException as err:
            if keep is not None and staging.is_dir() and keep(staging, err):
                logger.info("kept %s to resume from", staging)
            else:
                _remove(staging)
            raise


def _commit(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``target``; an old ``target`` is moved aside first and deleted last."""
    check_target(target, overwrite=overwrite)
    _fsync_folder(staging)
    old = None
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink() and next(target.iterdir(), None) is None:
            target.rmdir()
        else:
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError as err:
        if old is not None:
            os.rename(old, target)
        raise _write_error(target, err, target.parent) from err
    _fsync_folder(target.parent)
    if old is not None:
        _remove(old)

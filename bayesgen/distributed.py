"""Data-parallel SVI on torch.distributed: each rank fits on its shard, one all-reduce per step.

A data-parallel fit runs the same model, guide and data in ``W`` processes (ranks), started by
``torchrun``. Every rank holds the whole data set and draws its own shard of each epoch's
shuffled row indices (:class:`bayesgen.infer.IndexBatches` with its ``rank`` and
``world_size``), so a step's minibatch is ``W * batch_size`` rows in all. Each rank computes its
loss and gradients on its ``batch_size`` rows with the plate told the full data size (scale
``N / batch_size``); one all-reduce of a flat buffer then sums, in a fixed order, every
parameter's gradient, the loss and each rank's status, and every rank applies the same update
to the same parameters. The averaged gradient equals the gradient of one process on the
combined ``W * batch_size`` rows.

What would leave one rank waiting for the others travels in that same buffer: a non-finite
loss, an exception, Ctrl-C (or SIGTERM) and a stop asked for by a callback are all decided
together, and every rank ends with the same error or the same stop. The process group's
timeout (:data:`DEFAULT_TIMEOUT_S`, or ``BAYESGEN_DIST_TIMEOUT``) bounds the wait for a rank
that died outright.

:class:`DataParallel` is one process's place in such a fit; :func:`bayesgen.infer.run_svi`
and the estimators' ``fit`` take ``distributed=True`` to build it from the environment that
``torchrun`` sets, or a :class:`DataParallel` made by hand. :func:`launch` starts the ranks
on this machine for ``bayesgen fit --nproc N``.

References
----------
Li et al. (2020), PyTorch Distributed: experiences on accelerating data parallel training. VLDB.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DataParallel",
    "DistributedError",
    "data_fingerprint",
    "data_parallel",
    "in_torchrun",
    "launch",
]

#: Seconds a rank waits for the others in a collective before it gives up with an error.
DEFAULT_TIMEOUT_S = 120.0

T = TypeVar("T")


class DistributedError(RuntimeError):
    """Another rank of a data-parallel fit failed or stopped answering; its own error names the cause."""


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _timeout_s() -> float:
    raw = os.environ.get("BAYESGEN_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"BAYESGEN_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"BAYESGEN_DIST_TIMEOUT must be positive, got {raw!r}")
    return value


def data_fingerprint(values: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """A cheap summary of a fit's data for ranks to compare: shape, dtype and float64 sum of each tensor
    (with its count of NaN and infinite entries).

    Parameters
    ----------
    values : sequence or mapping
        The model's arguments; entries that are not tensors or arrays count by type only.

    Returns
    -------
    list
        One entry per argument, equal on two ranks that hold the same data.
    """
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    out: list[Any] = []
    for key, value in items:
        if isinstance(value, torch.Tensor):
            flat = value.detach()
            if flat.is_floating_point() or flat.is_complex():
                finite = torch.isfinite(flat)
                summary: Any = [float(flat[finite].double().sum()), int((~finite).sum())]  # NaN != NaN: count them
            else:
                summary = int(flat.long().sum()) if flat.numel() else 0
            out.append([str(key), list(value.shape), str(value.dtype), summary])
        elif isinstance(value, np.ndarray):
            out.append([str(key), list(value.shape), str(value.dtype), hashlib.sha256(value.tobytes()).hexdigest()])
        else:
            out.append([str(key), type(value).__name__])
    return out


class DataParallel:
    """One process's place in a data-parallel fit: its rank, the world size and the collectives it runs.

    Build it with :meth:`from_env` inside a process started by ``torchrun`` (or one whose
    ``torch.distributed`` process group is already initialised); pass it, or ``True``, as
    ``distributed=`` to :func:`bayesgen.infer.run_svi` or an estimator's ``fit``.

    Parameters
    ----------
    rank, world_size : int
        This process's rank and the number of ranks.
    local_rank : int, default 0
        The rank on this machine: the GPU this rank uses (``cuda:<local_rank>``).
    group : torch.distributed.ProcessGroup, optional
        The group to run the collectives in; None is the default group.

    Examples
    --------
    Inside ``torchrun --nproc_per_node=2 my_fit.py``::

        dp = DataParallel.from_env()
        result = run_svi(model, guide, data, data_size=len(data), batch_size=256, distributed=dp)
    """

    def __init__(self, rank: int, world_size: int, *, local_rank: int = 0, group: Any = None) -> None:
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size, self.local_rank, self.group = int(rank), int(world_size), int(local_rank), group
        #: Seconds spent in :meth:`all_reduce` and its number of calls (a fit's communication cost).
        self.reduce_seconds, self.reduce_calls = 0.0, 0

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    @classmethod
    def from_env(cls, *, cuda: bool | None = None, timeout_s: float | None = None) -> DataParallel:
        """This process's place, from the process group or from the environment ``torchrun`` sets.

        When no process group is initialised yet, initialises the default one from ``RANK``,
        ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``env://``), with NCCL when ``cuda``
        and gloo otherwise.

        Parameters
        ----------
        cuda : bool, optional
            Fit on GPUs (NCCL, one GPU per rank); None: when CUDA is available.
        timeout_s : float, optional
            How long a collective waits for the other ranks; default :data:`DEFAULT_TIMEOUT_S`
            or the ``BAYESGEN_DIST_TIMEOUT`` environment variable.

        Returns
        -------
        DataParallel

        Raises
        ------
        ValueError
            Not started by ``torchrun`` and no process group initialised.
        """
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if not dist.is_available():
            raise ValueError("distributed=True needs torch.distributed, which this build of torch lacks")
        if not dist.is_initialized():
            if not in_torchrun():
                raise ValueError(
                    "distributed=True needs a process started by torchrun (RANK and WORLD_SIZE are not set): "
                    "run `torchrun --standalone --nproc_per_node=N -m bayesgen fit spec.toml`, or "
                    "`bayesgen fit spec.toml --nproc N`"
                )
            cuda = torch.cuda.is_available() if cuda is None else bool(cuda)
            if cuda:
                torch.cuda.set_device(local_rank)
            timeout = datetime.timedelta(seconds=_timeout_s() if timeout_s is None else float(timeout_s))
            dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://", timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank=local_rank)

    # ---------------------------------------------------------------- collectives
    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        """Run one collective, turning a timeout or a lost peer into a :class:`DistributedError`."""
        try:
            return fn()
        except (RuntimeError, ConnectionError) as err:
            if isinstance(err, DistributedError):
                raise
            raise DistributedError(
                f"rank {self.rank}: the other ranks did not answer while {what} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); one of them stopped: see its own error"
            ) from err

    def gather(self, value: Any, what: str = "exchanging state") -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._collective(what, lambda: dist.all_gather_object(out, value, group=self.group))
        return out

    def broadcast(self, value: Any, what: str = "sharing state") -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def all_reduce(self, buffer: torch.Tensor, what: str = "summing gradients") -> torch.Tensor:
        """Sum ``buffer`` over the ranks, in place (the step's one collective)."""
        import torch.distributed as dist

        start = time.perf_counter()
        self._collective(what, lambda: dist.all_reduce(buffer, group=self.group))
        self.reduce_seconds += time.perf_counter() - start
        self.reduce_calls += 1
        return buffer

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor], what: str = "sharing parameters") -> None:
        """Overwrite each of ``tensors`` with rank 0's values, in place (same order on every rank)."""
        import torch.distributed as dist

        for tensor in tensors:
            self._collective(what, lambda t=tensor: dist.broadcast(t, src=0, group=self.group))

    def together(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank and raise on every rank if it raised on any.

        The rank whose ``fn`` raised re-raises its own exception; the others raise a
        :class:`DistributedError` naming that rank and its error, so no rank goes on alone.
        """
        error: BaseException | None = None
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error, out = err, None
        reports = self.gather(None if error is None else f"{type(error).__name__}: {error}", what)
        failed = [(rank, text) for rank, text in enumerate(reports) if text is not None]
        if error is not None:
            raise error
        if failed:
            rank, text = failed[0]
            raise DistributedError(f"rank {rank} failed while {what}: {text}")
        return out  # type: ignore[return-value]

    def agree(self, facts: Mapping[str, Any], what: str = "the fit's settings") -> None:
        """Check that every rank has the same ``facts``; raise the same ``ValueError`` on every rank if not."""
        everyone = self.gather(dict(facts), f"comparing {what}")
        for rank, theirs in enumerate(everyone[1:], start=1):
            differ = sorted(k for k in set(everyone[0]) | set(theirs) if everyone[0].get(k) != theirs.get(k))
            if differ:
                key = differ[0]
                raise ValueError(
                    f"the ranks of a data-parallel fit must have the same {what}: rank {rank} has "
                    f"{key}={theirs.get(key)!r} where rank 0 has {everyone[0].get(key)!r}"
                    + (f" (also differing: {differ[1:]})" if differ[1:] else "")
                )

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's own RNG stream: ``seed`` itself on rank 0, a distinct one on the others."""
        if self.rank == 0:
            return int(seed)
        return int(np.random.SeedSequence([int(seed) % 2**63, self.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def data_parallel(distributed: bool | DataParallel | None, *, cuda: bool = False) -> DataParallel | None:
    """The :class:`DataParallel` a ``distributed=`` option asks for: None for False, from the environment for True.

    Parameters
    ----------
    distributed : bool or DataParallel or None
    cuda : bool, default False
        The fit runs on GPUs (NCCL), used when the process group is not initialised yet.

    Returns
    -------
    DataParallel or None
    """
    if distributed is None or distributed is False:
        return None
    if isinstance(distributed, DataParallel):
        return distributed
    if distributed is True:
        return DataParallel.from_env(cuda=cuda)
    raise TypeError(f"distributed must be True, False or a bayesgen.distributed.DataParallel, got {distributed!r}")


def launch(argv: Sequence[str], nproc: int, *, grace_s: float = 30.0) -> int:
    """Run ``python -m bayesgen <argv>`` as ``nproc`` ranks on this machine, as ``torchrun --standalone`` would.

    Each rank is a child process with the environment ``torchrun`` sets (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` on a free local port) and ``cores / nproc``
    threads, writing to this terminal. Ctrl-C reaches every rank, which stop together and write
    their checkpoint. When a rank fails, the others stop with it (they fail the same step); any
    still running ``grace_s`` seconds later are terminated.

    Parameters
    ----------
    argv : sequence of str
        The ``bayesgen`` command line for each rank (without ``--nproc``).
    nproc : int
        Number of ranks (processes).
    grace_s : float, default 30
        How long the other ranks may take to stop once one has failed.

    Returns
    -------
    int
        0 when every rank succeeded, else the first non-zero exit status.
    """
    import socket

    if int(nproc) < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    with socket.socket() as probe:  # a free port for the ranks' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = dict(os.environ)
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    base.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "bayesgen", *argv], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(int(nproc))
    ]
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed and not status:
                status = failed[0]
                deadline = time.monotonic() + grace_s
            if status and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            time.sleep(0.2)
    except KeyboardInterrupt:  # the ranks got it too: let them write their checkpoint and stop
        for p in procs:
            p.wait()
        return 130
    return status or next((p.returncode for p in procs if p.returncode), 0)

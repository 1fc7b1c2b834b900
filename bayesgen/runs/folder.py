"""Run folders: a fitted spec's outputs, written once, whole or not at all.

:func:`run_spec` fits a spec (:mod:`bayesgen.runs.spec`) and writes its run folder::

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
                       (sbc_ranks.csv); see :func:`bayesgen.diagnostics.write_diagnostics`
    plots/*.png        loss curve, model figures, predictive checks
    plots/model_graph.svg  Pyro's render_model of the model (when Graphviz is installed)
    model/             the fitted estimator (``Estimator.load`` reads it)

The folder is built in a staging folder next to it and renamed into place once
every file is written (:func:`bayesgen.io.staged_folder`), so a run folder is
never half written and an earlier one is never overwritten without
``overwrite``. :func:`fit_and_write` fits a spec into a staging folder;
:func:`write_run_folder` writes every file of a finished fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import tomli_w

import bayesgen
from bayesgen._runtime import check_count
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.datasets import resolve_source
from bayesgen.runs.spec import SpecFit, check_run_name, fit_spec, load_spec

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.models._base import BayesianEstimator

__all__ = [
    "run_spec",
    "RunOutput",
    "RunInterrupted",
    "default_run_folder",
    "fit_and_write",
    "write_run_folder",
    "package_versions",
    "CHECKPOINT_NAME",
]

logger = logging.getLogger(__name__)

#: The SVI checkpoint's name in a staging folder; it lives there until the fit completes.
CHECKPOINT_NAME = "checkpoint.pt"


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


def read_run_json(folder: PathLikeStr) -> dict[str, Any]:
    """A run folder's ``run.json``, refused in one line when it is missing, unreadable or not a JSON object."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a run folder (no run.json inside)")
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the run folder is damaged") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not the object a run folder writes")
    return value


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
    distributed: bool = False,
) -> RunOutput | None:
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
        A spec file, or a spec from :func:`bayesgen.runs.spec.load_spec`.
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
    distributed : bool, default False
        Fit data-parallel over the ranks of a ``torchrun`` launch (:mod:`bayesgen.distributed`):
        every rank runs this call with the same spec and ``out``; the ranks check that they agree,
        fit together, and rank 0 alone writes the folder (and the checkpoint).

    Returns
    -------
    RunOutput or None
        None on the ranks other than 0 of a data-parallel fit.

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
    dp = _ranks(spec, device, folder, resume, checkpoint_every) if distributed else None
    writer = dp is None or dp.rank == 0
    try:
        with contextlib.ExitStack() as stack:

            def open_folder() -> Path:
                if not writer:  # the other ranks never write: the same checkpoint path, for the same collectives
                    return staging_path(folder)
                return stack.enter_context(
                    staged_folder(folder, overwrite=overwrite, keep=_interrupted_fit, reuse=resume)
                )

            staging = open_folder() if dp is None else dp.together("opening the run folder", open_folder)
            fitted, table = fit_and_write(
                spec,
                staging,
                device=device,
                progress=progress and writer,
                num_samples=num_samples,
                checkpoint_every=checkpoint_every,
                resume=resume,
                dp=dp,
            )
    except KeyboardInterrupt as err:
        raise RunInterrupted(folder, writer and (staging_path(folder) / CHECKPOINT_NAME).is_file()) from err
    if not writer:
        return None
    return RunOutput(estimator=fitted.estimator, folder=folder, report=fitted.report, summary=table)


def _ranks(
    spec: dict[str, Any], device: DeviceLike | None, folder: Path, resume: bool, checkpoint_every: int | None
) -> DataParallel:
    """The process's place in a data-parallel run, once every rank has checked it runs the same spec and command."""
    from bayesgen._runtime import resolve_device
    from bayesgen.distributed import DataParallel

    asked = device if device is not None else spec.get("inference", {}).get("device", "auto")
    dp = DataParallel.from_env(cuda=resolve_device(asked).type == "cuda")
    content = json.dumps({k: v for k, v in spec.items() if not k.startswith("_")}, sort_keys=True, default=str)
    dp.agree(
        {
            "spec": hashlib.sha256(content.encode()).hexdigest(),
            "out": str(folder),
            "resume": bool(resume),
            "checkpoint_every": checkpoint_every,
            "device": str(asked),
        },
        "spec and command (run every rank with the same spec file and options)",
    )
    return dp


def fit_and_write(
    spec: dict[str, Any],
    folder: Path,
    *,
    device: DeviceLike | None,
    progress: bool,
    num_samples: int,
    checkpoint_every: int | None = None,
    resume: bool = False,
    dp: DataParallel | None = None,
) -> tuple[SpecFit, pd.DataFrame | None]:
    """Fit ``spec`` and write every file of its run folder into ``folder`` (a staging folder).

    The SVI checkpoint (:data:`CHECKPOINT_NAME`) is kept in ``folder`` while the fit
    runs and removed once it completes; then :func:`write_run_folder` writes the outputs.

    Parameters
    ----------
    spec : dict
        A spec from :func:`bayesgen.runs.spec.load_spec`.
    folder : pathlib.Path
        The staging folder (:func:`bayesgen.io.staged_folder`); :func:`run_spec` renames it into place.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Overrides the spec's ``[inference] device``.
    progress : bool
        Show a progress bar.
    num_samples : int
        Guide draws stored in ``posterior.nc`` (``[report] arviz_samples`` overrides it).
    checkpoint_every : int, optional
        SVI steps between checkpoints.
    resume : bool, default False
        Continue from the checkpoint in ``folder``; the other files an interrupted run left are removed first.
    dp : bayesgen.distributed.DataParallel, optional
        Fit data-parallel; rank 0 alone touches ``folder``, reads and writes the checkpoint and writes the files.

    Returns
    -------
    fitted : SpecFit
    summary : pandas.DataFrame or None
        The posterior summary written to ``summary.csv`` (None on the other ranks).
    """
    writer = dp is None or dp.rank == 0
    checkpoint = folder / CHECKPOINT_NAME
    if (
        resume and writer
    ):  # what an interrupted run wrote after its fit is written again; only the checkpoint carries on
        for leftover in folder.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover != checkpoint:
                leftover.unlink()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    resume_now = resume and checkpoint.is_file() if writer else None
    fit_kwargs: dict[str, Any] = {
        "checkpoint": checkpoint,
        "checkpoint_every": checkpoint_every,
        "resume": resume_now if dp is None else dp.broadcast(resume_now, "finding the checkpoint"),
    }
    if dp is not None:
        fit_kwargs["distributed"] = dp
    fitted = fit_spec(spec, device, progress, fit_kwargs)
    if not writer:
        return fitted, None
    checkpoint.unlink(missing_ok=True)  # the fit is complete: nothing is left to resume
    fit_seconds = time.perf_counter() - started
    table = write_run_folder(
        folder,
        spec,
        fitted,
        num_samples=num_samples,
        fit_seconds=fit_seconds,
        created=stamp,
        world_size=1 if dp is None else dp.world_size,
    )
    return fitted, table


def write_run_folder(
    folder: Path,
    spec: dict[str, Any],
    fitted: SpecFit,
    *,
    num_samples: int,
    fit_seconds: float,
    created: str,
    world_size: int = 1,
) -> pd.DataFrame:
    """Write every file of a run folder for a finished fit: the posterior, tables, plots, model and records.

    Parameters
    ----------
    folder : pathlib.Path
        The (staging) folder to write into; it exists.
    spec : dict
        The spec that was fitted, from :func:`bayesgen.runs.spec.load_spec`.
    fitted : SpecFit
        What the spec's recipe returned.
    num_samples : int
        Guide draws stored in ``posterior.nc`` (``[report] arviz_samples`` overrides it).
    fit_seconds : float
        Wall time of the fit, for ``run.json``.
    created : str
        UTC time stamp of the run (``%Y%m%dT%H%M%SZ``), for ``run.json`` and ``spec.toml``.
    world_size : int, default 1
        Ranks of a data-parallel fit, for ``run.json`` (with the global batch: ``batch_size`` per rank times it).

    Returns
    -------
    pandas.DataFrame
        The posterior summary written to ``summary.csv``.
    """
    from bayesgen.io import write_json, write_text

    est = fitted.estimator
    (folder / "plots").mkdir(exist_ok=True)
    table = _write_posterior(folder, spec, fitted, num_samples=int(spec["report"].get("arviz_samples", num_samples)))
    _write_pictures_and_model(folder, fitted)
    diagnostics = _write_diagnostics(folder, spec, est)
    write_text(
        folder / "spec.toml",
        f"# resolved from {spec['_path']} on {created}\n" + tomli_w.dumps(_toml_safe(_resolved_spec(spec, est))),
    )
    write_json(folder / "versions.json", {**package_versions(), "device": str(est.device_)})
    run_info = {
        "name": spec["run"]["name"],
        "model": spec["run"]["model"],
        "spec": spec["_path"],
        "seed": spec["run"]["seed"],
        "data_checksum": fitted.data_checksum,
        "data_path": _data_path(spec),
        "num_steps": int(est.n_steps_),
        "converged": None if est.converged_ is None else bool(est.converged_),
        "final_loss": float(np.mean(est.losses_[-100:])) if len(est.losses_) else None,
        "fit_seconds": round(fit_seconds, 3),
        "device": str(est.device_),
        "world_size": int(world_size),
        "global_batch_size": None
        if getattr(est, "batch_size", None) is None
        else int(est.batch_size) * int(world_size),
        "created": created,
        "diagnostic_warnings": diagnostics["warnings"],
    }
    write_json(folder / "run.json", run_info)
    return table


def _write_posterior(folder: Path, spec: dict[str, Any], fitted: SpecFit, *, num_samples: int) -> pd.DataFrame:
    """posterior.nc, summary.csv, report.csv and losses.csv; returns the summary."""
    from bayesgen.arviz import summary as arviz_summary
    from bayesgen.io import atomic_path, write_datatree

    est = fitted.estimator
    tree = est.to_arviz(num_samples=num_samples, seed=spec["run"]["seed"])
    write_datatree(folder / "posterior.nc", tree)
    table = arviz_summary(tree)
    with atomic_path(folder / "summary.csv") as tmp:
        table.to_csv(tmp)
    with atomic_path(folder / "report.csv") as tmp:
        fitted.report.to_csv(tmp)
    with atomic_path(folder / "losses.csv") as tmp:
        pd.DataFrame({"step": np.arange(len(est.losses_)), "loss": est.losses_}).to_csv(tmp, index=False)
    return table


def _write_pictures_and_model(folder: Path, fitted: SpecFit) -> None:
    """The loss curve and the recipe's figures under plots/, the fitted estimator under model/, the model graph."""
    from bayesgen.io import atomic_path
    from bayesgen.plots import plot_loss, render_model_graph

    est = fitted.estimator
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


def _write_diagnostics(folder: Path, spec: dict[str, Any], est: BayesianEstimator) -> dict[str, Any]:
    """diagnostics.json and its tables and plots, with the counts of the spec's ``[report]``."""
    from bayesgen.diagnostics import write_diagnostics

    rep = spec["report"]
    return write_diagnostics(
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


def _resolved_spec(spec: dict[str, Any], est: BayesianEstimator) -> dict[str, Any]:
    """The spec with every estimator setting the fit used, defaults included (for spec.toml)."""
    resolved = {k: v for k, v in spec.items() if not k.startswith("_")}
    params = est.get_params()
    resolved["model"] = {k: v for k, v in params.items() if k in spec["model"]}
    resolved["inference"] = {k: v for k, v in params.items() if k not in resolved["model"] and k != "seed"}
    resolved["inference"]["device"] = str(resolved["inference"]["device"])
    resolved["inference"].pop("progress", None)
    return resolved


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

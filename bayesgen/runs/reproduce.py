"""Reproduce a run: re-run a run folder's resolved spec and compare the results with the original.

:func:`reproduce` reads ``spec.toml``, ``run.json`` and ``summary.csv`` of a run folder
(:mod:`bayesgen.runs.folder`), fits the spec again into a folder of its own (written
whole or not at all, like the original) and holds every posterior mean and sd, and
every figure of the model's report table, to a tolerance. The comparison is
written next to the re-run as ``reproduce.csv`` and ``reproduce.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesgen._runtime import check_real
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.runs.folder import fit_and_write, package_versions, read_run_json
from bayesgen.runs.spec import SpecFit, load_spec

__all__ = ["reproduce", "ReproduceResult"]

logger = logging.getLogger(__name__)


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
    from bayesgen.models._base import BayesianEstimator, ModelFileError

    try:
        saved = BayesianEstimator.load(model_dir, device="cpu").get_params()
    except ModelFileError as err:
        logger.warning("could not read %s for settings the run predates: %s", model_dir, err)
        return
    present = set(spec["model"]) | set(spec["inference"]) | {"seed", "progress"}
    runner = set(BayesianEstimator._shared_settings) | {"device"}
    for key, value in saved.items():
        if key not in present:
            spec["inference" if key in runner else "model"][key] = value


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's ``run.json`` and its resolved spec, ready to fit again where the original ran."""
    missing = [f for f in ("spec.toml", "run.json", "summary.csv") if not (run_dir / f).is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a complete run folder (missing {', '.join(missing)})")
    run = read_run_json(run_dir)
    spec = load_spec(run_dir / "spec.toml")
    _fill_settings_added_since(spec, run_dir / "model")
    original_spec = Path(str(run.get("spec", "")))
    if original_spec.is_file():  # relative data paths resolve where the original spec lived
        spec["_path"] = str(original_spec.resolve())
    elif run.get("data_path") and Path(run["data_path"]).is_file():
        spec["data"]["source"] = run["data_path"]  # the original spec moved: use the file it read
    return run, spec


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
        A folder written by :func:`bayesgen.runs.folder.run_spec` (``bayesgen fit`` or the tour).
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
        (it is written whole or not at all, as :func:`bayesgen.runs.folder.run_spec` writes).

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
    run, spec = _read_run(run_dir)
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
        fitted, summary = fit_and_write(spec, staging, device=device, progress=progress, num_samples=1000)
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
    rows = _summary_rows(old, new, tolerance=tolerance)
    if old_rep is not None:
        rows += _report_rows(old_rep, rerun.report, rtol=rtol)
    table = pd.DataFrame(rows, columns=["figure", "original", "rerun", "difference", "allowed", "ok"])
    table = table.set_index("figure")
    now = {**package_versions(), "device": str(rerun.estimator.device_)}
    changes = {k: (str(before[k]), str(now[k])) for k in before if k in now and str(before[k]) != str(now[k])}
    match = bool(data_match and len(table) and table["ok"].all())
    return ReproduceResult(match=match, data_match=data_match, table=table, version_changes=changes, folder=folder)


def _summary_rows(old: pd.DataFrame, new: pd.DataFrame, *, tolerance: float) -> list[dict[str, Any]]:
    """One row per posterior mean and sd of the original summary, held to ``tolerance`` posterior sds."""
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
    return rows


def _report_rows(old_rep: pd.DataFrame, report: pd.DataFrame, *, rtol: float) -> list[dict[str, Any]]:
    """One row per number of the original report table (timings left out), held to ``rtol``."""
    new_rep = report.copy()
    new_rep.index = new_rep.index.astype(str)
    rows = []
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
    return rows

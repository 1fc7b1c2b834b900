"""All diagnostics of a fitted estimator at once: ``diagnostics.json`` and the files of a run folder.

:func:`diagnose` runs the quick checks (convergence, PSIS k-hat, per-row k-hat
for amortised models, PSIS-corrected means, the exact reference);
:func:`write_diagnostics` writes them into a run folder with the predictive
checks and, on request, the slow cross-checks (NUTS, SBC). ``bayesgen diagnose
RUN_DIR`` calls it.
"""

from __future__ import annotations

import math
from typing import Any

from bayesgen._runtime import check_count
from bayesgen.diagnostics.convergence import convergence_report
from bayesgen.diagnostics.khat import KHAT_USABLE, psis_summary
from bayesgen.diagnostics.predictive import plot_predictive_checks, predictive_check
from bayesgen.diagnostics.reference import reference_check
from bayesgen.diagnostics.verdict import report_warnings

__all__ = ["diagnose", "write_diagnostics"]


def diagnose(estimator: Any, *, num_samples: int = 1000, seed: int | None = 0) -> dict[str, Any]:
    """Every quick diagnostic of a fitted estimator, as a JSON-ready dict (what ``diagnostics.json`` holds).

    Returns
    -------
    dict
        ``convergence`` (:func:`~bayesgen.diagnostics.convergence.convergence_report`); ``psis`` (joint k-hat,
        verdict, ESS, message, or the error that prevented it); for amortised models (VAE, ProdLDA)
        ``psis_rows`` (:func:`~bayesgen.diagnostics.khat.vi_khat_rows`: per-row k-hat, which then sets the
        verdict, since the joint k-hat over many rows grows with their number: ``psis`` then has
        ``scope: "joint"`` and only ``psis_rows`` raises a warning) and ``amortised`` (the estimator's
        ``reliability_notes``: plain sentences on what the fit gives as point estimates, the share of rows whose
        approximate posterior is unreliable, and what to do); ``psis_means`` (the largest shift of a
        PSIS-corrected mean, where k-hat ≤ 0.7; the table is :func:`~bayesgen.diagnostics.khat.psis_summary` and
        ``psis_summary.csv`` in a run folder); ``reference`` (every global site with a closed-form posterior
        against it, :func:`~bayesgen.diagnostics.reference.reference_check`, and the sites without one); and
        ``warnings`` (the messages an analyst must read: every check that
        :func:`~bayesgen.diagnostics.verdict.check_verdicts` calls a caution or a failure, each followed by one
        sentence on why and what to do). The slow cross-checks, NUTS and SBC, are options of
        :func:`write_diagnostics`.
    """
    return _diagnose(estimator, num_samples=num_samples, seed=seed)[0]


def _diagnose(estimator: Any, *, num_samples: int, seed: int | None) -> tuple[dict[str, Any], Any]:
    """:func:`diagnose`, plus the PSIS summary table (or None)."""
    estimator._check_fitted()
    report: dict[str, Any] = {
        "model": type(estimator).__name__,
        "convergence": _convergence_part(estimator),
        "warnings": [],
    }
    amortised = getattr(estimator, "_row_plate", None) is not None
    psis, table = _psis_parts(estimator, num_samples=num_samples, seed=seed, amortised=amortised)
    report.update(psis)
    if amortised:
        report.update(_rows_parts(estimator, num_samples=num_samples, seed=seed))
    report["reference"] = _reference_part(estimator, num_samples=num_samples, seed=seed)
    report["warnings"] = report_warnings(report)
    return report, table


def _convergence_part(estimator: Any) -> dict[str, Any]:
    """The report's ``convergence``: the loss trace's verdict, or ``"exact"`` where nothing was optimised."""
    max_steps = getattr(estimator, "num_steps", None)
    from bayesgen.registry import entry_for

    if getattr(entry_for(estimator), "amortised", False):
        max_steps = None  # epoch-based fits stop by epochs or early stopping
    conv = convergence_report(estimator.losses_, converged=estimator.converged_, max_steps=max_steps)
    if len(estimator.losses_) == 0:
        conv["message"] = "exact posterior: no optimisation"
        conv["verdict"] = "exact"
    return conv


def _psis_parts(estimator: Any, *, num_samples: int, seed: int | None, amortised: bool) -> tuple[dict[str, Any], Any]:
    """The report's ``psis`` (joint k-hat, or its error) and ``psis_means``, and the PSIS summary table (or None)."""
    parts: dict[str, Any] = {}
    table = None
    try:
        diag = estimator.vi_diagnostic(num_samples=num_samples, seed=seed, warn=False)
        parts["psis"] = {
            "khat": diag.khat,
            "verdict": diag.verdict,
            "ess": diag.ess,
            "num_samples": diag.num_samples,
            "message": diag.message(),
        }
        if diag.verdict == "unreliable" and not amortised:
            parts["psis"]["advice"] = _khat_advice(estimator)
        if amortised:
            plate = estimator._row_plate
            parts["psis"]["scope"] = "joint"
            parts["psis"]["message"] = (
                f"The joint PSIS k-hat over all checked {plate}s together ({diag.khat:.2f}) is not a verdict: it grows "
                f"with the number of {plate}s even when each {plate}'s guide is good; the per-{plate} k-hat is the "
                "check."
            )
        if diag.khat <= KHAT_USABLE:
            table = psis_summary(diag, estimator=estimator)
            if len(table):
                worst = table["shift_sd"].abs()
                parts["psis_means"] = {
                    "largest_shift_sd": float(worst.max()),
                    "parameter": str(worst.idxmax()),
                    "message": (
                        f"PSIS-corrected means move at most {worst.max():.2f} guide sds "
                        f"({worst.idxmax()}); table in psis_summary.csv"
                    ),
                }
    except (ValueError, RuntimeError) as err:
        parts["psis"] = {"error": str(err).splitlines()[0]}
    return parts, table


def _khat_advice(estimator: Any) -> str | None:
    """What to do about an unreliable joint k-hat: the estimator's own advice (``_khat_advice``), else a
    pointer to NUTS, or, past the model size NUTS is offered for, to a smaller fit (None: the generic advice)."""
    try:
        size = int(estimator._latent_size())
    except (AttributeError, ValueError, RuntimeError):
        return None
    own = getattr(estimator, "_khat_advice", None)
    advice = own(size) if own is not None else None
    limit = int(getattr(estimator, "_nuts_max_latents", size))
    if advice is None and size > limit:
        advice = (
            "A k-hat above 0.7 means the guide's draws miss part of the posterior, so its intervals may be too "
            f"narrow: fit for more steps. NUTS, the cross-check, is offered for models of at most {limit:,} latent "
            f"numbers and this one has {size:,}: fit it on fewer features, rows or classes and call nuts_check() "
            "on that fit."
        )
    return advice


def _rows_parts(estimator: Any, *, num_samples: int, seed: int | None) -> dict[str, Any]:
    """An amortised model's ``psis_rows`` (per-row k-hat, or its error) and ``amortised`` (its reliability notes)."""
    parts: dict[str, Any] = {}
    try:
        rows = estimator.vi_diagnostic_rows(num_samples=max(100, min(int(num_samples), 500)), seed=seed, warn=False)
        parts["psis_rows"] = {
            "verdict": rows.verdict,
            **rows.shares,
            "num_rows": len(rows.khat),
            "khat_median": rows.quantile(0.5),
            "khat_p90": rows.quantile(0.9),
            "message": rows.message(),
        }
        notes = estimator.reliability_notes(rows)
        parts["amortised"] = notes
        parts["psis_rows"]["advice"] = notes["advice"]
    except (ValueError, RuntimeError) as err:
        parts["psis_rows"] = {"error": str(err).splitlines()[0]}
    return parts


def _reference_part(estimator: Any, *, num_samples: int, seed: int | None) -> dict[str, Any]:
    """The report's ``reference``: the exact-posterior check (:func:`reference_check`), or its error."""
    try:
        ref = reference_check(estimator, num_samples=max(100, min(int(num_samples), 2000)), seed=seed)
        part = {
            "agree": ref.agree,
            "checked": sorted(set(ref.table["site"])) if len(ref.table) else [],
            "unchecked": ref.unchecked,
            "message": ref.message(),
        }
        if len(ref.table):
            part["largest_abs_smd"] = _finite_or_none(ref.table["smd"].abs().max())
            part["sd_ratio_range"] = [
                _finite_or_none(ref.table["sd_ratio"].min()),
                _finite_or_none(ref.table["sd_ratio"].max()),
            ]
    except (ValueError, RuntimeError) as err:
        part = {"error": str(err).splitlines()[0]}
    return part


def write_diagnostics(
    estimator: Any,
    folder: Any,
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    nuts: bool = False,
    nuts_samples: int = 1000,
    nuts_warmup: int = 500,
    sbc_simulations: int = 0,
    sbc_steps: int | None = None,
) -> dict:
    """Write every diagnostic of a fitted estimator into a run folder.

    Always: ``diagnostics.json`` (see :func:`diagnose`), ``psis_summary.csv``
    (where k-hat ≤ 0.7), ``plots/diagnostics_loss.png`` (loss, smoothed curve
    and verdict) and the prior/posterior predictive check plots. On request:
    the NUTS cross-check (``nuts=True``: ``nuts_comparison.csv``, ``nuts.nc``
    with chain/draw dims) and simulation-based calibration
    (``sbc_simulations > 0``: ``sbc_ranks.csv``, ``plots/sbc_ecdf.png``).
    A check that does not apply to the model (NUTS on a VAE) is recorded with
    its reason instead of failing the rest.

    Parameters
    ----------
    estimator : BayesianEstimator
        Fitted.
    folder : str or os.PathLike
    num_samples : int, default 1000
        Guide draws for PSIS.
    seed : int or None, default 0
    nuts : bool, default False
    nuts_samples, nuts_warmup : int
        NUTS draws and warm-up steps per chain (two chains).
    sbc_simulations : int, default 0
        Number of SBC refits (0: skip).
    sbc_steps : int, optional
        SVI steps per SBC refit (default: the estimator's, at most 1000).

    Returns
    -------
    dict
        What ``diagnostics.json`` holds.

    Raises
    ------
    ValueError
        A count out of its range, before anything is computed or written.
    """
    from pathlib import Path

    from bayesgen.io import atomic_path, write_json

    # Checked here, before any work: the checks themselves record their own errors instead of failing.
    check_count(num_samples, "num_samples", minimum=2)
    check_count(nuts_samples, "nuts_samples", minimum=2)
    check_count(nuts_warmup, "nuts_warmup", minimum=0)
    check_count(sbc_simulations, "sbc_simulations", minimum=0)
    if sbc_steps is not None:
        check_count(sbc_steps, "sbc_steps")

    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    # Results of an earlier call must not survive next to a new diagnostics.json that does not list them.
    for stale in _OPTIONAL_FILES:
        (folder / stale).unlink(missing_ok=True)
    report, table = _diagnose(estimator, num_samples=num_samples, seed=seed)
    if table is not None and len(table):
        with atomic_path(folder / "psis_summary.csv") as tmp:
            table.to_csv(tmp)
    report.update(_write_predictive(estimator, folder, seed=seed))
    if nuts:
        report["nuts"] = _write_nuts(estimator, folder, num_samples=nuts_samples, num_warmup=nuts_warmup, seed=seed)
    if sbc_simulations:
        report["sbc"] = _write_sbc(estimator, folder, simulations=sbc_simulations, num_steps=sbc_steps, seed=seed)
    report["warnings"] = report_warnings(report)
    write_json(folder / "diagnostics.json", report, default=float)
    if len(estimator.losses_):
        _write_loss_plot(estimator.losses_, folder / "plots" / "diagnostics_loss.png", report["convergence"]["message"])
    return report


#: The files of a run folder that only some calls of :func:`write_diagnostics` write.
_OPTIONAL_FILES = (
    "psis_summary.csv",
    "nuts_comparison.csv",
    "nuts.nc",
    "sbc_ranks.csv",
    "plots/sbc_ecdf.png",
    "ppc_statistics.csv",
    "plots/ppc_statistics.png",
)


def _write_predictive(estimator: Any, folder: Any, *, seed: int | None) -> dict[str, Any]:
    """Predictive check plots and statistics in ``folder``; the report's ``predictive_checks`` and ``predictive``."""
    from bayesgen.io import atomic_path

    parts: dict[str, Any] = {}
    try:  # one set of predictive draws serves the plots and the statistics
        tree = estimator.to_arviz(200, seed=seed, prior=True)
        parts["predictive_checks"] = plot_predictive_checks(estimator, folder / "plots", seed=seed, tree=tree)
        ppc = predictive_check(estimator, seed=seed, tree=tree)
        with atomic_path(folder / "ppc_statistics.csv") as tmp:
            ppc.table.to_csv(tmp)
        with atomic_path(folder / "plots" / "ppc_statistics.png") as tmp:
            ppc.plot().savefig(tmp, dpi=110)
        parts["predictive"] = {
            "passed": ppc.passed,
            "statistics": len(ppc.table),
            "smallest_p_value": _finite_or_none(ppc.table["p_value"].min()),
            "failed": [str(v) for v in ppc.table.index[~ppc.table["ok"]]],
            "message": ppc.message(),
        }
        if ppc.advice:
            parts["predictive"]["advice"] = ppc.advice
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        parts.setdefault("predictive_checks", {"error": message})
        parts["predictive"] = {"error": message}
    return parts


def _write_nuts(estimator: Any, folder: Any, *, num_samples: int, num_warmup: int, seed: int | None) -> dict[str, Any]:
    """The NUTS cross-check's table and draws in ``folder``; the report's ``nuts`` (or its error)."""
    from bayesgen.io import atomic_path, write_datatree

    try:
        cmp = estimator.nuts_check(
            num_samples=int(num_samples), num_warmup=int(num_warmup), seed=0 if seed is None else int(seed)
        )
        with atomic_path(folder / "nuts_comparison.csv") as tmp:
            cmp.table.to_csv(tmp)
        write_datatree(folder / "nuts.nc", cmp.tree)
        return {
            "agree": cmp.agree,
            "reliable": cmp.reliable,
            "divergences": cmp.divergences,
            "largest_abs_smd": _finite_or_none(cmp.table["smd"].abs().max(skipna=False)),
            "max_r_hat": _finite_or_none(cmp.max_r_hat),
            "min_ess_bulk": cmp.min_ess_bulk,
            "cause": cmp.cause,
            "label_switching": cmp.label_switching,
            "message": cmp.message(),
        }
    except (ValueError, RuntimeError) as err:
        return {"error": str(err).splitlines()[0]}


def _write_sbc(
    estimator: Any, folder: Any, *, simulations: int, num_steps: int | None, seed: int | None
) -> dict[str, Any]:
    """Simulation-based calibration's ranks and ECDF plot in ``folder``; the report's ``sbc`` (or its error)."""
    from bayesgen.io import atomic_path

    try:
        res = estimator.sbc_check(int(simulations), num_steps=num_steps, seed=0 if seed is None else int(seed))
        with atomic_path(folder / "sbc_ranks.csv") as tmp:
            res.ranks.to_csv(tmp, index=False)
        with atomic_path(folder / "plots" / "sbc_ecdf.png") as tmp:
            res.plot().savefig(tmp, dpi=110)
        return {
            "calibrated": res.calibrated,
            "simulations": len(res.ranks),
            "p_values": res.p_values.to_dict(),
            "message": res.message(),
        }
    except (ValueError, RuntimeError) as err:
        return {"error": str(err).splitlines()[0]}


def _write_loss_plot(losses: Any, path: Any, verdict: str) -> None:
    """The loss trace with its smoothed curve, titled by the convergence verdict, as a PNG at ``path``."""
    from bayesgen.io import atomic_path
    from bayesgen.plots import plot_loss

    fig = plot_loss(losses, window=max(2, min(100, len(losses) // 10)))
    fig.suptitle(verdict[:110], fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def _finite_or_none(value: float) -> float | None:
    """For JSON reports: an undefined (NaN) or infinite figure is null, never NaN/Infinity."""
    value = float(value)
    return value if math.isfinite(value) else None

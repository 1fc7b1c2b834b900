"""The one rule that turns the diagnostics' numbers into verdicts: ok, caution, fail or info.

Each check of a ``diagnostics.json`` report (:data:`CHECKS`) gets a
:class:`CheckVerdict` with a label, its message and, for a caution or a
failure, one sentence on why and what to do. The report's colours, its
overall table and the report's warnings all come from here. Imports nothing
heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECKS", "CheckVerdict", "check_verdicts", "overall_verdicts", "report_warnings"]

#: The checks of a ``diagnostics.json`` report, in the order a report shows them.
CHECKS: tuple[str, ...] = ("convergence", "psis", "psis_rows", "psis_means", "reference", "predictive", "nuts", "sbc")

_STATUS_RANK = {"info": 0, "ok": 1, "caution": 2, "fail": 3}


@dataclass(frozen=True)
class CheckVerdict:
    """What one diagnostic says, in the words of a report.

    Attributes
    ----------
    status : {"ok", "caution", "fail", "info"}
        ``"info"``: a figure that is no verdict by itself (an amortised
        model's joint k-hat, the PSIS-corrected means), or a check that did not
        run or does not apply to the model.
    label : str
        A few words for a table cell ("converged", "k-hat 0.12 good").
    message : str
        The diagnostic's one-line message.
    advice : str
        For ``"caution"`` and ``"fail"``: one plain sentence saying why the
        check flags this run and what to do about it; empty otherwise.
    """

    status: str
    label: str
    message: str
    advice: str = ""

    def warning(self) -> str:
        """The message followed by the advice: one line for ``diagnostics.json`` warnings and the CLI."""
        return f"{self.message.rstrip('.')}. {self.advice}" if self.advice else self.message


def _convergence_verdict(part: dict[str, Any]) -> CheckVerdict:
    verdict, message = part.get("verdict"), part.get("message", "")
    if verdict in ("converged", "flat", "exact"):
        label = {"converged": "converged", "flat": "loss flat", "exact": "exact posterior (no optimisation)"}[verdict]
        return CheckVerdict("ok", label, message)
    advice = {
        "still improving": "The loss was still falling when the fit stopped, so the fitted posterior may not have "
        "settled yet: raise num_steps (or num_epochs) in the spec's [inference] table and fit "
        "again.",
        "getting worse": "The loss rose at the end of the fit, which usually means the step size is too large for "
        "this model: lower learning_rate in the spec's [inference] table and fit again.",
        "too short": "The fit ran too few steps to tell whether the optimisation settled: fit for at least a few "
        "hundred steps.",
        "not finite": "A NaN or infinite loss means the fitted parameters are meaningless: lower learning_rate and "
        "check the data for missing, infinite or extreme values.",
    }
    if verdict not in advice:
        return CheckVerdict("info", "no verdict", message or str(part.get("error", "")))
    label = "NaN or infinite loss" if verdict == "not finite" else str(verdict)
    return CheckVerdict("fail" if verdict == "not finite" else "caution", label, message, advice[verdict])


def _khat_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if part.get("scope") == "joint":
        return CheckVerdict("info", f"joint k-hat {part.get('khat', float('nan')):.2f} (no verdict)", message)
    verdict, khat = part.get("verdict"), part.get("khat", float("nan"))
    ess, draws = part.get("ess"), part.get("num_samples")
    if verdict in ("good", "usable") and ess is not None and draws and ess < 0.5 * draws:
        # k-hat cannot see a guide that is too wide (its ratios are bounded); a low ESS can.
        return CheckVerdict(
            "caution",
            f"k-hat {khat:.2f} {verdict}, but ESS {ess / draws:.0%} of draws",
            message,
            "Only a small share of the guide's draws carry weight, which k-hat cannot flag, so the "
            "guide may be too wide or off-centre: fit for more steps and compare with the "
            "PSIS-corrected means in psis_summary.csv.",
        )
    if verdict == "good":
        return CheckVerdict("ok", f"k-hat {khat:.2f} good", message)
    if verdict == "usable":
        return CheckVerdict(
            "caution",
            f"k-hat {khat:.2f} usable",
            message,
            "A k-hat between 0.5 and 0.7 means the guide is close to the posterior but not exact, so "
            "its raw means and intervals are slightly off: use the PSIS-corrected means in "
            "psis_summary.csv, or fit for more steps.",
        )
    if verdict == "unreliable":
        return CheckVerdict(
            "fail",
            f"k-hat {khat:.2f} unreliable",
            message,
            part.get("advice")
            or "A k-hat above 0.7 means the guide's draws miss part of the posterior, so its intervals "
            "are too narrow to trust: fit for more steps, or cross-check the posterior with NUTS "
            "(bayesgen diagnose RUN_DIR --nuts).",
        )
    return CheckVerdict("info", "k-hat not computed", message or str(part.get("error", "")))


def _rows_verdict(part: dict[str, Any]) -> CheckVerdict:
    message, verdict = part.get("message", ""), part.get("verdict")
    if verdict == "good":
        return CheckVerdict("ok", f"per-row k-hat good ({part.get('good', 0.0):.0%} of rows below 0.5)", message)
    if verdict == "usable":
        return CheckVerdict(
            "caution",
            f"per-row k-hat usable (90th percentile {part.get('khat_p90', 0.0):.2f})",
            message,
            "For some rows the encoder's posterior is close to the exact one but not equal to it, so "
            "their uncertainty is slightly off: train for more epochs if per-row uncertainty matters.",
        )
    if verdict == "unreliable":
        return CheckVerdict(
            "fail",
            f"per-row k-hat: {part.get('unreliable', 0.0):.0%} of rows above 0.7",
            message,
            part.get("advice")
            or "For more than a tenth of the rows the encoder's approximate posterior misses part of the "
            "exact one, so per-row uncertainty is understated: train for more epochs or give the "
            "encoder more capacity, and compare the IWAE bound with the ELBO.",
        )
    return CheckVerdict("info", "per-row k-hat not computed", message or str(part.get("error", "")))


def _sites(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _reference_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    unchecked = part.get("unchecked") or {}
    # What a reader should know about the sites the check could not compare, in their own words; sites that
    # share a reason are named together, the reason said once.
    by_reason: dict[str, list[str]] = {}
    for site, why in sorted(unchecked.items()):
        if why:
            by_reason.setdefault(why, []).append(site)
    caveat = "; ".join(f"{', '.join(sites)}: {why}" for why, sites in by_reason.items())
    checked = [str(site) for site in part.get("checked") or []]
    if "error" in part or not checked:
        return CheckVerdict("info", "no exact posterior to compare", message or str(part.get("error", "")), caveat)
    if part.get("agree"):
        label = f"exact posterior matched ({_sites(checked)})"
        if unchecked:
            # The sites compared are right; the others have no exact posterior, so their intervals are not vouched for.
            return CheckVerdict(
                "caution",
                f"{label}; {len(unchecked)} {'site' if len(unchecked) == 1 else 'sites'} without one",
                message,
                caveat
                or "Some sites have no closed-form posterior to compare with, so their intervals are the guide's "
                "alone: cross-check them with NUTS (bayesgen diagnose RUN_DIR --nuts).",
            )
        return CheckVerdict("ok", label, message)
    return CheckVerdict(
        "fail",
        "differs from the exact posterior",
        message,
        "The fitted posterior is away from the exact closed-form posterior of the same model, so the "
        "fit has not reached the answer: fit for more steps or lower learning_rate (the A/B test also "
        "offers method='exact').",
    )


def _predictive_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict(
            "caution",
            "not run",
            f"predictive check not run: {part['error']}",
            "The predictive check could not run, so nothing here says whether the model reproduces "
            "the data: run bayesgen diagnose RUN_DIR to see the full error.",
        )
    n = part.get("statistics", 0)
    if part.get("passed"):
        return CheckVerdict("ok", f"passed ({n} statistics)", message)
    return CheckVerdict(
        "fail",
        f"failed: {len(part.get('failed', []))} of {n} statistics",
        message,
        part.get("advice")
        or "The fitted model does not reproduce the statistics named, so conclusions that depend on "
        "them are suspect: look at them in ppc_statistics.png and consider a model that can express "
        "them (more components, another likelihood).",
    )


def _nuts_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict("info", "NUTS not run", f"NUTS cross-check not run: {part['error']}")
    if not part.get("reliable"):
        cause = part.get("cause") or ("divergences" if part.get("divergences") else "mixing")
        label = {"divergences": "NUTS diverged", "label switching": "NUTS chains switched labels"}.get(
            cause, "NUTS did not mix"
        )
        advice = {
            "divergences": "NUTS hit divergent transitions, so its draws are biased and the comparison is no "
            "evidence either way: reparameterise the model (non-centred scales) or raise "
            "target_accept_prob toward 0.95; more draws do not help.",
            "label switching": "The NUTS chains settled on different labellings of the same components, so R-hat "
            "is high although each chain may be fine: compare with nuts_compare(..., "
            "relabel=...) in one labelling, or break the symmetry in the model.",
        }.get(
            cause,
            "NUTS itself did not mix (R-hat above 1.05 or a small ESS), so the comparison is no evidence "
            "either way yet: run it with more warm-up steps and draws (--nuts-warmup, --nuts-samples).",
        )
        return CheckVerdict("caution", label, message, advice)
    if part.get("agree"):
        return CheckVerdict("ok", "NUTS agrees", message)
    return CheckVerdict(
        "fail",
        "NUTS disagrees",
        message,
        "NUTS samples the exact posterior and disagrees with the SVI posterior, so the guide is off: "
        "fit for more steps, and use the NUTS draws in nuts.nc meanwhile.",
    )


def _sbc_verdict(part: dict[str, Any]) -> CheckVerdict:
    message = part.get("message", "")
    if "error" in part:
        return CheckVerdict("info", "SBC not run", f"simulation-based calibration not run: {part['error']}")
    if part.get("calibrated"):
        return CheckVerdict("ok", "SBC calibrated", message)
    return CheckVerdict(
        "fail",
        "SBC miscalibrated",
        message,
        "On data simulated from the prior the fitted posteriors are systematically off, so credible "
        "intervals do not have their stated coverage: fit each refit for more steps (--sbc-steps).",
    )


def _means_verdict(part: dict[str, Any]) -> CheckVerdict:
    shift = part.get("largest_shift_sd")
    label = "PSIS-corrected means" if shift is None else f"PSIS-corrected means move ≤ {shift:.2f} sd"
    return CheckVerdict("info", label, part.get("message", ""))


_VERDICTS: dict[str, Callable[[dict[str, Any]], CheckVerdict]] = {
    "convergence": _convergence_verdict,
    "psis": _khat_verdict,
    "psis_rows": _rows_verdict,
    "psis_means": _means_verdict,
    "reference": _reference_verdict,
    "predictive": _predictive_verdict,
    "nuts": _nuts_verdict,
    "sbc": _sbc_verdict,
}


def check_verdicts(report: dict[str, Any]) -> dict[str, CheckVerdict]:
    """The verdict of every check in a ``diagnostics.json`` report (see :data:`CHECKS`).

    This is the one rule that turns the diagnostics' numbers into ok /
    caution / fail: the report's colours, its overall table and the
    ``warnings`` of :func:`~bayesgen.diagnostics.report.diagnose` all come from it.

    Parameters
    ----------
    report : dict
        What :func:`~bayesgen.diagnostics.report.diagnose` or
        :func:`~bayesgen.diagnostics.report.write_diagnostics` returns (or a
        ``diagnostics.json`` read back).

    Returns
    -------
    dict
        Check name → :class:`CheckVerdict`, for the checks the report holds,
        in the order of :data:`CHECKS`.
    """
    return {key: _VERDICTS[key](report[key]) for key in CHECKS if isinstance(report.get(key), dict)}


def overall_verdicts(report: dict[str, Any]) -> dict[str, CheckVerdict]:
    """Three verdicts for a report's summary table: optimisation, posterior quality, predictive check.

    ``posterior`` is the worst of the k-hat, exact-reference, NUTS and SBC
    checks that gave a verdict (their labels joined); a part with nothing to
    judge is a caution ("not checked").

    Parameters
    ----------
    report : dict
        A ``diagnostics.json`` report.

    Returns
    -------
    dict
        ``"optimisation"``, ``"posterior"`` and ``"predictive"`` → :class:`CheckVerdict`.
    """
    checks = check_verdicts(report)

    def combine(keys: tuple[str, ...], missing: str) -> CheckVerdict:
        parts = [checks[k] for k in keys if k in checks and checks[k].status != "info"]
        if not parts:
            return CheckVerdict(
                "caution",
                missing,
                "; ".join(checks[k].message for k in keys if k in checks),
                "Nothing checked this part of the fit, so it is unknown whether it can be trusted: "
                "run bayesgen diagnose RUN_DIR (with --nuts or --sbc where the model allows).",
            )
        worst = max(parts, key=lambda v: _STATUS_RANK[v.status])
        return CheckVerdict(
            worst.status, "; ".join(v.label for v in parts), "; ".join(v.message for v in parts), worst.advice
        )

    return {
        "optimisation": combine(("convergence",), "not recorded"),
        "posterior": combine(("psis", "psis_rows", "reference", "nuts", "sbc"), "not checked"),
        "predictive": combine(("predictive",), "not run"),
    }


def report_warnings(report: dict[str, Any]) -> list[str]:
    """The messages an analyst must read: every check that is a caution or a failure, with what to do.

    Parameters
    ----------
    report : dict
        A ``diagnostics.json`` report.

    Returns
    -------
    list of str
        :meth:`CheckVerdict.warning` of every check that :func:`check_verdicts` calls ``"caution"`` or
        ``"fail"``, in the order of :data:`CHECKS`.

    Examples
    --------
    >>> report_warnings({"convergence": {"verdict": "converged", "message": "optimisation converged"}})
    []
    """
    return [v.warning() for v in check_verdicts(report).values() if v.status in ("caution", "fail")]

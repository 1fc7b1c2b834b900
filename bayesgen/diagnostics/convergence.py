"""Did the optimisation settle? A verdict from the loss trace, by the runner's own rule.

The rule itself is :class:`bayesgen.infer.ConvergenceCheck`, which also sets the
runner's ``converged`` flag; :func:`convergence_report` puts its verdict into
words for a report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bayesgen.infer import ConvergenceCheck

__all__ = ["convergence_report"]


def convergence_report(
    losses: Any,
    *,
    converged: bool | None = None,
    max_steps: int | None = None,
    window: int = 100,
    check: ConvergenceCheck | None = None,
) -> dict[str, Any]:
    """Verdict on the optimisation from its loss trace, by the runner's own rule.

    The verdict is :meth:`bayesgen.infer.ConvergenceCheck.assess`, the rule
    that sets :func:`~bayesgen.infer.run_svi`'s ``converged`` flag: each of the
    last ``patience`` windows is compared with the last one, relative to the
    loss and to the Monte Carlo noise of the ELBO. Verdicts: ``"converged"``,
    ``"still improving"`` (the loss still falls by more than its noise: fit
    longer), ``"getting worse"`` (it rises: lower the learning rate),
    ``"not finite"`` (NaN or infinite losses at the end) and ``"too short"``.

    Parameters
    ----------
    losses : array_like
    converged : bool, optional
        The runner's flag (``SVIResult.converged``, an estimator's ``converged_``), computed by the same rule
        with the fit's own settings; it decides between ``"converged"`` and not when given. A fit the rule did
        not pass while the report's settings would have is ``"still improving"`` or ``"getting worse"`` by the
        sign of the change, never ``"converged"``.
    max_steps : int, optional
        The step limit; says whether the fit stopped by it.
    window : int, default 100
        Window of the default rule; shortened to fit ``patience + 1`` windows into a shorter trace.
    check : bayesgen.infer.ConvergenceCheck, optional
        The rule's settings (the fit's own, to judge exactly as its runner did); ``window`` is then unused.

    Returns
    -------
    dict
        ``verdict``, ``steps``, ``stopped_by_step_limit``, ``final_loss`` (mean of the last window),
        ``last_change`` (mean of the last window minus that of the window ``patience`` windows before),
        ``last_change_se``, ``converged_at`` and ``message``.
    """
    from bayesgen.infer import ConvergenceCheck

    y = np.asarray(losses, dtype=float).ravel()
    n = len(y)
    if check is None:
        patience = ConvergenceCheck.patience
        check = ConvergenceCheck(window=max(2, min(int(window), n // (patience + 1))), early_stop=False)
    result = check.assess(y)
    out: dict[str, Any] = {
        "steps": n,
        "stopped_by_step_limit": None if max_steps is None else n >= int(max_steps),
        "last_change": result.change,
        "last_change_se": result.change_se,
        "converged_at": result.converged_at,
    }
    tail = y[-check.window :]
    out["final_loss"] = float(tail[np.isfinite(tail)].mean()) if np.isfinite(tail).any() else None
    verdict, message = result.verdict, result.message
    if converged is not None and verdict in ("converged", "still improving", "getting worse"):
        if converged and verdict != "converged":
            verdict = "converged"
            message = f"optimisation converged: the runner's convergence check passed (at its own settings; {message})"
        elif not converged and verdict == "converged":
            verdict = "still improving" if (result.change or 0.0) <= 0 else "getting worse"
            message = (
                f"optimisation {verdict}: the runner's convergence check was not met with the fit's own "
                f"window and patience, although {message.split(': ', 1)[1]}"
            )
    out["verdict"] = verdict
    stop = " (stopped by the step limit)" if out["stopped_by_step_limit"] and verdict != "converged" else ""
    out["message"] = message.replace(f"optimisation {verdict}", f"optimisation {verdict}{stop}", 1)
    return out

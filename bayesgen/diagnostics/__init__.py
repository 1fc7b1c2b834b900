"""Is this variational posterior trustworthy? Diagnostics for any model/guide pair.

One module per check; every public name is also importable from here
(``from bayesgen.diagnostics import vi_khat``).

- :mod:`~bayesgen.diagnostics.khat`: PSIS k-hat of a guide (Yao et al. 2018), joint
  (:func:`~bayesgen.diagnostics.khat.vi_khat`) and per row of an amortised guide
  (:func:`~bayesgen.diagnostics.khat.vi_khat_rows`), and PSIS-corrected expectations and means.
- :mod:`~bayesgen.diagnostics.convergence`: the optimisation's verdict from its loss trace
  (:func:`~bayesgen.diagnostics.convergence.convergence_report`), by the runner's own rule,
  :class:`bayesgen.infer.ConvergenceCheck`.
- :mod:`~bayesgen.diagnostics.reference`: the fitted posterior against the exact one where the
  model is conjugate (:func:`~bayesgen.diagnostics.reference.reference_check`).
- :mod:`~bayesgen.diagnostics.nuts`: the NUTS cross-check
  (:func:`~bayesgen.diagnostics.nuts.nuts_compare`).
- :mod:`~bayesgen.diagnostics.calibration`: simulation-based calibration
  (:func:`~bayesgen.diagnostics.calibration.sbc`).
- :mod:`~bayesgen.diagnostics.predictive`: posterior predictive checks
  (:func:`~bayesgen.diagnostics.predictive.predictive_check`).
- :mod:`~bayesgen.diagnostics.verdict`: the one rule that turns the checks' numbers into ok /
  caution / fail (:func:`~bayesgen.diagnostics.verdict.check_verdicts`).
- :mod:`~bayesgen.diagnostics.report`: every check of a fitted estimator at once, as
  ``diagnostics.json`` (:func:`~bayesgen.diagnostics.report.diagnose`) and in a run folder
  (:func:`~bayesgen.diagnostics.report.write_diagnostics`, ``bayesgen diagnose RUN_DIR``).
- :mod:`~bayesgen.diagnostics.labels`: names of a site's scalars as ArviZ writes them.
"""

from __future__ import annotations

from bayesgen.diagnostics.calibration import SBCResult, sbc
from bayesgen.diagnostics.convergence import convergence_report
from bayesgen.diagnostics.khat import (
    KHAT_GOOD,
    KHAT_USABLE,
    RowDiagnostic,
    VIDiagnostic,
    psis_expectation,
    psis_summary,
    vi_khat,
    vi_khat_rows,
)
from bayesgen.diagnostics.labels import element_labels
from bayesgen.diagnostics.nuts import NUTSComparison, label_switched_sites, nuts_compare
from bayesgen.diagnostics.predictive import PredictiveCheck, plot_predictive_checks, predictive_check
from bayesgen.diagnostics.reference import ReferenceCheck, dirichlet_moments, reference_check
from bayesgen.diagnostics.report import diagnose, write_diagnostics
from bayesgen.diagnostics.verdict import CHECKS, CheckVerdict, check_verdicts, overall_verdicts, report_warnings

__all__ = [
    "CHECKS",
    "CheckVerdict",
    "KHAT_GOOD",
    "KHAT_USABLE",
    "NUTSComparison",
    "PredictiveCheck",
    "ReferenceCheck",
    "RowDiagnostic",
    "SBCResult",
    "VIDiagnostic",
    "check_verdicts",
    "convergence_report",
    "diagnose",
    "dirichlet_moments",
    "element_labels",
    "label_switched_sites",
    "nuts_compare",
    "overall_verdicts",
    "plot_predictive_checks",
    "predictive_check",
    "psis_expectation",
    "psis_summary",
    "reference_check",
    "report_warnings",
    "sbc",
    "vi_khat",
    "vi_khat_rows",
    "write_diagnostics",
]

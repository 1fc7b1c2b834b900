"""The tour: fit all five models from their specs on offline data and write one HTML report.

:func:`run_tour` fits, one after another, the specs in :data:`TOUR_SPECS`
(``models/*.toml``; each registered model's ``tour_spec``, see :mod:`bayesgen.registry`),
each on data that every machine has:

* A/B test — real published counts bundled with the package
  (``bayesgen/data/resume_callbacks.csv``, Bertrand & Mullainathan 2004);
* Gaussian generator and VAE — scikit-learn's bundled handwritten digits;
* ProdLDA — the text of Python's own help topics (``pydoc_data.topics``,
  shipped with every CPython: about 80 documents on the language);
* anomaly detector — scikit-learn's bundled Wisconsin breast-cancer table,
  with the malignant tumours scored as the anomalies.

Each fit writes its run folder under ``out/``; then :func:`bayesgen.report.write_report`
writes ``out/report.html`` and ``out/tour.json`` records the timings. A model
that fails does not stop the others: its error is shown in the report.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.registry import MODELS

__all__ = ["TOUR_SPECS", "TourResult", "run_tour", "smoke_spec", "specs_dir"]

logger = logging.getLogger(__name__)

#: The tour's specs (stems of ``models/*.toml``): one per registered model, in the registry's order.
TOUR_SPECS: tuple[str, ...] = tuple(entry.tour_spec for entry in MODELS.values())


def specs_dir() -> Path:
    """The ``models/`` folder of run specs (next to the package in a source checkout)."""
    here = Path(__file__).resolve().parents[1] / "models"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "models"
    if cwd.is_dir():
        return cwd
    raise FileNotFoundError(
        "no models/ folder of run specs found next to bayesgen or in the working directory; "
        "pass specs=DIR (CLI: --specs DIR)"
    )


def smoke_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec cut to a fast check of the whole pipeline (a twentieth of the steps or epochs).

    Its numbers are not results; it exists so tests and first-time users can
    check the setup in seconds.
    """
    spec = copy.deepcopy(spec)
    inf, rep = spec["inference"], spec["report"]
    if "num_steps" in inf:
        inf["num_steps"] = max(40, int(inf["num_steps"]) // 20)
        if "average_last" in inf:
            inf["average_last"] = min(int(inf["average_last"]), inf["num_steps"] // 2)
    if "num_epochs" in inf:
        inf["num_epochs"] = max(2, int(inf["num_epochs"]) // 20)
    rep["arviz_samples"] = min(int(rep.get("arviz_samples", 100)), 100)
    rep["diagnostic_samples"] = 200
    for key, cap in MODELS[spec["run"]["model"]].smoke_report.items():  # counts only this model's spec holds
        rep[key] = min(int(rep.get(key, cap)), cap)
    rep["nuts"] = False
    rep["sbc_simulations"] = 0
    return spec


@dataclass
class TourResult:
    """What :func:`run_tour` made.

    Attributes
    ----------
    report : pathlib.Path
        The HTML report.
    folders : dict
        Spec name → run folder, for the runs that finished.
    errors : dict
        Spec name → error message, for the runs that failed.
    seconds : dict
        Spec name → wall time of its fit and run folder; ``"total"`` for all.
    """

    report: Path
    folders: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_tour(
    out: PathLikeStr = "runs/tour",
    *,
    device: DeviceLike = "auto",
    specs: PathLikeStr | None = None,
    names: tuple[str, ...] | list[str] = TOUR_SPECS,
    smoke: bool = False,
    progress: bool = True,
    on_event: Callable[[str, str, int, int, Any], None] | None = None,
    overwrite: bool = False,
) -> TourResult:
    """Fit the tour's specs and write ``out/report.html``.

    Parameters
    ----------
    out : str or os.PathLike, default "runs/tour"
        Folder for the run folders, the report and ``tour.json``.
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    specs : str or os.PathLike, optional
        Folder of the specs (default :func:`specs_dir`).
    names : sequence of str
        Which specs (file stems), in order.
    smoke : bool, default False
        Cut every spec with :func:`smoke_spec` (a pipeline check, not results).
    progress : bool, default True
        A progress bar per model.
    on_event : callable, optional
        Called as ``on_event(kind, name, index, total, detail)`` with kind
        ``"start"``, ``"done"`` (detail: the RunOutput) or ``"failed"``
        (detail: the message); the CLI prints from it.
    overwrite : bool, default False
        Replace an existing ``out`` (a file, or a folder that is not empty).
        The tour's folder is written whole or not at all: it is built next to
        ``out`` and renamed into place after the report (see
        :func:`bayesgen.io.staged_folder`), so an earlier tour there stays
        until the new one is complete.

    Returns
    -------
    TourResult
    """
    from bayesgen._runtime import resolve_device
    from bayesgen.io import check_target, staged_folder

    resolve_device(device)  # a clear error now (e.g. cuda on a machine without a GPU), not five failures later
    out = Path(out)
    check_target(out, overwrite=overwrite)
    folder_of_specs = Path(specs) if specs is not None else specs_dir()
    unknown = [name for name in names if not (folder_of_specs / f"{name}.toml").is_file()]
    if unknown:
        known = sorted(p.stem for p in folder_of_specs.glob("*.toml"))
        raise ValueError(f"no spec named {unknown} in {folder_of_specs}; choose from {known}")
    with staged_folder(out, overwrite=overwrite) as staging:
        result = _tour_into(
            staging,
            out,
            device=device,
            folder_of_specs=folder_of_specs,
            names=names,
            smoke=smoke,
            progress=progress,
            on_event=on_event,
        )
    return result


def _tour_into(
    staging: Path,
    out: Path,
    *,
    device: DeviceLike,
    folder_of_specs: Path,
    names: tuple[str, ...] | list[str],
    smoke: bool,
    progress: bool,
    on_event: Callable[[str, str, int, int, Any], None] | None,
) -> TourResult:
    """Fit the tour into ``staging``; the result names the paths under ``out``, where it is moved next."""
    import dataclasses

    from bayesgen.io import write_json
    from bayesgen.report import write_report
    from bayesgen.runs.folder import run_spec
    from bayesgen.runs.spec import load_spec

    result = TourResult(report=out / "report.html")
    started = time.perf_counter()
    for i, name in enumerate(names):
        if on_event:
            on_event("start", name, i, len(names), None)
        t0 = time.perf_counter()
        try:
            spec = load_spec(folder_of_specs / f"{name}.toml")
            if smoke:
                spec = smoke_spec(spec)
            run = run_spec(spec, staging / name, device=device, progress=progress)
        except Exception as err:  # noqa: BLE001 - one model's failure must not lose the others' work
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            logger.warning("tour: %s failed: %s", name, message)
            result.errors[name] = message
            if on_event:
                on_event("failed", name, i, len(names), message)
            continue
        finally:
            result.seconds[name] = round(time.perf_counter() - t0, 2)
        result.folders[name] = out / name
        if on_event:
            on_event("done", name, i, len(names), dataclasses.replace(run, folder=out / name))
    fitting = time.perf_counter() - started
    intro = (
        "Five Bayesian generative models fitted with SVI on data every machine has"
        + (" (SMOKE RUN: a twentieth of the steps; a pipeline check, not results)" if smoke else "")
        + f"; {fitting:.0f} s in all, fits and their diagnostics."
    )
    write_report(
        [staging / name for name in result.folders],
        staging / "report.html",
        title="bayesgen tour",
        intro=intro,
        errors=result.errors,
        locations=list(result.folders.values()),
    )
    result.seconds["total"] = round(time.perf_counter() - started, 2)  # the report included
    write_json(
        staging / "tour.json",
        {
            "smoke": smoke,
            "device": str(device),
            "seconds": result.seconds,
            "errors": result.errors,
            "folders": {k: str(v) for k, v in result.folders.items()},
        },
    )
    return result

"""One self-contained HTML report from run folders (the tour's report, or any runs).

:func:`write_report` reads run folders written by :func:`bayesgen.runs.folder.run_spec`
and writes a single HTML file with everything inlined (CSS, PNG/SVG pictures as
``data:`` URIs), so it can be mailed, archived or opened offline. It opens with a
table of verdicts, one row per run: optimisation, posterior quality and the
predictive check, each coloured green (ok), amber (caution) or red (fail) by
:func:`bayesgen.diagnostics.verdict.overall_verdicts` and linking to the run's checks.
Then, for each run: what the model is (its title and description in
:mod:`bayesgen.registry`), the data, the fit (steps, time, device, one coloured
box per diagnostic, with one sentence on why and what to do where it is not
ok), the loss curve, the ArviZ summary table, the model's own figures
and table, the model graph (Pyro's ``render_model``, when Graphviz was
installed) and the posterior predictive check. Every picture has a caption in
words; tables scroll sideways inside the page rather than widen it.

A small script at the end of the page records, once the page has loaded, how
many sections and pictures rendered (``data-sections``, ``data-images``,
``data-broken-images`` on ``<body>``): a headless browser's ``--dump-dom`` reads
them back, which is how the tests check the report as a person would see it.
"""

from __future__ import annotations

import base64
import html
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bayesgen._typing import PathLikeStr
from bayesgen.registry import MODELS

__all__ = ["write_report"]

# Captions of the figures a run folder holds, by file stem.
_CAPTIONS: dict[str, str] = {
    "loss": "Loss (−ELBO) per optimisation step, with its moving average.",
    "diagnostics_loss": "Loss per step with its moving average, titled with the optimisation verdict.",
    "posterior": "Posterior density of each variant's conversion rate; the legend gives the probability that each "
    "variant is the best.",
    "samples": "New images drawn from the fitted model (one row per class when the model knows the labels).",
    "reconstructions": "Held-out images (top row, 'original') and the model's reconstruction of each one below it "
    "(bottom row, 'reconstructed'): encoded to the posterior mean of the latent code and decoded.",
    "latent": "Posterior means of the latent code of held-out images, coloured by class (the first two latent "
    "dimensions, or a 2-D PCA projection when there are more).",
    "interpolation": "Images decoded along the straight line in latent space between two held-out images; the two "
    "real images stand at the ends, labelled.",
    "topics": "The top words of each topic and each word's weight in the topic.",
    "scores": "Left: each row's posterior probability of being an anomaly, rows ranked by it (labelled anomalies in "
    "red); right: the rows in a 2-D PCA projection, coloured by that probability.",
    "sbc_ecdf": "Simulation-based calibration: the ECDF of each parameter's rank minus the uniform CDF, with an "
    "approximate 95 % band; a curve leaving the band is miscalibrated.",
    "model_graph": "The model drawn by pyro.render_model: its sample sites, their distributions and plates.",
}

# Figures with their own section, or already shown elsewhere.
_SPECIAL = ("loss.png", "diagnostics_loss.png", "model_graph.svg")
# The scale of a model's parameters and replicated data, where it is not the data's own.
_SCALES = {
    "gaussian_generator": "; on the standardised scale the model fits (each feature minus its mean, divided by the "
    "pooled within-class sd), as are the predictive check's statistics; sample() answers on the data's scale",
    "anomaly": "; on the standardised scale the model fits (each feature minus its median, divided by 1.4826 × "
    "its MAD), as are the predictive check's statistics",
}

_PICTURE_ORDER = ("posterior", "samples", "reconstructions", "latent", "interpolation", "topics", "scores")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2733;background:#fff;line-height:1.45}
header{background:#1f3b5c;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:26px} header p{margin:2px 0;color:#dbe6f2;font-size:14px}
nav{padding:10px 32px;background:#eef3f8;border-bottom:1px solid #cfdbe8;font-size:14px}
nav a{margin-right:18px;color:#1f3b5c}
main{padding:0 32px 40px 32px;max-width:1200px}
section.model{border-bottom:2px solid #cfdbe8;padding:12px 0 24px 0}
h2{color:#1f3b5c;margin-bottom:4px} h3{margin:18px 0 6px 0;font-size:17px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #cfdbe8;padding:3px 8px;text-align:right} th{background:#eef3f8}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e8ee}
figcaption{font-size:12px;color:#5b6b7c;max-width:48em}
th{overflow-wrap:anywhere} td{white-space:nowrap}
div.ok,div.note,div.caution,div.fail,p.fail{padding:6px 10px;margin:6px 0;border-left-width:4px;border-left-style:solid}
.ok{background:#e8f5e9} div.ok{border-left-color:#2e7d32}
.note{background:#eef3f8} div.note{border-left-color:#1f3b5c}
.caution{background:#fff4e5} div.caution{border-left-color:#ef6c00}
.fail{background:#fdecea} div.fail,p.fail{border-left-color:#c62828}
.advice{display:block;margin-top:3px}
table.verdicts td{white-space:normal;text-align:left;min-width:9em}
table.verdicts td a{color:inherit}
table.verdicts td.ok{color:#1b5e20} table.verdicts td.caution{color:#8a4500} table.verdicts td.fail{color:#b71c1c}
.scroll{overflow-x:auto;max-width:100%}
.muted{color:#5b6b7c;font-size:13px}
"""

_CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
  document.body.setAttribute("data-sections", String(document.querySelectorAll("section.model").length));
});
</script>
"""


def _data_uri(path: Path) -> str:
    mime = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg"}[path.suffix.lstrip(".").lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    return (
        f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _readable_report(path: Path) -> pd.DataFrame:
    """A run's report.csv for people: a pass/fail figure (``*_passed``, stored as 1/0) reads "passed"/"failed"."""
    frame = pd.read_csv(path, index_col=0).astype(object)
    for name in frame.index:
        if str(name).endswith("_passed"):
            frame.loc[name] = ["passed" if float(v) == 1.0 else "failed" for v in frame.loc[name]]
    return frame


def _figure_notes(frame: pd.DataFrame) -> str:
    """Sentences that read a run's labelled-data figures: the two ROC-AUCs, and the Brier score against its baseline."""
    values = frame.iloc[:, 0] if frame.shape[1] else pd.Series(dtype=object)
    notes = []
    if {"roc_auc_score", "roc_auc_probability"} <= set(values.index):
        notes.append(
            "roc_auc_score ranks the rows by how unusual the fitted density finds them; roc_auc_probability by "
            "their posterior anomaly probability."
        )
    if {"brier_probability", "brier_constant_baseline"} <= set(values.index):
        brier, baseline = float(values["brier_probability"]), float(values["brier_constant_baseline"])
        if brier < baseline:
            notes.append(
                f"The anomaly probabilities' Brier score ({brier:.3g}) beats predicting the labelled share for "
                f"every row ({baseline:.3g})."
            )
        else:
            notes.append(
                f"The anomaly probabilities' Brier score ({brier:.3g}) is no better than predicting the labelled "
                f"share for every row ({baseline:.3g}): they are the model's probabilities of being unusual, not "
                "of carrying these labels, so read the ranking (ROC-AUC); to turn them into probabilities of the "
                "label, calibrate them with a few labelled rows (MixtureAnomalyDetector.calibrate)."
            )
    return f'<p class="muted">{html.escape(" ".join(notes))}</p>' if notes else ""


# A table with more columns than this, and fewer rows than columns, is shown transposed.
_MAX_COLUMNS = 6


def _table(frame: pd.DataFrame, max_rows: int, source: str) -> str:
    """A table in a sideways-scrolling box; a wide, short one (the A/B table) turned so its columns are rows."""
    note = ""
    if frame.shape[1] > _MAX_COLUMNS and len(frame) < frame.shape[1]:
        frame = frame.T
        note = f'<p class="muted">shown turned: each column of {source} is a row here</p>'
    shown = frame.head(max_rows)
    text = '<div class="scroll">' + shown.to_html(float_format=lambda v: f"{v:.4g}", border=0, escape=True) + "</div>"
    if len(frame) > max_rows:
        text += f'<p class="muted">… {len(frame) - max_rows} more rows in {source}</p>'
    return text + note


def _caption(name: str, *, conditional: bool = False) -> str:
    """A sentence saying what a run folder's figure shows (a readable one for a figure of unknown name)."""
    stem = Path(name).stem
    if stem == "ppc_statistics":
        return (
            "Posterior predictive check of the statistics with the smallest p-values: each statistic over the "
            "replicated data sets (histogram, the middle 94 % shaded) and in the data (red line)."
        )
    if stem.startswith("ppc_"):
        group, _, var = stem[4:].partition("_predictive_")
        return (
            f"{group.capitalize()} predictive check of '{var}': the data's distribution against data sets "
            f"drawn from the {group} predictive (ArviZ plot_ppc_dist)."
        )
    if stem in _CAPTIONS:
        text = _CAPTIONS[stem]
        if stem in ("latent", "interpolation") and conditional:
            from bayesgen.models.vae import CONDITIONAL_INTERPOLATION_NOTE, CONDITIONAL_LATENT_NOTE

            text += " " + (CONDITIONAL_LATENT_NOTE if stem == "latent" else CONDITIONAL_INTERPOLATION_NOTE)
        return text
    return f"Figure '{stem.replace('_', ' ')}' written by the run (plots/{Path(name).name})."


_CHECK_TITLES = {
    "convergence": "Optimisation",
    "psis": "PSIS k-hat",
    "psis_rows": "Per-row PSIS k-hat",
    "psis_means": "PSIS-corrected means",
    "reference": "Exact posterior",
    "predictive": "Posterior predictive check",
    "nuts": "NUTS cross-check",
    "sbc": "Simulation-based calibration",
}
_STATUS_CLASS = {"ok": "ok", "caution": "caution", "fail": "fail", "info": "note"}


def _check_boxes(diag: dict[str, Any]) -> list[str]:
    """One coloured box per diagnostic; where it is not ok, one sentence on why and what to do."""
    from bayesgen.diagnostics import check_verdicts

    boxes, said = [], []
    for key, verdict in check_verdicts(diag).items():
        text = f"<strong>{html.escape(_CHECK_TITLES[key])}:</strong> {html.escape(verdict.message)}"
        if verdict.advice:
            text += f'<span class="advice"><em>Why and what to do:</em> {html.escape(verdict.advice)}</span>'
        boxes.append(f'<div class="{_STATUS_CLASS.get(verdict.status, "note")}">{text}</div>')
        said += [verdict.message, verdict.warning()]
    notes = diag.get("amortised")
    if isinstance(notes, dict) and notes.get("message"):
        boxes.append(
            f'<div class="note"><strong>What the fit gives:</strong> {html.escape(str(notes["message"]))}</div>'
        )
    for warning in diag.get("warnings", []):
        if not any(str(warning).startswith(m) for m in said if m):
            boxes.append(f'<div class="caution"><strong>Warning:</strong> {html.escape(str(warning))}</div>')
    return boxes


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _section(folder: Path, anchor: str, shown: Path, run: dict[str, Any]) -> tuple[str, str]:
    """HTML of one run folder's section (naming it ``shown``; ``run`` is its ``run.json``), and its title for
    the contents."""
    if not run:
        return (
            f'<section class="model" id="{anchor}"><h2>{html.escape(folder.name)}</h2>'
            f'<p class="fail">not a complete run folder (its run.json records nothing)</p></section>',
            folder.name,
        )
    try:
        spec = tomllib.loads((folder / "spec.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        spec = {}
    model = run.get("model", "")
    entry = MODELS.get(model)
    title, what = (entry.title, entry.description) if entry is not None else (model, "")
    conditional = bool(spec.get("model", {}).get("conditional", False)) if model == "vae" else False
    data = spec.get("data", {})
    diag = _read_json(folder / "diagnostics.json")
    parts = [
        f'<section class="model" id="{anchor}">',
        f"<h2>{html.escape(title)} — {html.escape(str(run.get('name', folder.name)))}</h2>",
        f"<p>{html.escape(what)}</p>",
        "<h3>Data</h3>",
        f"<p>{html.escape(str(data.get('description', data.get('source', ''))))}</p>",
        f'<p class="muted">source <code>{html.escape(str(data.get("source", "")))}</code>, data checksum '
        f"<code>{html.escape(str(run.get('data_checksum', ''))[:16])}</code>, seed "
        f"{html.escape(str(run.get('seed')))}</p>",
        "<h3>Fit</h3>",
        f"<p>{html.escape(str(run.get('num_steps')))} optimisation steps in "
        f"{html.escape(str(run.get('fit_seconds')))} s on "
        f"<code>{html.escape(str(run.get('device')))}</code>.</p>",
    ]
    parts.append(f'<div id="{anchor}-checks">')
    parts += _check_boxes(diag) or ['<p class="muted">no diagnostics.json in this run folder</p>']
    parts.append("</div>")
    plots = folder / "plots"
    if (plots / "loss.png").is_file():
        parts += ["<h3>Loss curve</h3>", _figure(plots / "loss.png", _caption("loss.png"))]
    if (folder / "summary.csv").is_file():
        summary = pd.read_csv(folder / "summary.csv", index_col=0)
        parts += [
            "<h3>ArviZ summary</h3>",
            '<p class="muted">arviz.summary of the guide draws (independent draws: statistics, not R-hat)'
            + html.escape(_SCALES.get(model, ""))
            + "</p>",
            _table(summary, 12, "summary.csv"),
            _draws_note(folder, entry),
        ]
    if (folder / "report.csv").is_file():
        figures = _readable_report(folder / "report.csv")
        parts += ["<h3>The model's own figures</h3>", _table(figures, 40, "report.csv"), _figure_notes(figures)]
    order = {name: i for i, name in enumerate(_PICTURE_ORDER)}
    pictures = sorted(
        (p for p in plots.glob("*.png") if p.name not in _SPECIAL and not p.name.startswith("ppc_")),
        key=lambda p: (order.get(p.stem, len(order)), p.name),
    )
    if pictures:
        parts.append("<h3>Pictures</h3>")
        parts += [_figure(p, _caption(p.name, conditional=conditional)) for p in pictures]
    parts.append("<h3>Model graph</h3>")
    if (plots / "model_graph.svg").is_file():
        parts.append(_figure(plots / "model_graph.svg", _caption("model_graph.svg")))
    elif (plots / "model_graph.txt").is_file():
        parts.append(f"<pre>{html.escape((plots / 'model_graph.txt').read_text(encoding='utf-8'))}</pre>")
    else:
        parts.append('<p class="muted">not available for this run</p>')
    # The model's own statistics, with labelled axes and a p-value each; ArviZ's pooled density of every
    # observed value (plots/ppc_*.png) only for a run without them.
    ppc = sorted(plots.glob("ppc_statistics.png")) or sorted(plots.glob("ppc_posterior_predictive_*.png"))
    parts.append("<h3>Posterior predictive check</h3>")
    parts += [_figure(p, _caption(p.name)) for p in ppc] or ['<p class="muted">not available for this run</p>']
    parts.append(f'<p class="muted">run folder: <code>{html.escape(str(shown))}</code></p></section>')
    return "\n".join(parts), title


def _draws_note(folder: Path, entry: Any) -> str:
    """Where the run's draws are and how to get more of them."""
    nc = folder / "posterior.nc"
    if not nc.is_file():
        return ""
    held = "the draws"
    try:
        import netCDF4

        with netCDF4.Dataset(nc) as data:
            sizes = data["posterior"].dimensions
            held = f"{sizes['chain'].size * sizes['draw'].size} draws"
    except (OSError, KeyError, IndexError):
        pass
    cls = entry.estimator.rpartition(":")[2] if entry is not None else "the estimator"
    return (
        f'<p class="muted">posterior.nc ({nc.stat().st_size / 1e6:.1f} MB, compressed netCDF) holds {held} of '
        "every parameter and of the replicated data; to draw another number, "
        f'<code>{html.escape(cls)}.load("RUN/model").to_arviz(num_samples)</code> in Python.</p>'
    )


def _verdict_row(folder: Path, anchor: str, name: str) -> str:
    """One row of the verdict table: the run, then its three verdicts, each linking to the run's checks."""
    from bayesgen.diagnostics import overall_verdicts

    cells = [f'<td><a href="#{anchor}">{html.escape(name)}</a></td>']
    for verdict in overall_verdicts(_read_json(folder / "diagnostics.json")).values():
        tip = verdict.message + (f" — {verdict.advice}" if verdict.advice else "")
        cells.append(
            f'<td class="{_STATUS_CLASS.get(verdict.status, "note")}" title="{html.escape(tip)}">'
            f'<a href="#{anchor}-checks">{html.escape(verdict.label)}</a></td>'
        )
    return "<tr>" + "".join(cells) + "</tr>"


def _verdict_table(rows: list[str]) -> str:
    return (
        '<h2 id="verdicts">Verdicts</h2>\n<p class="muted">One row per run: green ok, amber caution, red fail. '
        "Each verdict links to the run's diagnostics, where a sentence says why and what to do.</p>\n"
        '<div class="scroll"><table class="verdicts"><thead><tr><th>run</th><th>optimisation</th>'
        "<th>posterior quality</th><th>predictive check</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def write_report(
    folders: list[PathLikeStr],
    path: PathLikeStr,
    *,
    title: str = "bayesgen report",
    intro: str = "",
    errors: dict[str, str] | None = None,
    overwrite: bool = False,
    locations: list[PathLikeStr] | None = None,
) -> Path:
    """Write one self-contained HTML report of run folders.

    Parameters
    ----------
    folders : list of str or os.PathLike
        Run folders from ``bayesgen fit`` / :func:`bayesgen.runs.folder.run_spec`.
    path : str or os.PathLike
        The HTML file to write.
    title : str, default "bayesgen report"
    intro : str, optional
        A paragraph under the title (plain text).
    errors : dict, optional
        Runs that failed, name → message: shown as sections of their own.
    overwrite : bool, default False
        Replace an existing file at ``path``. The page is written whole or not
        at all (see :func:`bayesgen.io.atomic_path`).
    locations : list of str or os.PathLike, optional
        The path the page names for each folder (default: ``folders``), for
        folders read before they are moved into place.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``path`` exists and ``overwrite`` is False, or is a folder; a folder has no readable
        ``run.json``.
    bayesgen.io.WriteError
        The page could not be written; nothing was written in its place.

    Examples
    --------
    >>> from bayesgen.report import write_report
    >>> write_report(["runs/ab_resume_callbacks"], "report.html")  # doctest: +SKIP
    """
    from bayesgen.io import check_target, write_text
    from bayesgen.runs.folder import package_versions, read_run_json

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; name the HTML file to write")
    check_target(path, overwrite=overwrite)
    if locations is not None and len(locations) != len(folders):
        raise ValueError(f"locations names {len(locations)} folders, folders holds {len(folders)}")
    runs = [read_run_json(folder) for folder in folders]  # every folder checked before any work
    sections, contents, rows = [], [], []
    for i, folder in enumerate(folders):
        anchor = f"model-{i}"
        body, name = _section(Path(folder), anchor, Path(locations[i] if locations is not None else folder), runs[i])
        sections.append(body)
        contents.append(f'<a href="#{anchor}">{html.escape(name)}</a>')
        run_name = str(runs[i].get("name", Path(folder).name))
        rows.append(_verdict_row(Path(folder), anchor, f"{name} — {run_name}" if name != run_name else name))
    for j, (name, message) in enumerate((errors or {}).items()):
        anchor = f"failed-{j}"
        sections.append(
            f'<section class="model" id="{anchor}"><h2>{html.escape(name)}</h2>'
            f'<p class="fail">this run failed: {html.escape(message)}</p></section>'
        )
        contents.append(f'<a href="#{anchor}">{html.escape(name)} (failed)</a>')
        rows.append(
            f'<tr><td><a href="#{anchor}">{html.escape(name)}</a></td><td class="fail" colspan="3">'
            f'<a href="#{anchor}">the run failed: {html.escape(message)}</a></td></tr>'
        )
    graph_note = ""
    if any(not (Path(f) / "plots" / "model_graph.svg").is_file() for f in folders):
        graph_note = (
            "\n<p>Model graphs are shown as text: drawing them needs Graphviz (the "
            "<code>dot</code> program and the <code>graphviz</code> Python package).</p>"
        )
    versions = package_versions()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>{graph_note}
<p>written {stamp} · bayesgen {versions["bayesgen"]} · torch {versions["torch"]} · Pyro {versions["pyro"]} ·
ArviZ {versions["arviz"]} · Python {versions["python"]}</p></header>
<nav><a href="#verdicts">Verdicts</a>{"".join(contents)}</nav>
<main>
{_verdict_table(rows)}
{"".join(sections)}
</main>
{_CHECK_SCRIPT}
</body></html>
"""
    write_text(path, page, overwrite=overwrite)
    return path

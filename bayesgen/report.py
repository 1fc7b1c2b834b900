"""One self-contained HTML report from run folders (the tour's report, or any runs).

:func:`write_report` reads run folders written by :func:`bayesgen.specs.run_spec`
and writes a single HTML file with everything inlined (CSS, PNG/SVG pictures as
``data:`` URIs), so it can be mailed, archived or opened offline. For each run:
what the model is, the data, the fit (steps, time, device, the diagnostics'
verdicts and warnings), the loss curve, the ArviZ summary table, the model's own
figures and table, the model graph (Pyro's ``render_model``, when Graphviz was
installed) and the posterior predictive check.

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

__all__ = ["MODEL_DESCRIPTIONS", "write_report"]

MODEL_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "ab_test": (
        "Beta-Binomial A/B(/n) test",
        "Each variant's conversion rate gets a Beta prior and a Binomial likelihood. The posterior gives "
        "the probability that each variant is best, the expected loss of choosing it, and the lift over "
        "the control with a credible interval. The model is conjugate, so SVI is checked against the "
        "exact posterior.",
    ),
    "gaussian_generator": (
        "Gaussian class-conditional generator",
        "The Bayes classifier used generatively: class proportions p(y) with a Dirichlet prior and one "
        "Gaussian p(x | y) per class, here with a low-rank-plus-noise covariance shrunk toward the pooled "
        "one. It samples new labelled rows (generative data augmentation) and classifies by p(y | x). "
        "TSTR = trained on synthetic, tested on real.",
    ),
    "vae": (
        "Variational autoencoder",
        "A latent z ~ Normal(0, I) per image, decoded by a network into pixel probabilities; an encoder "
        "network gives the amortised guide q(z | x). Conditional on the digit label, so it samples a "
        "chosen class. Pictures: samples, reconstructions of held-out images, the latent space and an "
        "interpolation.",
    ),
    "topic": (
        "Neural topic model (ProdLDA)",
        "Each document mixes topics with proportions from a logistic-normal approximation of a Dirichlet; "
        "each topic is a distribution over words (a product of experts in ProdLDA). An encoder network "
        "gives the amortised guide. Scores: held-out NPMI coherence, topic diversity and perplexity.",
    ),
    "anomaly": (
        "Mixture anomaly detector",
        "Normal behaviour is a mixture of Gaussian components; a broad anomaly component with a small "
        "prior weight absorbs rows that fit none of them. The posterior probability of the anomaly "
        "component is each row's anomaly probability; the anomaly fraction has its own posterior.",
    ),
}

# Figures with their own section, or already shown elsewhere.
_SPECIAL = ("loss.png", "diagnostics_loss.png", "model_graph.svg")
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
figcaption{font-size:12px;color:#5b6b7c}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:6px 10px;margin:6px 0}
.note{background:#eef3f8;border-left:4px solid #1f3b5c;padding:6px 10px;margin:6px 0}
.scroll{overflow-x:auto}
.warn{background:#fff4e5;border-left:4px solid #ef6c00;padding:6px 10px;margin:6px 0}
.error{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;margin:6px 0}
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
    return (f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _readable_report(path: Path) -> pd.DataFrame:
    """A run's report.csv for people: a pass/fail figure (``*_passed``, stored as 1/0) reads "passed"/"failed"."""
    frame = pd.read_csv(path, index_col=0).astype(object)
    for name in frame.index:
        if str(name).endswith("_passed"):
            frame.loc[name] = ["passed" if float(v) == 1.0 else "failed" for v in frame.loc[name]]
    return frame


def _table(frame: pd.DataFrame, max_rows: int) -> str:
    shown = frame.head(max_rows)
    text = '<div class="scroll">' + shown.to_html(float_format=lambda v: f"{v:.4g}", border=0, escape=True) + "</div>"
    if len(frame) > max_rows:
        text += f'<p class="muted">… {len(frame) - max_rows} more rows in summary.csv</p>'
    return text


def _caption(name: str) -> str:
    stem = Path(name).stem
    if stem == "ppc_statistics":
        return ("posterior predictive check of the statistics with the smallest p-values: each statistic over the "
                "replicated data sets (histogram) and in the data (red line)")
    if stem.startswith("ppc_"):
        group, _, var = stem[4:].partition("_predictive_")
        return f"{group} predictive check of '{var}' (ArviZ plot_ppc_dist)"
    return stem.replace("_", " ")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _section(folder: Path, anchor: str, shown: Path) -> tuple[str, str]:
    """HTML of one run folder's section (naming it ``shown``), and its title for the contents."""
    run = _read_json(folder / "run.json")
    if not run:
        return (f'<section class="model" id="{anchor}"><h2>{html.escape(folder.name)}</h2>'
                f'<p class="error">not a complete run folder (no run.json)</p></section>', folder.name)
    try:
        spec = tomllib.loads((folder / "spec.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        spec = {}
    model = run.get("model", "")
    title, what = MODEL_DESCRIPTIONS.get(model, (model, ""))
    data = spec.get("data", {})
    diag = _read_json(folder / "diagnostics.json")
    parts = [f'<section class="model" id="{anchor}">', f"<h2>{html.escape(title)} — {html.escape(str(run.get('name', folder.name)))}</h2>",
             f"<p>{html.escape(what)}</p>", "<h3>Data</h3>",
             f"<p>{html.escape(str(data.get('description', data.get('source', ''))))}</p>",
             f'<p class="muted">source <code>{html.escape(str(data.get("source", "")))}</code>, data checksum '
             f'<code>{html.escape(str(run.get("data_checksum", ""))[:16])}</code>, seed '
             f'{html.escape(str(run.get("seed")))}</p>',
             "<h3>Fit</h3>",
             f"<p>{html.escape(str(run.get('num_steps')))} optimisation steps in "
             f"{html.escape(str(run.get('fit_seconds')))} s on "
             f"<code>{html.escape(str(run.get('device')))}</code>.</p>"]
    lines = []
    for key in ("convergence", "psis", "psis_rows", "amortised", "psis_means", "reference", "predictive", "nuts",
                "sbc"):
        part = diag.get(key)
        if isinstance(part, dict):
            lines.append(part.get("message") or f"{key}: {part.get('error', '')}")
    if lines:
        style = "note" if diag.get("warnings") else "ok"
        parts.append(f'<div class="{style}">' + "<br>".join(html.escape(line) for line in lines) + "</div>")
    for warning in diag.get("warnings", []):
        parts.append(f'<div class="warn">warning: {html.escape(warning)}</div>')
    plots = folder / "plots"
    if (plots / "loss.png").is_file():
        parts += ["<h3>Loss curve</h3>", _figure(plots / "loss.png", "loss (−ELBO) per step and its moving average")]
    if (folder / "summary.csv").is_file():
        summary = pd.read_csv(folder / "summary.csv", index_col=0)
        parts += ["<h3>ArviZ summary</h3>",
                  '<p class="muted">arviz.summary of the guide draws (independent draws: statistics, not R-hat)</p>',
                  _table(summary, 12)]
    if (folder / "report.csv").is_file():
        parts += ["<h3>The model's own figures</h3>", _table(_readable_report(folder / "report.csv"), 40)]
    order = {name: i for i, name in enumerate(_PICTURE_ORDER)}
    pictures = sorted((p for p in plots.glob("*.png") if p.name not in _SPECIAL and not p.name.startswith("ppc_")),
                      key=lambda p: (order.get(p.stem, len(order)), p.name))
    if pictures:
        parts.append("<h3>Pictures</h3>")
        parts += [_figure(p, _caption(p.name)) for p in pictures]
    parts.append("<h3>Model graph</h3>")
    if (plots / "model_graph.svg").is_file():
        parts.append(_figure(plots / "model_graph.svg", "pyro.render_model of the model (sites, distributions, plates)"))
    elif (plots / "model_graph.txt").is_file():
        parts.append(f"<pre>{html.escape((plots / 'model_graph.txt').read_text(encoding='utf-8'))}</pre>")
    else:
        parts.append('<p class="muted">not available for this run</p>')
    ppc = sorted(plots.glob("ppc_statistics.png")) + sorted(plots.glob("ppc_posterior_predictive_*.png"))
    parts.append("<h3>Posterior predictive check</h3>")
    parts += [_figure(p, _caption(p.name)) for p in ppc] or ['<p class="muted">not available for this run</p>']
    parts.append(f'<p class="muted">run folder: <code>{html.escape(str(shown))}</code></p></section>')
    return "\n".join(parts), title


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
        Run folders from ``bayesgen fit`` / :func:`bayesgen.specs.run_spec`.
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
        ``path`` exists and ``overwrite`` is False, or is a folder.
    bayesgen.io.WriteError
        The page could not be written; nothing was written in its place.

    Examples
    --------
    >>> from bayesgen.report import write_report
    >>> write_report(["runs/ab_resume_callbacks"], "report.html")  # doctest: +SKIP
    """
    from bayesgen.io import check_target, write_text
    from bayesgen.specs import package_versions

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; name the HTML file to write")
    check_target(path, overwrite=overwrite)
    if locations is not None and len(locations) != len(folders):
        raise ValueError(f"locations names {len(locations)} folders, folders holds {len(folders)}")
    sections, contents = [], []
    for i, folder in enumerate(folders):
        anchor = f"model-{i}"
        body, name = _section(Path(folder), anchor, Path(locations[i] if locations is not None else folder))
        sections.append(body)
        contents.append(f'<a href="#{anchor}">{html.escape(name)}</a>')
    for j, (name, message) in enumerate((errors or {}).items()):
        anchor = f"failed-{j}"
        sections.append(f'<section class="model" id="{anchor}"><h2>{html.escape(name)}</h2>'
                        f'<p class="error">this run failed: {html.escape(message)}</p></section>')
        contents.append(f'<a href="#{anchor}">{html.escape(name)} (failed)</a>')
    graph_note = ""
    if any(not (Path(f) / "plots" / "model_graph.svg").is_file() for f in folders):
        graph_note = ('\n<p class="muted">Model graphs are shown as text: drawing them needs Graphviz (the '
                      '<code>dot</code> program and the <code>graphviz</code> Python package).</p>')
    versions = package_versions()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>{graph_note}
<p>written {stamp} · bayesgen {versions['bayesgen']} · torch {versions['torch']} · Pyro {versions['pyro']} ·
ArviZ {versions['arviz']} · Python {versions['python']}</p></header>
<nav>{''.join(contents)}</nav>
<main>
{''.join(sections)}
</main>
{_CHECK_SCRIPT}
</body></html>
"""
    write_text(path, page, overwrite=overwrite)
    return path

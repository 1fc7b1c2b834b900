"""The tour (smoke mode), its HTML report read by a headless browser, and `bayesgen reproduce`."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
from browser import headless

from bayesgen.registry import MODELS
from bayesgen.tour import TOUR_SPECS

ROOT = Path(__file__).resolve().parents[1]


def bayesgen(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bayesgen", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    proc = bayesgen("tour", "--smoke", "--quiet", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_tour_fits_every_model_and_writes_run_folders(tour):
    out, proc = tour
    for i, name in enumerate(TOUR_SPECS):
        assert f"[{i + 1}/{len(TOUR_SPECS)}] {name}" in proc.stdout
        folder = out / name
        for f in (
            "spec.toml",
            "run.json",
            "versions.json",
            "summary.csv",
            "posterior.nc",
            "diagnostics.json",
            "plots/loss.png",
        ):
            assert (folder / f).is_file(), f"{name}: {f} missing"
        run = json.loads((folder / "run.json").read_text())
        assert run["name"] == name and run["data_checksum"].startswith("sha256:") and run["seed"] == 0
        assert len(pd.read_csv(folder / "summary.csv", index_col=0)) > 0
        # The draws are stored compressed (lossless zlib), replicated data included.
        with netCDF4.Dataset(folder / "posterior.nc") as nc:
            stored = [
                v for g in nc.groups.values() for v in g.variables.values() if getattr(v.dtype, "kind", "O") in "iuf"
            ]
            assert stored and all(v.filters()["zlib"] for v in stored), name
    anomaly = pd.read_csv(out / "anomaly_breast_cancer" / "report.csv", index_col=0)["value"]
    share = anomaly["labelled_anomaly_share"]  # 212 malignant of 569
    assert share == pytest.approx(212 / 569)
    assert anomaly["brier_constant_baseline"] == pytest.approx(share * (1 - share))
    # The report reads the Brier score against that baseline, whichever side of it the fit lands.
    better = anomaly["brier_probability"] < anomaly["brier_constant_baseline"]
    sentence = "beats predicting the labelled share" if better else "no better than predicting the labelled share"
    assert sentence in (out / "report.html").read_text()
    record = json.loads((out / "tour.json").read_text())
    assert record["errors"] == {} and set(record["folders"]) == set(TOUR_SPECS) and record["smoke"] is True


def test_report_is_self_contained_with_a_section_per_model(tour):
    out, _ = tour
    page = (out / "report.html").read_text()
    assert page.count('<section class="model"') == len(TOUR_SPECS)
    for entry in MODELS.values():
        assert html.escape(entry.title) in page
    for heading in ("Data", "Loss curve", "ArviZ summary", "Pictures", "Model graph", "Posterior predictive check"):
        assert page.count(f"<h3>{heading}</h3>") == len(TOUR_SPECS), heading
    sources = re.findall(r'<img src="([^"]+)"', page)
    graphs = page.count("<figcaption>The model drawn by pyro.render_model")
    # Each model's graph is a picture with Graphviz and a text rendering without it (optional system tool).
    assert graphs + page.count("<pre>") == len(TOUR_SPECS)
    assert graphs == (len(TOUR_SPECS) if shutil.which("dot") else 0)
    # Without Graphviz the page says so once, in the header's own (light) text colour.
    assert page.count("Model graphs are shown as text") == (graphs == 0)
    assert ("<p>Model graphs are shown as text" in page) == (graphs == 0)
    for name in TOUR_SPECS:
        check_model_graph(page, out / name, graphs > 0)
    assert page.count("SVI vs exact posterior of") >= 2  # the A/B rates and the generator's class weights
    assert re.search(r"memorization_passed</th>\s*<td>(passed|failed)</td>", page)
    assert len(sources) >= 3 * len(TOUR_SPECS) + graphs
    assert all(s.startswith("data:image/") for s in sources)  # nothing to fetch: it opens offline, mailed or archived
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)
    check_report_page(page, len(TOUR_SPECS))
    # The A/B table's last column is on the page: the wide, two-row table is shown turned.
    assert re.search(r"<th>lift_94%_upper</th>\s*<td>", page)
    # The conditional VAE's latent plot says why its classes mix.
    assert "the decoder is given the label" in page
    # Its interpolation runs between two images of one class, decoded with their label, and says so.
    assert "both images are of the same class and every frame is decoded with that label" in page
    # Each predictive check is the model's own statistics (labelled, one p-value each), not ArviZ's pooled density.
    assert page.count("<figcaption>Posterior predictive check of the statistics") == len(TOUR_SPECS)
    assert "plot_ppc_dist" not in page
    # The generator's and the anomaly detector's parameters are on their standardised scale, and the page says so.
    assert page.count("on the standardised scale the model fits") == 2
    # Each run says how big its draws are and how to get more.
    held = re.findall(r"compressed netCDF\) holds (\d+) draws of every parameter", page)
    assert len(held) == len(TOUR_SPECS) and ".to_arviz(num_samples)" in page
    with netCDF4.Dataset(out / "gaussian_digits" / "posterior.nc") as nc:
        assert str(nc["posterior"].dimensions["chain"].size * nc["posterior"].dimensions["draw"].size) in held


# One line per sample site, as bayesgen.plots.describe_model writes it.
_SITE_LINE = re.compile(
    r"^(\w+) ~ \w+ \(batch \([\d, ]*\), event \([\d, ]*\)\)(?: in plates [\w, ]+)?: "
    r"(latent|observed|deterministic)$"
)


def check_model_graph(page: str, folder: Path, drawn: bool) -> None:
    """The run folder holds the model's text rendering (latent and observed sites), and the report's section of the
    run shows the model: as a picture naming every site (``drawn``, with Graphviz) or as that text."""
    text = (folder / "plots" / "model_graph.txt").read_text(encoding="utf-8")
    lines = [_SITE_LINE.match(line) for line in text.strip().splitlines()]
    assert lines and all(lines), text
    roles = {m.group(1): m.group(2) for m in lines}
    assert {"latent", "observed"} <= set(roles.values()) <= {"latent", "observed", "deterministic"}, text
    # Distributions are named, not Pyro's wrappers around them.
    assert not re.search(r"~ (Independent|ExpandedDistribution|MaskedDistribution) ", text), text
    section = re.search(
        rf'<section class="model"[^>]*>\s*<h2>[^<]* — {re.escape(folder.name)}</h2>.*?</section>', page, flags=re.S
    )
    assert section, folder.name
    graph = section.group(0).split("<h3>Model graph</h3>", 1)[1].split("<h3>", 1)[0]
    if drawn:
        svg = base64.b64decode(re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', graph).group(1)).decode()
        assert all(f"<title>{site}</title>" in svg for site in roles), (folder.name, sorted(roles))
    else:
        assert f"<pre>{html.escape(text)}</pre>" in graph, folder.name


# ------------------------------------------------------------- reading the page
_VOID = {"img", "br", "meta", "wbr", "hr", "input", "link"}


class _Elements(HTMLParser):
    """Every element of a page as (tag, attributes, text content with its descendants', ancestors' tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[list] = []
        self.found: list[tuple[str, dict, str, tuple[str, ...]]] = []

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.stack.append([tag, dict(attrs), []])

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        while self.stack:
            el = self.stack.pop()
            text = "".join(el[2])
            if self.stack:
                self.stack[-1][2].append(text)
            ancestors = tuple(f"{a[0]}.{a[1].get('class', '')}" for a in self.stack)
            self.found.append((el[0], el[1], text, ancestors))
            if el[0] == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2].append(data)


def elements(page: str) -> list[tuple[str, dict, str, tuple[str, ...]]]:
    parser = _Elements()
    parser.feed(page)
    return parser.found


def with_class(page: str, cls: str) -> list[tuple[str, dict, str, tuple[str, ...]]]:
    return [e for e in elements(page) if cls in e[1].get("class", "").split()]


def table_cells(table_html: str) -> list[list[str]]:
    rows = re.findall(r"<tr.*?</tr>", table_html, flags=re.S)
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, flags=re.S)]
        for r in rows
    ]


def estimated_width(rows: list[list[str]]) -> int:
    """Pixels a table of unbreakable cells needs: 13 px text averages under 7 px a character, plus padding."""
    n = max(len(r) for r in rows)
    return sum(max((len(r[i]) for r in rows if i < len(r)), default=0) * 7 + 17 for i in range(n))


# The page's <main> is at most 1200 px wide with 32 px padding each side: what a 1400 px window shows.
PAGE_WIDTH = 1200 - 2 * 32


def check_verdict_table(page: str, runs: int) -> list[list[str]]:
    """The verdict table leads the page: one row per run, three coloured verdicts each, linking into the page.

    Returns the colour classes of each row's cells.
    """
    assert page.index('<table class="verdicts">') < page.index('<section class="model"')
    table = re.search(r'<table class="verdicts">.*?</table>', page, flags=re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)
    assert len(rows) == runs
    ids = set(re.findall(r'id="([^"]+)"', page))
    classes = []
    for row in rows:
        cells = re.findall(r'<td class="(ok|caution|fail)"[^>]*><a href="#([^"]+)">', row)
        assert len(cells) == 3 or (len(cells) == 1 and 'colspan="3"' in row), row
        assert all(target in ids for _, target in cells)
        classes.append([cls for cls, _ in cells])
    return classes


def check_green_never_unreliable(page: str) -> None:
    for tag, _, text, _ in with_class(page, "ok"):
        assert "unreliable" not in text.lower(), (tag, text)


def check_advice(page: str) -> None:
    """Every amber or red box (outside the verdict table) says why and what to do."""
    boxes = [
        e
        for e in with_class(page, "caution") + with_class(page, "fail")
        if not any(a.startswith("table") for a in e[3])
    ]
    for _, _, text, _ in boxes:
        assert "Why and what to do:" in text or "failed" in text or text.startswith("Warning:"), text
    return boxes


def check_tables(page: str) -> None:
    """Every table scrolls inside the page, and none needs more than the page's width."""
    for match in re.finditer(r"<table", page):
        assert page[: match.start()].rstrip().endswith('<div class="scroll">')
    for table_html in re.findall(r'<table class="dataframe">.*?</table>', page, flags=re.S):
        assert estimated_width(table_cells(table_html)) <= PAGE_WIDTH, table_cells(table_html)[:2]


def check_captions(page: str) -> list[str]:
    """Every picture has a caption in words (a sentence), not its file's stem."""
    captions = [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S)]
    for caption in captions:
        assert len(caption.split()) >= 5 and caption.endswith("."), caption
    return captions


def check_report_page(page: str, runs: int) -> None:
    """What every report promises, whatever its runs."""
    check_verdict_table(page, runs)
    check_green_never_unreliable(page)
    check_advice(page)
    check_tables(page)
    check_captions(page)


@pytest.mark.browser
def test_report_renders_every_section_and_picture_in_a_browser(tour):
    out, _ = tour
    page = out / "report.html"
    # The page's own script counts, after load, the sections and the pictures that decoded.
    proc = headless("--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    n_img = page.read_text().count("<img ")
    assert attrs == {"images": str(n_img), "broken-images": "0", "sections": str(len(TOUR_SPECS))}


@pytest.mark.browser
def test_report_screenshot_shows_the_header_and_the_first_loss_curve(tour, tmp_path):
    from PIL import Image

    out, _ = tour
    shot = tmp_path / "shot.png"
    proc = headless("--window-size=1280,2000", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1280)
    # The header band is the report's navy (#1f3b5c) across the page's top.
    band = pixels[5:60, :, :]
    assert (np.abs(band - [0x1F, 0x3B, 0x5C]).sum(axis=2) < 20).mean() > 0.8
    # The first section's loss curve decoded and was drawn: its moving average, matplotlib's orange
    # (#ff7f0e), appears in the first screen (no other element of the page is orange), and the page is not blank.
    orange = (np.abs(pixels - [0xFF, 0x7F, 0x0E]).sum(axis=2) < 40).sum()
    assert orange > 200
    assert (pixels.sum(axis=2) < 600).mean() > 0.05


def test_reproduce_matches_a_run_and_catches_a_changed_one(tour, tmp_path, capsys):
    out, _ = tour
    original = tmp_path / "ab"
    shutil.copytree(out / "ab_resume_callbacks", original)
    proc = bayesgen("reproduce", str(original), "--quiet", "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REPRODUCED" in proc.stdout and "data checksum matches" in proc.stdout
    table = pd.read_csv(tmp_path / "again" / "reproduce.csv", index_col=0)
    assert "rate[white] mean" in table.index and table["ok"].all()
    assert "report: white prob_best" in table.index  # the model's own figures are compared too
    # Shift one posterior mean by a posterior sd, as a different result would: caught, exit status 1.
    summary = pd.read_csv(original / "summary.csv", index_col=0)
    summary.iloc[0, summary.columns.get_loc("mean")] += summary["sd"].iloc[0]
    summary.to_csv(original / "summary.csv")
    run = json.loads((original / "run.json").read_text())
    run["data_checksum"] = "sha256:0000"
    (original / "run.json").write_text(json.dumps(run))
    bad = bayesgen("reproduce", str(tmp_path))
    assert bad.returncode == 2 and "not a complete run folder" in bad.stderr
    from bayesgen.cli import main  # the command's further cases: in this process, without a subprocess's imports

    capsys.readouterr()
    status = main(["reproduce", str(original), "--quiet", "--out", str(tmp_path / "third")])
    stdout = capsys.readouterr().out
    assert status == 1
    assert "NOT REPRODUCED" in stdout and "DIFFERS" in stdout and "rate[white] mean" in stdout
    # The shifted mean is the figure that differs, not only the data checksum.
    third = pd.read_csv(tmp_path / "third" / "reproduce.csv", index_col=0)
    assert not third.loc["rate[white] mean", "ok"] and third.drop(index="rate[white] mean")["ok"].all()
    status = main(["reproduce", str(original), "--out", str(original)])
    assert status == 2 and "own folder" in capsys.readouterr().err
    for option, value in (("--tolerance", "-1"), ("--rtol", "nan")):
        status = main(["reproduce", str(original), option, value, "--out", str(tmp_path / "never")])
        assert status == 2 and f"{option[2:]} must be a finite number >= 0" in capsys.readouterr().err
    status = main(["diagnose", str(original), "--num-samples", "0"])
    assert status == 2 and "--num-samples must be an integer >= 2" in capsys.readouterr().err


def test_reproduce_a_neural_run_on_the_cpu(tour, tmp_path):
    out, _ = tour
    from bayesgen.runs.reproduce import reproduce

    result = reproduce(out / "vae_digits", tmp_path / "vae")
    assert result.match, result.table[~result.table["ok"]]
    assert result.data_match and len(result.table) > 100


def test_tour_refuses_an_unavailable_device_up_front(tmp_path, capsys):
    import torch

    from bayesgen.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    status = main(["tour", "--smoke", "--device", "cuda", "--out", str(tmp_path)])
    stdout, stderr = capsys.readouterr()
    assert status == 2 and "cuda" in stderr.lower() and "[1/5]" not in stdout


def test_tour_names_an_unknown_spec_up_front(tmp_path, capsys):
    from bayesgen.cli import main

    status = main(["tour", "--smoke", "--only", "nope", "--out", str(tmp_path)])
    stderr = capsys.readouterr().err
    assert status == 2 and "no spec named ['nope']" in stderr and "ab_resume_callbacks" in stderr


@pytest.mark.cuda
def test_tour_runs_on_the_gpu(tmp_path):
    proc = bayesgen("tour", "--smoke", "--quiet", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in TOUR_SPECS:
        assert json.loads((tmp_path / name / "run.json").read_text())["device"].startswith("cuda")


def test_every_smoke_spec_is_a_valid_spec(tmp_path):
    # A run folder's spec.toml is read back by `bayesgen reproduce`: the tour's cuts (each model's own report keys
    # included) must pass load_spec.
    import tomli_w

    from bayesgen.runs.spec import load_spec
    from bayesgen.tour import smoke_spec, specs_dir

    for name in TOUR_SPECS:
        spec = smoke_spec(load_spec(specs_dir() / f"{name}.toml"))
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps({k: v for k, v in spec.items() if not k.startswith("_")}))
        again = load_spec(path)
        assert again["report"] == spec["report"] and again["run"]["model"] == spec["run"]["model"]


# ------------------------------------------------ the report of hand-made run folders
def _run_folder(
    folder: Path,
    *,
    model: str,
    diag: dict,
    conditional: bool = False,
    report: pd.DataFrame | None = None,
    pictures: tuple[str, ...] = (),
) -> Path:
    """A run folder as `bayesgen fit` leaves it, with only what the report reads (no fit: milliseconds)."""
    from matplotlib.figure import Figure

    (folder / "plots").mkdir(parents=True)
    (folder / "run.json").write_text(
        json.dumps(
            {
                "name": folder.name,
                "model": model,
                "seed": 0,
                "num_steps": 10,
                "fit_seconds": 0.1,
                "device": "cpu",
                "data_checksum": "sha256:0",
            }
        )
    )
    (folder / "spec.toml").write_text(
        f'[run]\nname = "{folder.name}"\nmodel = "{model}"\n[data]\nsource = "x"\n'
        f"[model]\nconditional = {str(conditional).lower()}\n"
    )
    (folder / "diagnostics.json").write_text(json.dumps(diag))
    if report is not None:
        report.to_csv(folder / "report.csv")
    for name in pictures:
        fig = Figure(figsize=(1, 1))
        fig.add_subplot().plot([0, 1])
        fig.savefig(folder / "plots" / f"{name}.png", dpi=20)
    return folder


CONVERGED = {"verdict": "converged", "message": "optimisation converged: the runner's convergence check passed"}


@pytest.fixture
def handmade(tmp_path):
    """Three run folders (an A/B test that passes everything; a conditional VAE as the full tour writes it, whose
    joint k-hat says "unreliable" but is no verdict; an anomaly run that fails everything), a failed run, and their
    report."""
    from bayesgen.report import write_report

    ab_columns = [
        "successes",
        "trials",
        "observed_rate",
        "rate_mean",
        "rate_sd",
        "rate_94%_lower",
        "rate_94%_upper",
        "prob_best",
        "expected_loss",
        "lift_mean",
        "lift_94%_lower",
        "lift_94%_upper",
    ]
    ab_table = pd.DataFrame(
        [[235, 2435, *np.linspace(0.01, 0.9, 10)], [157, 2435, *np.linspace(0.02, 0.8, 10)]],
        columns=ab_columns,
        index=pd.Index(["white", "black"], name="variant"),
    )
    ab = _run_folder(
        tmp_path / "ab",
        model="ab_test",
        report=ab_table,
        pictures=("posterior",),
        diag={
            "convergence": CONVERGED,
            "warnings": [],
            "psis": {"khat": 0.1, "verdict": "good", "ess": 950.0, "num_samples": 1000, "message": "PSIS k-hat = 0.10"},
            "reference": {"agree": True, "checked": ["rate"], "message": "SVI vs exact posterior: agree"},
            "predictive": {"passed": True, "statistics": 2, "failed": [], "message": "posterior predictive check: ok"},
        },
    )
    vae = _run_folder(
        tmp_path / "vae",
        model="vae",
        conditional=True,
        pictures=("reconstructions", "latent", "interpolation", "my_extra_plot"),
        diag={
            "convergence": CONVERGED,
            "warnings": [],
            "psis": {
                "khat": 3.1,
                "verdict": "unreliable",
                "ess": 1.0,
                "num_samples": 200,
                "scope": "joint",
                "message": "joint over all checked rows (grows with their number): PSIS k-hat = 3.10 (unreliable: "
                "the guide misses posterior mass; do not trust its uncertainty; 200 draws, ESS 1)",
            },
            "psis_rows": {
                "verdict": "good",
                "good": 1.0,
                "usable": 0.0,
                "unreliable": 0.0,
                "num_rows": 64,
                "message": "per-row PSIS k-hat over 64 rows (200 draws each): median 0.10, 90th percentile "
                "0.30; share of rows with k-hat < 0.5: 100%, 0.5–0.7: 0%, > 0.7: 0% (verdict: good)",
            },
            "reference": {"agree": True, "checked": [], "message": "no global site has a closed-form posterior"},
            "predictive": {"passed": True, "statistics": 2, "failed": [], "message": "posterior predictive check: ok"},
        },
    )
    bad_rows = "PSIS k-hat = 43.54 (unreliable: the guide misses posterior mass; do not trust its uncertainty)"
    anomaly = _run_folder(
        tmp_path / "anomaly",
        model="anomaly",
        pictures=("scores",),
        diag={
            "convergence": {"verdict": "not finite", "message": "optimisation failed: the loss is NaN"},
            "psis": {"khat": 43.5, "verdict": "unreliable", "ess": 1.0, "num_samples": 200, "message": bad_rows},
            "predictive": {
                "passed": False,
                "statistics": 62,
                "failed": ["sd[x1]"],
                "message": "posterior predictive check of 62 statistics: 1 outside",
            },
            "warnings": [bad_rows, "posterior predictive check of 62 statistics: 1 outside", "a warning of its own"],
        },
    )
    # The VAE's model as a run without Graphviz leaves it: the text rendering, no picture.
    (vae / "plots" / "model_graph.txt").write_text(
        "z ~ Normal (batch (64,), event (8,)) in plates row: latent\n"
        "x ~ Bernoulli (batch (64,), event (64,)) in plates row: observed\n"
    )
    path = write_report([ab, vae, anomaly], tmp_path / "report.html", errors={"topic_python_help": "boom"})
    return path.read_text()


def test_report_leads_with_a_verdict_table_coloured_by_the_diagnostics(handmade):
    classes = check_verdict_table(handmade, 4)
    assert classes == [
        ["ok", "ok", "ok"],  # A/B: converged, k-hat good and exact posterior agree, PPC passed
        ["ok", "ok", "ok"],  # VAE: the joint k-hat is no verdict; the per-row one is good
        ["fail", "fail", "fail"],  # anomaly: NaN loss, k-hat unreliable, PPC failed
        ["fail"],
    ]  # the run that failed
    table = re.search(r'<table class="verdicts">.*?</table>', handmade, flags=re.S).group(0)
    for words in (
        "optimisation",
        "posterior quality",
        "predictive check",
        "NaN or infinite loss",
        "k-hat 43.50 unreliable",
        "failed: 1 of 62 statistics",
        "the run failed: boom",
    ):
        assert words in table


def test_report_green_boxes_never_say_unreliable(handmade):
    check_green_never_unreliable(handmade)
    assert with_class(handmade, "ok")  # there are green boxes to check
    # The VAE's joint k-hat is a neutral note; its passing per-row box names "unreliable" (0%), so it is amber.
    notes = [text for _, _, text, _ in with_class(handmade, "note")]
    assert any(text.startswith("PSIS k-hat: joint over all checked rows") for text in notes)


def test_report_warnings_say_why_and_what_to_do(handmade):
    boxes = check_advice(handmade)
    texts = [text for _, _, text, _ in boxes]
    assert any("Why and what to do:" in t and "lower learning_rate" in t for t in texts)  # the NaN loss
    assert any("Why and what to do:" in t and "--nuts" in t for t in texts)  # the unreliable k-hat
    # A warning that no check accounts for is shown once, on its own.
    assert sum("a warning of its own" in t for t in texts) == 1
    assert sum(bad in t for t in texts for bad in ("PSIS k-hat = 43.54",)) == 1


def test_report_tables_fit_the_page_or_scroll(handmade):
    check_tables(handmade)
    # The A/B table's last column, lift_94%_upper, is on the page: the wide two-row table is shown turned.
    assert re.search(r"<th>lift_94%_upper</th>\s*<td>", handmade)


def test_report_shows_a_model_as_text_without_its_picture(handmade, tmp_path):
    check_model_graph(handmade, tmp_path / "vae", drawn=False)
    assert handmade.count("<pre>") == 1  # the other runs have neither picture nor text: "not available"
    assert handmade.count('<h3>Model graph</h3>\n<p class="muted">not available for this run</p>') == 2


def test_report_captions_are_sentences_not_file_stems(handmade):
    captions = check_captions(handmade)
    for stem in ("posterior", "reconstructions", "latent", "interpolation", "scores", "my extra plot"):
        assert stem not in captions
    latent = next(c for c in captions if c.startswith("Posterior means of the latent code"))
    assert "the decoder is given the label" in latent  # why a conditional VAE's classes mix
    assert any("'my extra plot'" in c and "plots/my_extra_plot.png" in c for c in captions)  # the fallback

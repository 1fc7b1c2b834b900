"""The documentation: CLI help text, and the built site (`make docs`) read as files and by a browser.

The site tests read ``docs/_build/html``; CI builds it (``DOCS_SMOKE=1 make docs``) before the
tests, and without a build they skip, saying how to make one.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from browser import headless

from bayesgen.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
TUTORIALS = sorted(p.stem for p in (ROOT / "tutorials").glob("*.py"))


def _commands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_cli_option_has_help_text():
    parser = build_parser()
    missing = []
    for name, sub in [("bayesgen", parser), *_commands(parser)]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    lines = text.count("\n")
    assert lines <= 250, f"README.md has {lines} lines; the front page stays under 250 (details go to docs/)"
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path = target.split("#", 1)[0]
        if path and not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README links to files that do not exist: {broken}"


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.skip("the docs are not built: DOCS_SMOKE=1 make docs")
    return SITE


def test_every_tutorial_is_an_executed_page_with_its_figures(site):
    for stem in TUTORIALS:
        page = site / "gallery" / f"{stem}.html"
        assert page.is_file(), f"no gallery page for tutorials/{stem}.py"
        text = page.read_text()
        assert "cell_output" in text, f"{stem}: the page holds no executed output"
        figures = re.findall(r'<img[^>]+src="(?!data:)([^"]+\.png)"', text)
        assert figures, f"{stem}: no figure on the page"
        for src in figures:
            assert (page.parent / src).is_file(), f"{stem}: figure {src} is missing"
        assert "Traceback" not in text, f"{stem}: a cell raised"


def test_cli_reference_lists_every_command_and_option_of_the_parser(site):
    text = (site / "cli.html").read_text()
    commands = list(_commands(build_parser()))
    starts = []
    for name, _ in commands:
        start = text.find(f'<section id="bayesgen-{name}">')
        assert start >= 0, f"the CLI reference has no section for 'bayesgen {name}'"
        starts.append(start)
    bounds = sorted(starts) + [len(text)]
    for (name, sub), start in zip(commands, starts, strict=True):
        section = text[start : bounds[bounds.index(start) + 1]]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # -h/--help is on every command; the reference leaves it out
            for flag in action.option_strings:
                assert flag in section, f"bayesgen {name} {flag} is missing from its CLI reference section"


def test_api_reference_documents_every_public_name(site):
    import bayesgen

    pages = "".join(p.read_text() for p in (site / "api").glob("*.html"))
    for name in bayesgen.__all__:
        if name.startswith("__"):
            continue
        assert re.search(rf'id="bayesgen\.[\w.]*\b{name}"', pages), f"{name} has no API entry"


def test_the_site_fetches_nothing_from_the_network(site):
    remote = re.compile(r'<(?:script|img|iframe)[^>]+src="(?:https?:)?//|<link[^>]+href="(?:https?:)?//[^"]*"[^>]*>')
    offenders = []
    for path in site.rglob("*.html"):
        for tag in remote.findall(path.read_text(errors="replace")):
            if "<link" in tag and not re.search(r'rel="(?:stylesheet|preload|modulepreload|icon)"', tag):
                continue  # a plain hyperlink-like <link> (canonical, search) loads nothing
            offenders.append(f"{path.relative_to(site)}: {tag[:80]}")
    for path in site.rglob("*.css"):
        offenders += [
            f"{path.relative_to(site)}: {m}"
            for m in re.findall(r"url\(['\"]?(?:https?:)?//[^)]*\)", path.read_text(errors="replace"))
        ]
    assert not offenders, offenders[:10]


@pytest.mark.browser
@pytest.mark.parametrize("page", ["index.html", "gallery/vae.html"])
def test_pages_render_with_their_figures_in_a_browser_without_network(site, page):
    # The resolver maps every host to nowhere: a page that needed the network would lose pictures.
    proc = headless(
        "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--dump-dom", (site / page).as_uri()
    )
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    assert attrs.get("broken-images") == "0", attrs
    if page.startswith("gallery/"):
        assert int(attrs["output-images"]) >= 3, attrs  # samples, reconstructions, latent space, ...

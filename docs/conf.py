"""Sphinx configuration for bayesgen's documentation (``make docs``).

The tutorials in ``../tutorials`` (jupytext percent scripts) are the single source of the
example gallery: they are copied into ``gallery/`` at build time and executed by MyST-NB.
``DOCS_SMOKE=1`` executes them in their fast smoke mode (``BAYESGEN_SMOKE=1``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import bayesgen  # noqa: E402

project = "bayesgen"
author = "bayesgen developers"
copyright = "2026, bayesgen developers"
release = version = bayesgen.__version__

# The tutorials run in the kernel MyST-NB starts, which inherits this environment: figures go
# through bayesgen.plots.show_figure (inline PNGs), so pyplot must not also show them.
os.environ["MPLBACKEND"] = "Agg"
if os.environ.get("DOCS_SMOKE") == "1":
    os.environ["BAYESGEN_SMOKE"] = "1"

GALLERY = HERE / "gallery"
if GALLERY.exists():
    shutil.rmtree(GALLERY)
GALLERY.mkdir()
for script in sorted((ROOT / "tutorials").glob("*.py")):
    shutil.copy2(script, GALLERY / script.name)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinxarg.ext",
]

exclude_patterns = ["_build", "conf.py", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".py": "myst-nb", ".rst": "restructuredtext"}
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "force"
nb_execution_timeout = 1800
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence"]  # no math: MathJax would be fetched from a CDN
myst_heading_anchors = 3

autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"bayesgen {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = ["_static"]
html_js_files = ["page-check.js"]


def _docstring_to_rst(app, what, name, obj, options, lines):
    """Two plain-text habits of the docstrings, made valid reStructuredText for the pages.

    A module docstring's ``References`` heading becomes a rubric (section titles inside
    docstrings would collide across pages), and ``|x|`` meaning an absolute value is
    escaped (reStructuredText reads it as a substitution).
    """
    import re

    for i, line in enumerate(lines):
        if (
            what == "module"
            and line.strip() == "References"
            and i + 1 < len(lines)
            and set(lines[i + 1].strip()) == {"-"}
        ):
            lines[i], lines[i + 1] = ".. rubric:: References", ""
        elif not line.lstrip().startswith(("|", "+")):
            lines[i] = re.sub(r"(?<![\w`\\])\|([^|`\n]+?)\|(?![\w`])", r"\\|\1\\|", line)


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_to_rst)

"""Sphinx configuration: Markdown pages (myst-parser), the API reference from the docstrings
(autodoc), the figures of a bundled run (``make_figures.py``, run when they are missing)."""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent / "plugin"), str(DOCS)]

from make_figures import FIGURES, OUT, main  # noqa: E402

# the figures of a bundled run: drawn when missing (a fresh clone, CI), ~15 s on one core
if not all((OUT / name).is_file() for name in FIGURES):
    main()

project = "gradood"
author = "the gradood authors"
copyright = "the gradood authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# pytorch-ood's docstrings link into its own site
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = "gradood"


# Sphinx reports a broken Python cross-reference only in nitpicky mode, which also reports every
# torch, pandas and pytorch-ood type of the docstrings (no intersphinx: CI has no network).
# A page's own reference to a gradood name must resolve, though: warn (-W makes it an error).
_log = logging.getLogger(__name__)


def _broken_own_reference(app, env, node, contnode):
    target = node.get("reftarget", "")
    source = str(node.source or "")
    if node.get("refdomain") == "py" and target.startswith("gradood") and source.endswith(".md"):
        _log.warning("broken cross-reference to %s", target, location=node)


def setup(app):
    app.connect("missing-reference", _broken_own_reference)

"""Sphinx configuration: Markdown pages (myst-parser), the API reference from the docstrings
(autodoc), the figures of a bundled run (``make_figures.py``, run when they are missing)."""

from __future__ import annotations

import sys
from pathlib import Path

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
# _incoming: notes from other branches, folded in by hand; never built
exclude_patterns = ["_build", "_incoming", "_generated"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# pytorch-ood's docstrings link into its own site
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = "gradood"

"""Sphinx configuration: Markdown pages (myst-parser), the API reference from the docstrings
(autodoc), the figures of a bundled run (``make_figures.py``, run when they are missing)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent / "plugin"), str(DOCS)]

from make_figures import FIGURES, OUT, main  # noqa: E402
from offline import check_site  # noqa: E402

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
    # MathJax 3 copied into the build (_static/mathjax) and served from there: math renders
    # without a network; check_site below fails a build whose pages load from one
    "sphinx-mathjax-offline",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# the class docstring and __init__'s (where the parameters are documented)
autoclass_content = "both"
autodoc_typehints = "description"
# pytorch-ood's docstrings link into its own site
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}

# every cross-reference must resolve: a broken one is a warning (an error under -W)
nitpicky = True
# No intersphinx: CI has no network (only package registries), so the types of other projects
# in the docstrings and type hints cannot resolve. One entry per external top-level package;
# never gradood's own names (those must resolve: fix the docstring or document the target).
nitpick_ignore_regex = [
    (r"py:.*", r"torch(\..*)?"),
    (r"py:.*", r"torchvision(\..*)?"),
    (r"py:.*", r"pytorch_ood(\..*)?"),
    (r"py:.*", r"pandas(\..*)?"),
    (r"py:.*", r"filelock(\..*)?"),
    (r"py:.*", r"pytest(\..*)?"),
    (r"py:.*", r"_pytest(\..*)?"),  # where pytest's public classes are defined
    # the standard library
    (r"py:.*", r"abc(\..*)?"),
    (r"py:.*", r"collections(\..*)?"),
    (r"py:.*", r"enum(\..*)?"),
    (r"py:.*", r"os(\..*)?"),
    (r"py:.*", r"pathlib(\..*)?"),
    (r"py:.*", r"types(\..*)?"),
]
# The parameters of a class are its __init__'s, whose hints autodoc leaves as written under
# `from __future__ import annotations` (it evaluates the class's own annotations only, and
# autodoc_type_aliases does not reach them): these three are torch.nn.Module, pathlib.Path and
# os.PathLike, spelled as the modules import them.
nitpick_ignore = [
    ("py:class", "nn.Module"),
    ("py:class", "Path"),
    ("py:class", "PathLike"),
]

html_theme = "furo"
html_title = "gradood"
html_static_path = ["_static"]
html_css_files = ["tables.css"]


def _public_bases(app, name, obj, options, bases):
    """A private base class of gradood (``_CifarProtocol``, ``_GradNormFactor``) is not
    documented, so "Bases:" names its public bases instead (``GradNormProtocol``)."""
    bases[:] = _without_private(bases)


def _without_private(bases):
    shown = []
    for base in bases:
        private = getattr(base, "__name__", "").startswith("_")
        if private and getattr(base, "__module__", "").startswith("gradood."):
            found = _without_private(list(base.__bases__))
        else:
            found = [base]
        shown += [b for b in found if b not in shown]
    return shown


def _offline(app, exception):
    if exception is None and app.builder.format == "html":
        check_site(Path(app.outdir))


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("build-finished", _offline)

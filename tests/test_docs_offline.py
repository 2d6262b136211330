"""The docs render without a network: ``docs/offline.py`` finds every page that loads a script,
stylesheet, image or frame from another host, and ``docs/conf.py`` serves MathJax from the build
and fails a build whose pages load from the network."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _offline():
    spec = importlib.util.spec_from_file_location("docs_offline", DOCS / "offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


offline = _offline()


@pytest.mark.parametrize(
    "tag",
    [
        '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>',
        '<link rel="stylesheet" href="//fonts.example.org/a.css">',
        '<link rel="preload" as="font" href="HTTP://example.org/f.woff2">',
        '<img src="http://example.org/figure.png">',
        '<iframe src="https://example.org/embed"></iframe>',
    ],
)
def test_a_remote_resource_is_found(tag):
    assert len(offline.remote_assets(f"<html><head>{tag}</head><body></body></html>")) == 1


def test_local_resources_and_links_to_read_are_not():
    page = """<html><head>
    <script src="_static/mathjax/tex-chtml.js"></script>
    <link rel="stylesheet" href="_static/styles/furo.css">
    <link rel="canonical" href="https://example.org/page.html">
    </head><body><a href="https://github.com/kkirchheim/pytorch-ood">pytorch-ood</a>
    <img src="../_images/figure.png"></body></html>"""
    assert offline.remote_assets(page) == []


def test_check_site_names_each_page_and_what_it_loads(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text('<script src="_static/a.js"></script>')
    offline.check_site(tmp_path)  # nothing remote: no error
    (tmp_path / "api" / "detectors.html").write_text('<script src="https://cdn.x/m.js"></script>')
    with pytest.raises(RuntimeError, match=r"api/detectors.html: <script> https://cdn.x/m.js"):
        offline.check_site(tmp_path)


def _assigned(name: str):
    tree = ast.parse((DOCS / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"docs/conf.py assigns no {name}")


def test_the_build_serves_mathjax_itself_and_checks_its_pages():
    assert "sphinx-mathjax-offline" in _assigned("extensions")
    source = (DOCS / "conf.py").read_text(encoding="utf-8")
    assert 'app.connect("build-finished", _offline)' in source
    docs_extra = (DOCS.parent / "pyproject.toml").read_text(encoding="utf-8").split("docs = [")[1]
    assert '"sphinx-mathjax-offline>=' in docs_extra.split("]")[0]

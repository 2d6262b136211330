"""The built site renders without a network: no page loads a script, a stylesheet, an image or a
frame from another host (its math comes from the MathJax that ``sphinx-mathjax-offline`` copies
into ``_static``). ``conf.py`` runs :func:`check_site` when a build finishes."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

#: ``<link rel=...>`` values that name a related page rather than load a resource
_NAVIGATION_LINKS = {"alternate", "author", "canonical", "help", "index", "license", "next"}
_NAVIGATION_LINKS |= {"prev", "search", "top", "up"}
#: the attribute through which each tag loads what it shows
_LOADED_BY = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}


class _RemoteAssets(HTMLParser):
    """Collects the remote URLs that a page loads (anchors, which a reader follows, are not)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        url = values.get(_LOADED_BY.get(tag, "")) or ""
        rels = set((values.get("rel") or "").lower().split())
        if tag == "link" and rels and rels <= _NAVIGATION_LINKS:
            return
        if url.lower().startswith(("http:", "https:", "//")):
            self.found.append(f"<{tag}> {url}")


def remote_assets(html: str) -> list[str]:
    """``"<tag> url"`` for each remote resource that ``html`` loads."""
    parser = _RemoteAssets()
    parser.feed(html)
    parser.close()
    return parser.found


def check_site(outdir: Path) -> None:
    """Raise if a page under ``outdir`` loads anything from the network.

    :raises RuntimeError: naming each page and what it loads
    """
    problems = [
        f"{page.relative_to(outdir)}: {asset}"
        for page in sorted(outdir.rglob("*.html"))
        for asset in remote_assets(page.read_text(encoding="utf-8"))
    ]
    if problems:
        raise RuntimeError(
            "pages load from the network (the site must render offline; bundle it instead):\n  "
            + "\n  ".join(problems)
        )

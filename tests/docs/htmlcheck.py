"""A small checker of a built HTML site: every internal link, image and anchor must resolve.

No network: links with a scheme (``https:``, ``mailto:``) are not followed; relative links and
``#anchors`` are checked against the files and the ``id``/``name`` attributes of the site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)  #: (attribute, value)
    resources: list[str] = field(default_factory=list)  #: what a browser loads by itself (CSS, JS, images)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.page.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.page.ids.add(values["name"])
        if tag in ("a", "link") and values.get("href"):
            self.page.links.append(("href", values["href"]))
        if tag == "link" and values.get("href") and values.get("rel") not in ("canonical", "alternate"):
            self.page.resources.append(values["href"])
        if tag in ("img", "script", "source", "iframe") and values.get("src"):
            self.page.links.append(("src", values["src"]))
            self.page.resources.append(values["src"])


def parse(path: Path) -> Page:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return collector.page


def external_resources(site: Path) -> list[str]:
    """Stylesheets, scripts, images and frames that a page of ``site`` would load from the network."""
    found = []
    for path in site.rglob("*.html"):
        for url in parse(path).resources:
            parts = urlsplit(url)
            if parts.netloc or parts.scheme in ("http", "https"):
                found.append(f"{path.relative_to(site)}: {url}")
    return found


def broken_links(site: Path) -> tuple[list[str], int]:
    """(problems, number of internal links checked) over every .html file under ``site``."""
    pages = {p.resolve(): parse(p) for p in site.rglob("*.html")}
    problems: list[str] = []
    checked = 0
    for path, page in pages.items():
        for attr, link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue  # external (https:, mailto:, data:): not followed, no network
            checked += 1
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site.resolve())}: {attr}={link!r}"
            if not target.exists():
                problems.append(f"{where}: no file {target}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{where}: no anchor #{parts.fragment} in {target.name}")
    return problems, checked

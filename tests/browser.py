"""Headless Chromium helpers for the book's browser tests (Debian's ``chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([find_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def rendered_dom(page: Path, budget_ms: int = 20000) -> str:
    """The DOM after scripts ran (MathJax typesets asynchronously; virtual time lets it finish)."""
    out = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", page.resolve().as_uri()])
    if out.returncode != 0 or "<html" not in out.stdout:
        raise RuntimeError(f"chromium failed on {page}: {out.stderr[-2000:]}")
    return out.stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600, budget_ms: int = 20000) -> Path:
    out = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}",
                f"--screenshot={png}", page.resolve().as_uri()])
    if not png.exists():
        raise RuntimeError(f"chromium made no screenshot of {page}: {out.stderr[-2000:]}")
    return png


class _TextAndLinks(HTMLParser):
    """Visible text (outside script/style/code) and the href/src/id attributes of a page."""

    SKIP = {"script", "style", "code", "pre", "mjx-assistive-mml", "noscript", "textarea"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag in ("img",) and a.get("src"):
            self.hrefs.append(a["src"])
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.text.append(data)


def parse(html: str) -> _TextAndLinks:
    p = _TextAndLinks()
    p.feed(html)
    return p


RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\frac|\\nabla|\\varepsilon|\\mathbb|\\ell\b|\\\|")


def raw_tex_left(text: str) -> list[str]:
    """TeX that MathJax should have typeset but did not."""
    return sorted(set(m.group(0) for m in RAW_TEX.finditer(text)))


def broken_links(page: Path, hrefs: list[str]) -> list[str]:
    """Relative links of ``page`` whose file (or #anchor in it) does not exist."""
    broken = []
    ids: dict[Path, set[str]] = {}  # each target page parsed once (the API page links to itself hundreds of times)
    for href in hrefs:
        if re.match(r"^[a-z]+:", href) or href.startswith("//"):
            continue  # external (the build is offline: checked elsewhere that none are needed)
        path, _, frag = href.partition("#")
        path = path.split("?")[0]
        target = (page.parent / path).resolve() if path else page.resolve()
        if not target.exists():
            broken.append(href)
            continue
        if frag and target.suffix == ".html":
            if target not in ids:
                ids[target] = parse(target.read_text(encoding="utf-8")).ids
            if frag not in ids[target]:
                broken.append(href)
    return broken

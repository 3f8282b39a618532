"""Headless Chromium helpers for the book's browser tests (Debian's ``chromium``)."""

from __future__ import annotations

import html as html_lib
import json
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


# --------------------------------------------------------------------------------------------------
# Layout checks: what a reader sees at a given width (issue 15)
# --------------------------------------------------------------------------------------------------

#: Measures the rendered page once MathJax has typeset it, and writes the result as JSON into the DOM, where
#: ``--dump-dom`` returns it. The content column is the theme's ``article.bd-article`` (``main`` as a fallback).
_MEASURE_JS = r"""
<script>
(function () {
  function measure() {
    var article = document.querySelector("article.bd-article") || document.querySelector("main");
    var width = article.clientWidth;
    var wide = [];
    article.querySelectorAll("table, img, figure, mjx-container[display='true'], .cell_output, .output")
      .forEach(function (el) {
        if (el.offsetParent === null) return;  // hidden (folded cells, closed dropdowns)
        var w = Math.max(el.scrollWidth, Math.ceil(el.getBoundingClientRect().width));
        if (w > width + 1) wide.push({tag: el.tagName.toLowerCase(), px: w - width,
                                      text: (el.innerText || el.getAttribute("src") || "").slice(0, 80)});
      });
    var uncaptioned = [];
    article.querySelectorAll("figure").forEach(function (f) {
      var cap = f.querySelector("figcaption");
      if (!cap || !cap.innerText.trim()) uncaptioned.push("figure: " + (f.id || f.innerText.slice(0, 60)));
    });
    article.querySelectorAll("img").forEach(function (img) {
      var fig = img.closest("figure");
      if (!fig || !fig.querySelector("figcaption")) uncaptioned.push("img: " + img.getAttribute("src"));
    });
    var truncated = [];
    article.querySelectorAll("td, th").forEach(function (c) {
      var prose = c.cloneNode(true);  // an ellipsis inside code is a placeholder of a command, not a cut
      prose.querySelectorAll("code").forEach(function (k) { k.remove(); });
      var t = prose.textContent.trim();
      if (/(\.\.\.|\u2026)$/.test(t)) truncated.push(t.slice(-80));
    });
    var out = document.createElement("pre");
    out.id = "book-layout-measure";
    out.textContent = JSON.stringify({
      width: width, scroll_width: article.scrollWidth,
      overflow_px: Math.max(article.scrollWidth - width, 0, ...wide.map(function (w) { return w.px; })),
      wide: wide, uncaptioned: uncaptioned, truncated: truncated, text: document.body.innerText
    });
    document.body.appendChild(out);
  }
  window.addEventListener("load", function () {
    var ready = (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve();
    ready.then(function () { setTimeout(measure, 200); });
  });
})();
</script>
"""


def layout_report(page: Path, width: int = 1280, height: int = 1600, budget_ms: int = 20000) -> dict:
    """How ``page`` lays out at ``width`` px: the content column's width, how far anything in it is wider than
    the column (``overflow_px``, with the ``wide`` elements), figures and images without a caption
    (``uncaptioned``), table cells cut to "..." (``truncated``) and the page's visible ``text``.

    The page is copied beside itself with a measuring script appended (so its relative links still resolve),
    rendered by headless Chromium, and the copy removed.
    """
    html = page.read_text(encoding="utf-8")
    probe = page.with_name(f".layout-{page.stem}.html")
    probe.write_text(html.replace("</body>", _MEASURE_JS + "</body>"), encoding="utf-8")
    try:
        out = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}", "--dump-dom",
                    probe.resolve().as_uri()])
    finally:
        probe.unlink()
    m = re.search(r'<pre id="book-layout-measure"[^>]*>(.*?)</pre>', out.stdout, re.S)
    if m is None:
        raise RuntimeError(f"chromium did not measure {page} (the page's scripts did not finish): "
                           f"{out.stderr[-2000:]}")
    return json.loads(html_lib.unescape(m.group(1)))

"""The book builds warning-free, renders math offline and has no broken links (headless Chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import broken_links, find_chromium, parse, raw_tex_left, rendered_dom, screenshot
from tests.conftest import REPO

JB = [str(Path(sys.executable).parent / "jupyter-book")]


def build(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*JB, "build", str(source), "-W", "-n", "--keep-going", "--path-output", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=source)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    result = build(REPO, out)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    warnings = [ln for ln in (result.stdout + result.stderr).splitlines() if "WARNING" in ln]
    assert not warnings, "book build has warnings:\n" + "\n".join(warnings)
    return out / "_build" / "html"


def test_book_builds_warning_free(built_book):
    assert (built_book / "index.html").exists()
    assert (built_book / "book" / "intro.html").exists()
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()


def test_book_pages_load_nothing_from_the_internet(built_book):
    for page in built_book.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert "cdn.jsdelivr.net" not in html and "mathjax@" not in html, f"{page} loads MathJax from a CDN"


def test_committed_notebooks_have_outputs_and_no_errors():
    notebooks = sorted((REPO / "book").glob("*.ipynb"))
    assert notebooks
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c.get("execution_count") for c in code), f"{nb_path.name} has unexecuted cells"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb_path.name} carries an error output"


def test_a_failing_cell_fails_the_build(tmp_path):
    """The book's settings make an executed notebook with a failing cell fail the build."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Broken"), nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, tmp_path / "broken.ipynb")
    config = (REPO / "_config.yml").read_text().replace('execute_notebooks: "off"', 'execute_notebooks: "force"')
    (tmp_path / "_config.yml").write_text(config.replace("bibtex_bibfiles:\n  - book/references.bib\n", ""))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: broken\n")
    shutil.copytree(REPO / "book" / "_static", tmp_path / "book" / "_static")
    result = build(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "ZeroDivisionError" in result.stdout + result.stderr


@pytest.fixture(scope="session")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; `make browser` does "
                    "it where apt and root are available)")
    return path


def test_intro_renders_math_offline_and_its_links_resolve(built_book, chromium, tmp_path):
    page = built_book / "book" / "intro.html"
    dom = rendered_dom(page)
    parsed = parse(dom)
    assert parsed.tags.get("mjx-container", 0) >= 5, "MathJax did not typeset the intro's formulas"
    leftover = raw_tex_left("".join(parsed.text))
    assert not leftover, f"raw TeX left in the rendered intro: {leftover}"
    assert not broken_links(page, parsed.hrefs), broken_links(page, parsed.hrefs)
    png = screenshot(page, tmp_path / "intro.png")
    assert png.stat().st_size > 20_000  # a real rendering, not a blank page


def test_every_page_renders_math_and_has_no_broken_links(built_book, chromium, tmp_path):
    pages = sorted((built_book / "book").glob("*.html"))
    assert len(pages) >= 7
    for page in pages:
        parsed = parse(rendered_dom(page))
        leftover = raw_tex_left("".join(parsed.text))
        assert not leftover, f"raw TeX left in {page.name}: {leftover}"
        assert not broken_links(page, parsed.hrefs), f"{page.name}: {broken_links(page, parsed.hrefs)}"
        source = REPO / "book" / (page.stem + ".ipynb")
        if source.exists() and '"image/png"' in source.read_text():
            assert parsed.tags.get("img", 0) >= 1, f"{page.name} lost its figures"
    screenshot(built_book / "book" / "prop_3_2_finite_differences.html", tmp_path / "prop_3_2.png")


def test_table_pages_have_their_tables_and_figure_pages_their_images(built_book, chromium, tmp_path):
    tables = sorted((built_book / "book").glob("table_*.html"))
    figures = sorted((built_book / "book").glob("figure_*.html"))
    assert [p.stem for p in tables] == ["table_1", "table_2", "table_B3", "table_B4", "table_B5", "table_B6"]
    assert [p.stem for p in figures] == ["figure_1"]
    for page in tables:
        parsed = parse(rendered_dom(page))
        # the side-by-side table and the table of run ids
        assert parsed.tags.get("table", 0) >= 2, f"{page.name} lost its tables"
        text = "".join(parsed.text)
        assert "paper" in text and "ours" in text, f"{page.name} lacks the paper/ours columns"
    for page in figures:
        assert parse(rendered_dom(page)).tags.get("img", 0) >= 1, f"{page.name} lost its figure"
    png = screenshot(built_book / "book" / "table_1.html", tmp_path / "table_1.png")
    assert png.stat().st_size > 20_000

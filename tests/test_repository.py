"""The repository stays what a clone should get: self-contained text, no large files, a lean run store."""

import subprocess

import pytest

from tests.conftest import REPO


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def test_no_file_cites_a_document_outside_the_repository():
    # The original specification is not part of the repository: the book's pages and the docstrings stand alone.
    name = "DESIGN" + ".md"
    citing = [f for f in tracked_files() if name in (REPO / f).read_text(errors="replace")]
    assert not citing, f"these files cite {name}, which a clone does not have: {citing}"


def test_no_committed_file_over_5_mb_and_runs_under_80_mb():
    sizes = {f: (REPO / f).stat().st_size for f in tracked_files()}
    big = {f: s for f, s in sizes.items() if s > 5 * 2**20}
    assert not big, f"files over 5 MB: {big}"
    runs = sum(s for f, s in sizes.items() if f.startswith("runs/"))
    assert runs < 80 * 2**20, f"runs/ holds {runs / 2**20:.1f} MB of committed files (limit 80 MB)"

"""Spot-check the transcribed paper numbers (paperlib.report.paper) against the paper's text."""

import re

import pytest

from paperlib.config import ConfigError
from paperlib.report import paper
from tests.conftest import REPO

PAPER = REPO.parent / "shared" / "paper" / "paper.md"


@pytest.fixture(scope="module")
def paper_lines():
    if not PAPER.exists():
        pytest.skip(f"the paper's text is not at {PAPER}")
    return PAPER.read_text(encoding="utf-8").splitlines()


def numbers(line: str) -> list[float]:
    # drop the row label (which holds digits such as "2/255", "l_1", "m = 2") before reading the cells
    cells = line.split("\t")[1:]
    return [float(c) for c in cells if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", c.strip())]


def find_row(lines, start_pattern, after=None):
    seen_after = after is None
    for line in lines:
        if not seen_after:
            seen_after = after in line
            continue
        if re.match(start_pattern, line):
            return line
    raise AssertionError(f"no line matching {start_pattern!r} after {after!r}")


@pytest.mark.parametrize("table, key, pattern, after", [
    ("1", "undefended", r"Undefended\t4\.36\t100", "Table 1"),
    ("1", "fd-l1-lam1-h0.1", r"Squared .*\\ell_1.*\(FD\).*h = 0\.1", "Table 1"),
    ("1", "pgd-at-8", r".*7-step AT.*8/255", "Table 1"),
    ("1", "imagenet-l2-lam1", r"Squared .*\\ell_2.*lambda = 1", "ImageNet-1k"),
    ("2", "fd-l2-lam1", r"Squared .*\\ell_2.*\(FD\).*lambda = 1", "# Table 2"),
    ("2", "free-at-2", r".*'For Free' AT.*m = 2", "# Table 2"),
    ("B.3", "undefended", r"Undefended\t3\.05", "## Table B.3"),
    ("B.3", "fd-l2-lam1", r"Squared .*\\ell_2.*\(FD\).*lambda = 1", "## Table B.3"),
    ("B.5", "fd-l2-lam1", r"Squared .*\\ell_2.*lambda = 1", "## Table B.5"),
    ("B.5", "salman2019", r"Salman", "## Table B.5"),
    ("B.6", "pgd-at-8", r".*7-step AT.*8/255", "# Table B.6"),
    ("B.4", "h=1e-3", r"h = 1e-3", "#### Table B.4"),
])
def test_transcribed_rows_match_the_paper(paper_lines, table, key, pattern, after):
    line = find_row(paper_lines, pattern, after)
    ours = list(paper.TABLES[table][1][key])
    theirs = numbers(line)
    assert theirs[-len(ours):] == pytest.approx(ours), f"Table {table} row {key}: paper line {line!r}"


def test_every_table_has_rectangular_rows():
    for name, (columns, rows) in paper.TABLES.items():
        assert all(len(v) == len(columns) for v in rows.values()), name
    df = paper.paper_table("B.5")
    assert df.loc["cohen2019", "r=0.5"] == 57
    with pytest.raises(ConfigError, match="table='3'"):
        paper.paper_table("3")

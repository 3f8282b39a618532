"""The book's tables as a reader wants them: split to fit the content column, the paper's and our cells side by
side, intervals on a second line, and one provenance table per page.

:func:`~paperlib.report.results.display_table` gives a paper table with every column in one frame (22 columns
for Table 1), too wide for a page at 1280 px. :func:`~paperlib.report.display.table_parts` splits it into the
column families a reader compares (clean error and hours; the omega-bound; the attacks), with short headers
under a caption that carries the quantity and its units, and drops the paper's sub-column where the paper has
no value in it (our extra radii). :class:`~paperlib.report.display.BookTable` renders compact HTML (the book's
``book.css`` styles the ``book-table`` class) and plain text (what nbval compares).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from paperlib.bounds.smoothing import max_certifiable_radius
from paperlib.config import check_choice
from paperlib.report import paper
from paperlib.report.results import (
    ModelResults,
    _digits,
    _side_by_side_keys,
    column_header,
    format_interval,
    grid_names,
    invalid_certificates,
    our_table,
    run_ids,
    side_by_side,
    table_cells,
)

__all__ = ["BookTable", "BookTables", "Markdown", "table_parts", "show_table", "provenance", "short_header", "source_note",
           "comparisons_table", "verdict_context", "certify_note"]

_DASH = "\u2013"
_INTERVAL = re.compile(r"^(?P<value>\S+) (?P<interval>\[[^\]]*\])$")


def _cell_html(text: str) -> str:
    """``'12.6 [12.0, 13.3]'`` as the value with its interval on a second, smaller line."""
    m = _INTERVAL.match(text)
    if m is None:
        return html.escape(text)
    return f"{html.escape(m['value'])}<br><span class=\"ci\">{html.escape(m['interval'])}</span>"


@dataclass
class BookTable:
    """A table of strings with a caption, rendered as compact HTML in the book and as text elsewhere.

    Args:
        frame: the cells as strings; columns either flat or a two-level MultiIndex ``(header, side)``, whose
            equal headers are merged into one spanning header cell.
        caption: what the table shows, with units (the header cells are short).
        wrap: columns whose cells may wrap (long text such as sub-run lists); the others do not.
    """

    frame: pd.DataFrame
    caption: str = ""
    wrap: Sequence[str] = field(default_factory=tuple)

    def to_html(self) -> str:
        """The table as HTML (class ``book-table``), every cell in full."""
        df = self.frame
        out = ['<table class="book-table">']
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead>")
        index_name = html.escape(str(df.index.name or ""))
        if isinstance(df.columns, pd.MultiIndex):
            top = [str(c[0]) for c in df.columns]
            out.append('<tr><th class="row"></th>')  # no rowspan: the label column's name sits on the sides' row
            i = 0
            while i < len(top):
                j = i
                while j + 1 < len(top) and top[j + 1] == top[i]:
                    j += 1
                span = f' colspan="{j - i + 1}"' if j > i else ""
                out.append(f'<th class="group"{span}>{html.escape(top[i])}</th>')
                i = j + 1
            out.append(f'</tr><tr><th class="row">{index_name}</th>')
            out.extend(f'<th class="side">{html.escape(str(c[1]))}</th>' for c in df.columns)
            out.append("</tr>")
        else:
            out.append(f'<tr><th class="row">{index_name}</th>')
            out.extend(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
            out.append("</tr>")
        out.append("</thead><tbody>")
        wrap = set(self.wrap)
        for label, row in df.iterrows():
            out.append(f'<tr><th class="row">{html.escape(str(label))}</th>')
            for col, v in zip(df.columns, row):
                name = col[0] if isinstance(col, tuple) else col
                cls = ' class="wrap"' if name in wrap else ""
                out.append(f"<td{cls}>{_cell_html(str(v))}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        return "".join(out)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None, "display.width", 250, "display.max_columns", None):
            body = self.frame.to_string()
        return f"{self.caption}\n{body}" if self.caption else body


@dataclass
class BookTables:
    """Several :class:`~paperlib.report.display.BookTable` shown one after the other (one cell output)."""

    tables: list[BookTable]

    def _repr_html_(self) -> str:
        return "".join(t.to_html() for t in self.tables)

    def __repr__(self) -> str:
        return "\n\n".join(repr(t) for t in self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def __getitem__(self, i: int) -> BookTable:
        return self.tables[i]


_CLEAN = ("clean_error", "clean_error_attacked", "train_hours")
_LINF = "linf, eps in units of 1/255"
#: How each paper table is split for the page: (caption, the columns it holds: a tuple of names or a prefix).
#: The l2 radii of B.5 and B.6 are split in halves (8 radii x 2 sides do not fit).
_PARTS: dict[str, list[tuple[str, tuple[str, ...] | str]]] = {
    "1": [("Clean % error (95% Wilson interval) and training hours", _CLEAN),
          (f"% error certified by the omega-bound, the paper's omega from random samples ({_LINF})", "omega_err_"),
          (f"% error certified by the omega-bound with each image's omega maximised by gradient ascent (not in the "
           f"paper; {_LINF})", "omegaadv_err_"),
          (f"Empirical % error under the attack suite ({_LINF})", "emp_err_")],
    "2": [("Clean % error (95% Wilson interval) and training hours", _CLEAN),
          ("Mean l2 distance to the decision boundary: lower bounds and the best attack (95% bootstrap interval)",
           ("mean_L_bound", "mean_omega_bound", "mean_omega_bound_adversarial", "mean_empirical"))],
    "B.3": [("Regularity of the margin loss: l2 norm of its input gradient and omega (l2)",
             tuple(paper.TABLEB3_COLUMNS))],
    "B.4": [("Clean % error (95% Wilson interval)", ("clean_error", "clean_error_attacked")),
            (f"Empirical % error under the attack suite ({_LINF})", "emp_err_")],
    "B.5": [("% error certified by randomized smoothing at l2 radius r (95% Wilson interval)", "r=")],
    "B.6": [("% error certified by the omega-bound (the paper's omega from random samples) at l2 radius r "
             "(95% Wilson interval)", "r="),
            ("% error certified by the omega-bound with each image's omega maximised by gradient ascent (not in "
             "the paper) at l2 radius r (95% Wilson interval)", "adv r=")],
}
_SPLIT_RADII = {"B.5": 4, "B.6": 3}

_SHORT = {"clean_error": "whole test set", "clean_error_attacked": "attacked images", "train_hours": "training hours",
          "mean_L_bound": "L-bound", "mean_omega_bound": "omega-bound", "mean_empirical": "best attack",
          "mean_omega_bound_adversarial": "adversarial omega-bound (per image)",
          "grad_mean": "mean gradient norm", "grad_max": "max gradient norm", "omega_0.5": "omega(0.5)",
          "omega_1.0": "omega(1.0)"}


def short_header(name: str, column: str) -> str:
    """The short header of ``column`` under its part's caption: ``'2/255'`` for ``emp_err_2``, ``'r = 0.5'``
    for ``r=0.5``, ``'whole test set'`` for the clean error (the long form:
    :func:`~paperlib.report.results.column_header`)."""
    if column in _SHORT:
        return _SHORT[column]
    for prefix in ("omega_err_", "omegaadv_err_", "emp_err_"):
        if column.startswith(prefix):
            return f"{column[len(prefix):]}/255"
    for prefix in ("r=", "adv r="):
        if column.startswith(prefix):
            return f"r = {column[len(prefix):]}"
    return column_header(name, column)


def _part_columns(spec: tuple[str, ...] | str, columns: Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        return [c for c in columns if c.startswith(spec)]
    return [c for c in spec if c in columns]


def table_parts(name: str, grid: dict[str, ModelResults], *, rows: str = "paper") -> BookTables:
    """Paper table ``name`` ('1', '2', 'B.3', 'B.4', 'B.5', 'B.6') as the page shows it: one
    :class:`~paperlib.report.display.BookTable` per column family, the paper's cell (as printed) beside ours
    (``'value [low, high]'``, :func:`~paperlib.report.results.table_cells`) under a short header; the paper's
    sub-column is left out where the paper has no value. Every cell of
    :func:`~paperlib.report.results.display_table` appears in exactly one part."""
    check_choice("table", name, _PARTS)
    ours = our_table(name, grid)
    cells = table_cells(name, grid)
    sbs = side_by_side(name, ours, rows=rows)
    keys = _side_by_side_keys(name, ours, rows)
    columns = list(dict.fromkeys(c for c, _ in sbs.columns))
    invalid = invalid_certificates(name, grid)
    parts: list[BookTable] = []
    for caption, spec in _PARTS[name]:
        cols = _part_columns(spec, columns)
        chunks = [cols]
        if name in _SPLIT_RADII and len(cols) > _SPLIT_RADII[name]:
            k = _SPLIT_RADII[name]
            chunks = [cols[i:i + k] for i in range(0, len(cols), k)]
        for chunk in chunks:
            data: dict[tuple[str, str], list[str]] = {}
            for col in chunk:
                head = short_header(name, col)
                theirs = sbs[(col, "paper")]
                if theirs.notna().any():
                    data[(head, "paper")] = [_DASH if math.isnan(float(v)) else f"{float(v):g}" for v in theirs]
                data[(head, "ours")] = [_our_cell(cells, k, col) + (INVALID_MARK if (k, col) in invalid else "")
                                        for k in keys]
            if not data:
                continue
            df = pd.DataFrame(data, index=sbs.index)
            df.columns = pd.MultiIndex.from_tuples(df.columns)
            flagged = sum((k, c) in invalid for k in keys for c in chunk)
            note = (f" {INVALID_MARK.strip()} {flagged} cell{'s' if flagged > 1 else ''} below the empirical % error "
                    "at the same radius: not a valid certificate there (some image's bound exceeds an adversarial "
                    "the attacks found)") if flagged else ""
            parts.append(BookTable(df, caption + note))
    return BookTables(parts)


#: appended to a certified-error cell below the empirical error at its radius (see
#: :func:`~paperlib.report.results.invalid_certificates`)
INVALID_MARK = " †"


def _our_cell(cells: pd.DataFrame, key: str, col: str) -> str:
    if (key, col) not in cells.index:
        return _DASH
    c = cells.loc[(key, col)]
    value = float(c["value"])
    if math.isnan(value) and c["interval"]:
        return str(c["interval"])  # e.g. 'beyond n': the certificate cannot reach this radius
    return format_interval(value, float(c["low"]), float(c["high"]), digits=_digits(col))


def show_table(name: str, grid: dict[str, ModelResults], *, rows: str = "paper") -> BookTables:
    """What a table page displays: :func:`~paperlib.report.display.table_parts` (the cell's output)."""
    return table_parts(name, grid, rows=rows)


def _commit(meta: dict) -> str:
    sha = str(meta.get("env", {}).get("git_commit") or "")
    if not sha:
        return "unknown"
    dirty = sha.endswith("-dirty")
    return sha[:8] + (" (uncommitted changes)" if dirty else " (clean tree)")


def provenance(grid: dict[str, ModelResults], keys: Sequence[str] | None = None) -> BookTable:
    """Where each row of a page comes from, in one table: the run, its config hash, the commit it was trained
    at (and whether the tree was clean), its finished sub-runs (attack, bounds, certify: name and config hash)
    and the number of attacked images. Nothing is cut."""
    ids = run_ids(grid, keys)
    rows = []
    for k, r in ids.iterrows():
        m = grid[k]
        path = m.path / "config.json"
        meta = json.loads(path.read_text()) if path.exists() else {}
        rows.append({"row": k, "run": r["run"], "config hash": str(meta.get("hash", "")),
                     "trained at commit": _commit(meta), "sub-runs": r["sub-runs"].replace(", ", " "),
                     "attacked images": str(r["attacked images"])})
    df = pd.DataFrame(rows).set_index("row") if rows else pd.DataFrame()
    return BookTable(df, "Provenance: the runs behind this page", wrap=("run", "trained at commit", "sub-runs"))


@dataclass
class Markdown:
    """Text the book renders as Markdown (a cell output with ``text/markdown``), and prints as itself."""

    text: str

    def _repr_markdown_(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def _choices(values: Sequence[object]) -> str:
    vals = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
    return " or ".join(vals) if vals else "?"


def source_note(grid: dict[str, ModelResults]) -> Markdown:
    """The paragraph every result page opens with: which grid its numbers come from, read from the runs (profile,
    dataset, model, epochs, test images, attacked images), so that no page retypes a setting."""
    names = grid_names(grid)
    epochs = _choices([m.config.epochs for m in grid.values() if m.config is not None])
    tests = _choices([f"{int(m.metrics['test_images']):,}" for m in grid.values() if m.metrics.get("test_images")])
    n_att = sorted({int(m.suite.best["image"].nunique()) for m in grid.values() if m.suite is not None})
    attacked = (f"attacks and bounds on {_choices(n_att)} seeded-random test images (the same images for every "
                f"model; the paper used 1000)") if n_att else "no attack has run yet"
    clips = sorted({m.config.grad_clip for m in grid.values() if m.config is not None and m.config.grad_clip})
    clip = (f", gradient-norm clipping at {_choices([f'{c:g}' for c in clips])} for every model (not in the paper; "
            f"see Table B.4's page)") if clips else ""
    n_bound = sum(bool(m.bounds) for m in grid.values())
    bounded = (f" Bounds have run on {n_bound} of {len(grid)} models so far; the others' bound cells are empty."
               if n_att and n_bound < len(grid) else "")
    return Markdown(
        f"Our numbers come from the `{names['profile']}` profile's grid (`{names['command']}`, "
        f"{len(grid)} finished models): {names['dataset']}, the `{names['model']}` model, "
        f"{epochs} epochs{clip}, clean error on all {tests} test images, {attacked}.{bounded} "
        f"The paper's numbers are CIFAR-10 "
        f"(ResNeXt-34, 200 epochs) as printed, transcribed in `paperlib.report.paper`. Two datasets, two models: "
        f"compare the *pattern* across rows, not the cells one by one.")


def comparisons_table(comparisons: pd.DataFrame) -> BookTable:
    """The verdict page's comparisons (:func:`~paperlib.report.results.comparisons`) in five readable columns:
    the claim, what is compared, the two models, the difference with its 95% interval (and the interval's kind),
    the verdict."""
    rows = []
    for r in comparisons.itertuples():
        diff = format_interval(float(r.difference), float(r.low), float(r.high), digits=3)
        rows.append({"claim": r.claim, "comparison": r.comparison, "models": f"{r.a} vs {r.b}",
                     "difference [95% interval]": f"{diff} ({r.interval}, n = {r.n:g})" if r.interval else diff,
                     "verdict": r.verdict})
    df = pd.DataFrame(rows).set_index("claim") if rows else pd.DataFrame()
    return BookTable(df, "Every comparison behind the verdicts",
                     wrap=("comparison", "models", "difference [95% interval]"))


def verdict_context(grid: dict[str, ModelResults]) -> Markdown:
    """What the verdict page's reader must keep in mind, computed from the grid: the dataset, model, epochs and
    attacked images behind the verdicts, and the resolution that many images give a % error (its step and its
    binomial standard error at 50%)."""
    names = grid_names(grid)
    epochs = _choices([m.config.epochs for m in grid.values() if m.config is not None])
    n = int(names["n_images"])
    if n:
        noise = (f"With {n} attacked images a % error moves in steps of {100 / n:.2g} points, and its binomial "
                 f"standard error at 50% is {50 / math.sqrt(n):.2g} points: a difference between two models smaller "
                 f"than about twice that is within sampling noise, which the intervals below account for.")
    else:
        noise = "No model has been attacked yet: every robustness verdict is 'not resolved'."
    return Markdown(
        f"- **This grid.** {names['dataset']}, the `{names['model']}` model, {epochs} training epochs, "
        f"{len(grid)} finished models (`{names['command']}`); the paper's evidence is "
        f"CIFAR-10 and ImageNet-1k with 200-epoch ResNeXts and 1000 attacked images per model.\n"
        f"- **Noise.** {noise}\n"
        f"- **Another dataset.** {names['dataset']} models are broken at other radii than CIFAR-10's; the tables "
        f"report the paper's radii and add larger ones where ours are not yet broken.")


def certify_note(grid: dict[str, ModelResults]) -> Markdown:
    """The smoothing pages' settings sentence, read from the certification runs: noise samples ``n``, ``alpha``,
    ``sigma`` and the largest radius such a certificate can reach (:func:`~paperlib.bounds.smoothing.max_certifiable_radius`)."""
    cfgs = {(c.n, c.alpha, c.sigma, c.n_images) for m in grid.values() for r in m.certify_sigmas.values()
            for c in [r.config] if c is not None}
    if not cfgs:
        return Markdown("No model of this grid has been certified yet.")
    groups: dict[tuple, list[float]] = {}
    for n, a, s, k in sorted(cfgs):
        groups.setdefault((n, a, k), []).append(s)
    parts = [f"$n = {f'{n:,}'.replace(',', '{,}')}$ noise samples per image on {k} test images, $\\alpha = {a:g}$, "
             f"$\\sigma = {' / '.join(f'{s:g}' for s in sig)}$: no radius above "
             f"{' / '.join(f'{max_certifiable_radius(n, a, s):.2f}' for s in sig)} can be certified"
             for (n, a, k), sig in groups.items()]
    several = len({s for _, _, s, _ in cfgs}) > 1
    envelope = (" Table B.5 shows at each radius the sigma with the lowest certified error (the envelope over "
                "sigma, as Cohen et al. report it); choosing the best of three on the same images flatters the "
                "envelope slightly, so each sigma's own row is shown below the table.") if several else ""
    return Markdown("Our certificates: " + "; ".join(parts) + " (Cohen et al.: $n = 100{,}000$)." + envelope)

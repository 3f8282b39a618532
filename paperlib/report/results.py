"""This project's numbers for the paper's tables and figures, read from a profile's grid of finished runs.

:func:`load_grid` reads what ``paperlib reproduce --profile <p>`` wrote (training runs and their attack, bounds
and certification sub-runs) into one :class:`ModelResults` per grid key. The table functions turn it into
frames with the paper's columns (:mod:`paperlib.report.paper`), and :func:`side_by_side` puts the paper's numbers
and ours next to each other for the book's table pages:

>>> grid = load_grid("fmnist")                    # doctest: +SKIP
>>> side_by_side("1", table1(grid))               # doctest: +SKIP

Conventions (the paper's, see section 4): errors in percent; clean error on the whole test set; empirical and
bound errors on the profile's seeded image sample (images a model misclassifies count as errors at every
radius); mean distances over that sample with clean errors at distance 0; linf radii named in units of 1/255
(``emp_err_8`` is the empirical error at eps = 8/255). A model or stage that has not run yet gives NaN cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from paperlib.attacks.suite import load_suite
from paperlib.bounds import load_bounds, load_certify
from paperlib.bounds.audit import audit_bounds
from paperlib.bounds.lipschitz import certified_error
from paperlib.config import check_choice
from paperlib.metrics import best_values, empirical_error, error_curve
from paperlib.report import paper
from paperlib.reproduce import SMOOTHING_MODELS, diverged_note, stage_seconds, stage_subrun
from paperlib.reproduce import evaluation_configs as profile_evaluation_configs
from paperlib.reproduce import grid as profile_grid
from paperlib.runs import RunStore, default_runs_dir, finished_dir
from paperlib.training import run_name

__all__ = [
    "ModelResults", "load_grid", "diverged_models", "table1", "table2", "tableB3", "tableB4", "tableB5", "tableB6", "our_table",
    "side_by_side", "fmt", "run_ids", "check_verdicts", "check_messages", "bound_audit", "claims", "training_costs",
    "attack_costs", "stage_hours", "model_error_curves", "figure1", "LINF_EPS", "FIGURE1_MODELS",
]

#: The linf radii reported, in units of 1/255. The paper's are 2 and 8; 16 and 32 are added for Fashion-MNIST,
#: whose undefended models are broken at about 8/255 (median), so that the paper's radii alone hide the
#: differences between defended models.
LINF_EPS: tuple[float, ...] = (2, 8, 16, 32)

#: The models of each panel of Figure 1, AT and squared-l1 penalties in linf, AT and squared-l2 penalties in l2.
FIGURE1_MODELS: dict[str, tuple[str, ...]] = {
    "linf": ("undefended", "pgd-at-2", "pgd-at-8", "free-at-8", "dbp-l1-lam1", "fd-l1-lam0.1", "fd-l1-lam1-h0.1"),
    "l2": ("undefended", "pgd-at-2", "pgd-at-8", "free-at-8", "dbp-l2-lam1", "fd-l2-lam0.1", "fd-l2-lam1"),
}


@dataclass
class ModelResults:
    """Everything the grid produced for one model (missing stages are None / absent).

    Attributes:
        key: the grid key (a row key of :mod:`paperlib.report.paper`, or an h-study key like ``h=1e-3``).
        path: the training run's directory.
        run_id: ``<profile>/<run name>``, the run's address inside the run store.
        config: the resolved :class:`~paperlib.training.TrainConfig`.
        metrics: the training run's ``metrics.json`` (clean error on the whole test set, train hours, ...).
        log: the per-epoch ``train_log.csv``.
        suite: the attack suite (:class:`~paperlib.attacks.suite.SuiteResult`) or None.
        bounds: ``{'l2': BoundsResult, 'linf': BoundsResult}`` for the norms that ran.
        certify: the randomized-smoothing :class:`~paperlib.bounds.smoothing.CertifyResult` or None.
        seconds: wall seconds per stage as ``paperlib reproduce`` measured them (``timings/<key>.json``).
    """

    key: str
    path: Path
    run_id: str
    config: Any
    metrics: dict[str, Any]
    log: pd.DataFrame
    suite: Any = None
    bounds: dict[str, Any] = field(default_factory=dict)
    certify: Any = None
    seconds: dict[str, float] = field(default_factory=dict)


def load_grid(profile: str = "fmnist", runs_dir: str | Path | None = None) -> dict[str, ModelResults]:
    """Load every finished model of ``profile``'s grid and its finished evaluation stages.

    Models that are not trained yet are left out; stages that have not run are None. Nothing is computed.
    """
    store = RunStore(runs_dir if runs_dir is not None else default_runs_dir())
    evals = profile_evaluation_configs(profile)
    seconds = stage_seconds(store.root / profile)
    out: dict[str, ModelResults] = {}
    for key, cfg in profile_grid(profile).items():
        run = store.run(cfg.profile, run_name(cfg), cfg)
        if not run.is_finished():
            continue
        res = ModelResults(key=key, path=run.path, run_id=f"{cfg.profile}/{run.path.name}", config=cfg,
                           metrics=run.read_json("metrics.json"), log=run.read_table("train_log.csv"),
                           seconds=seconds.get(key, {}))
        sub = stage_subrun(run, evals["attack"])
        if sub.is_finished():
            res.suite = load_suite(sub)
        for norm in ("l2", "linf"):
            sub = stage_subrun(run, evals[f"bound-{norm}"])
            if sub.is_finished():
                res.bounds[norm] = load_bounds(sub)
        sub = stage_subrun(run, evals["certify"])
        if key in SMOOTHING_MODELS and sub.is_finished():
            res.certify = load_certify(sub)
        out[key] = res
    return out


def diverged_models(profile: str = "fmnist", runs_dir: str | Path | None = None) -> dict[str, str]:
    """Grid models whose training diverged (non-finite loss), with the recorded message: ``{key: message}``."""
    store = RunStore(runs_dir if runs_dir is not None else default_runs_dir())
    out = {}
    for key, cfg in profile_grid(profile).items():
        note = diverged_note(store.run(cfg.profile, run_name(cfg), cfg))
        if note is not None:
            out[key] = note
    return out


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------

_NAN = float("nan")


def _attacked(m: ModelResults, norm: str) -> bool:
    """Whether the model's attack suite ran and has best distances in ``norm`` (else its cells are NaN)."""
    return m.suite is not None and norm in set(m.suite.best["norm"])


def _emp_err(m: ModelResults, norm: str, eps: float) -> float:
    """The cell of :func:`~paperlib.metrics.empirical_error` at ``eps`` (NaN where the suite has not run)."""
    return empirical_error(m.suite.best, eps, norm) if _attacked(m, norm) else _NAN


def _bound_err(m: ModelResults, norm: str, radius: float, column: str = "omega_distance") -> float:
    """Certified % error at ``radius`` by a bound column of ``bounds.csv`` (misclassified = error)."""
    b = m.bounds.get(norm)
    if b is None:
        return _NAN
    t = b.table
    return certified_error(t[column].to_numpy(), t["correct"].to_numpy(bool), [radius])[float(radius)]


def _train_hours(m: ModelResults) -> float:
    return float(m.metrics.get("train_hours", _NAN))


def _linf_col(prefix: str, e: float) -> str:
    return f"{prefix}_{e:g}"


# --------------------------------------------------------------------------------------------------
# Tables (our numbers in the paper's columns)
# --------------------------------------------------------------------------------------------------


def _frame(rows: dict[str, dict[str, float]], keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame([[rows.get(k, {}).get(c, _NAN) for c in columns] for k in keys], index=list(keys),
                      columns=list(columns), dtype=float)
    df.index.name = "row"
    return df


def _keys(table: str) -> list[str]:
    """The paper's rows of ``table`` that a CPU profile can have (no ImageNet rows)."""
    return [k for k in paper.TABLES[table][1] if not k.startswith("imagenet") and not k.startswith(("cohen", "salman"))]


def table1(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> pd.DataFrame:
    """Table 1 (linf): clean error, omega-bound and empirical % error at each eps (in 1/255), train hours."""
    cols = (["clean_error"] + [_linf_col("omega_err", e) for e in eps255] + [_linf_col("emp_err", e) for e in eps255]
            + ["train_hours"])
    rows = {}
    for k, m in grid.items():
        r = {"clean_error": float(m.metrics["clean_error_pct"]), "train_hours": _train_hours(m)}
        for e in eps255:
            r[_linf_col("omega_err", e)] = _bound_err(m, "linf", e / 255)
            r[_linf_col("emp_err", e)] = _emp_err(m, "linf", e / 255)
        rows[k] = r
    return _frame(rows, _keys("1"), cols)


def table2(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table 2 (l2): clean error, mean distance by the L-bound, the omega-bound and the best attack; hours."""
    rows = {}
    for k, m in grid.items():
        b = m.bounds.get("l2")
        best = best_values(m.suite.best, "l2") if _attacked(m, "l2") else None
        rows[k] = {
            "clean_error": float(m.metrics["clean_error_pct"]),
            "mean_L_bound": float(b.table["l_bound"].mean()) if b is not None else _NAN,
            "mean_omega_bound": float(b.table["omega_distance"].mean()) if b is not None else _NAN,
            "mean_empirical": float(np.mean(best[np.isfinite(best)])) if best is not None else _NAN,
            "train_hours": _train_hours(m),
        }
    return _frame(rows, _keys("2"), paper.TABLE2_COLUMNS)


def tableB3(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.3: mean and max l2 gradient norm of the margin loss, omega(0.5) and omega(1.0) (l2)."""
    rows = {}
    for k, m in grid.items():
        b = m.bounds.get("l2")
        if b is None:
            continue
        om = b.omega()
        rows[k] = {"grad_mean": float(b.table["grad_norm_l2"].mean()), "grad_max": float(b.table["grad_norm_l2"].max()),
                   "omega_0.5": om.get(0.5, _NAN), "omega_1.0": om.get(1.0, _NAN)}
    return _frame(rows, _keys("B.3"), paper.TABLEB3_COLUMNS)


def tableB4(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> pd.DataFrame:
    """Table B.4 (the h study, squared l1, lam 1): clean error and empirical linf % error per eps."""
    cols = ["clean_error"] + [_linf_col("emp_err", e) for e in eps255]
    alias = {"h=0.1": "fd-l1-lam1-h0.1"}
    rows = {}
    for row in paper.TABLEB4:
        m = grid.get(alias.get(row, row))
        if m is None:
            continue
        rows[row] = {"clean_error": float(m.metrics["clean_error_pct"]),
                     **{_linf_col("emp_err", e): _emp_err(m, "linf", e / 255) for e in eps255}}
    return _frame(rows, list(paper.TABLEB4), cols)


def tableB5(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.5: randomized-smoothing certified % error at the paper's l2 radii."""
    radii = paper.TABLEB5_RADII
    rows = {}
    for k, m in grid.items():
        if m.certify is None:
            continue
        t = m.certify.table
        errs = certified_error(t["radius"].to_numpy(), t["correct"].to_numpy(bool), radii)
        rows[k] = {f"r={r}": errs[float(r)] for r in radii}
    return _frame(rows, _keys("B.5"), [f"r={r}" for r in radii])


def tableB6(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.6: omega-bound certified % error at the paper's l2 radii."""
    radii = paper.TABLEB6_RADII
    rows = {k: {f"r={r}": _bound_err(m, "l2", r) for r in radii} for k, m in grid.items()}
    return _frame(rows, _keys("B.6"), [f"r={r}" for r in radii])


_TABLES = {"1": table1, "2": table2, "B.3": tableB3, "B.4": tableB4, "B.5": tableB5, "B.6": tableB6}


def our_table(name: str, grid: dict[str, ModelResults]) -> pd.DataFrame:
    """This project's table ``name`` ('1', '2', 'B.3', 'B.4', 'B.5', 'B.6') from ``grid``."""
    check_choice("table", name, _TABLES)
    return _TABLES[name](grid)


def side_by_side(name: str, ours: pd.DataFrame, *, ours_label: str = "ours", paper_label: str = "paper",
                 rows: str = "paper") -> pd.DataFrame:
    """The paper's table ``name`` and ``ours`` in one frame: columns ``(column, paper_label | ours_label)``.

    Rows are the paper's (labels as printed, ImageNet rows left out) plus rows only we have (``rows='all'``).
    A column only one side has (e.g. our extra linf radii) shows NaN on the other side.
    """
    theirs = paper.paper_table(name)
    theirs = theirs.loc[[k for k in theirs.index if not k.startswith("imagenet")]]
    keys = list(theirs.index) + ([k for k in ours.index if k not in theirs.index] if rows == "all" else [])
    cols = list(dict.fromkeys(list(theirs.columns) + list(ours.columns)))
    data = {}
    for c in cols:
        data[(c, paper_label)] = [theirs[c].get(k, _NAN) if c in theirs else _NAN for k in keys]
        data[(c, ours_label)] = [ours[c].get(k, _NAN) if c in ours else _NAN for k in keys]
    df = pd.DataFrame(data, index=[paper.ROW_KEYS.get(k, k) for k in keys])
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "model"
    return df


def fmt(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """``df`` rounded to ``digits`` with missing cells shown as an en dash (for the book's tables)."""
    rounded = df.round(digits)
    return rounded.astype(object).where(rounded.notna(), "\u2013")


def run_ids(grid: dict[str, ModelResults], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Which run each row comes from: grid key, run id, attack/bounds/certify sub-run names, images."""
    rows = []
    for k in keys if keys is not None else grid:
        m = grid.get(k)
        if m is None:
            continue
        subs = sorted(p.name for p in m.path.iterdir() if p.is_dir() and finished_dir(p))
        n = int(m.suite.best["image"].nunique()) if m.suite is not None else 0
        rows.append({"row": k, "run": m.run_id, "sub-runs": ", ".join(subs), "attacked images": n})
    return pd.DataFrame(rows).set_index("row") if rows else pd.DataFrame()


# --------------------------------------------------------------------------------------------------
# Evaluation quality: the attack suite's checks and the bounds' violations
# --------------------------------------------------------------------------------------------------


def check_verdicts(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Each model's attack-suite checks (:mod:`paperlib.attacks.checks`), one row per model and one column per
    check: True where the check passed. One model's checks with their messages:
    :func:`~paperlib.report.experiments.checks_table`."""
    rows = {k: {c[0]: bool(c[1]) for c in m.suite.checks} for k, m in grid.items() if m.suite is not None}
    return pd.DataFrame.from_dict(rows, orient="index")


def check_messages(grid: dict[str, ModelResults], name: str) -> pd.Series:
    """The message of check ``name`` for every model (e.g. the convergence check's measured change)."""
    return pd.Series({k: next((c[2] for c in m.suite.checks if c[0] == name), "")
                      for k, m in grid.items() if m.suite is not None}, name=name)


def bound_audit(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Per model and norm: % of attacked images where the L-bound or the omega-bound exceeds the best
    adversarial distance found (a violated lower bound; :func:`paperlib.bounds.audit.audit_bounds`)."""
    rows = []
    for k, m in grid.items():
        if m.suite is None:
            continue
        for norm, b in m.bounds.items():
            a = audit_bounds(b.table, m.suite.best, norm, columns=["l_bound", "omega_distance"]).set_index("bound")
            rows.append({"row": k, "norm": norm, "compared": int(a.loc["l_bound", "n_compared"]),
                         "L-bound violations %": float(a.loc["l_bound", "violation_rate"]),
                         "omega-bound violations %": float(a.loc["omega_distance", "violation_rate"])})
    return pd.DataFrame(rows).set_index(["row", "norm"]) if rows else pd.DataFrame()


# --------------------------------------------------------------------------------------------------
# The paper's claims, measured
# --------------------------------------------------------------------------------------------------


def _get(df: pd.DataFrame, row: str, col: str) -> float:
    try:
        return float(df.loc[row, col])
    except KeyError:
        return _NAN


def _num(v: float, digits: int = 1) -> str:
    return "\u2013" if math.isnan(v) else f"{v:.{digits}f}"


def _pair(a: float, b: float, digits: int = 1, arrow: str = " vs ") -> str:
    f = f"{{:.{digits}f}}"
    return ("\u2013" if math.isnan(a) else f.format(a)) + arrow + ("\u2013" if math.isnan(b) else f.format(b))


def claims(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """The paper's claims with the numbers that test them, the paper's (CIFAR-10) beside ours.

    One row per claim: ``id``, ``claim``, ``measure`` (what is compared, in which units), ``paper`` and
    ``ours`` (the same comparison as text). The verdicts are the book's (``what_reproduced``), not computed.
    """
    t1, t2, b3, b4 = table1(grid), table2(grid), tableB3(grid), tableB4(grid)
    p1, p2, p3, p4 = (paper.paper_table(n) for n in ("1", "2", "B.3", "B.4"))
    b5, p5 = tableB5(grid), paper.paper_table("B.5")
    hours = {k: _train_hours(m) for k, m in grid.items()}
    ph = {k: _paper_hours(k) for k in paper.ROW_KEYS}
    rows = []

    def add(cid, claim, measure, paper_text, ours_text):
        rows.append({"id": cid, "claim": claim, "measure": measure, "paper": paper_text, "ours": ours_text})

    add("gain-linf", "The squared-l1 penalty makes models robust in linf (vs undefended)",
        "empirical % error at eps = 8/255: undefended vs FD l1, lam 1, h 0.1 (ours also at 16/255)",
        _pair(p1.loc["undefended", "emp_err_8"], p1.loc["fd-l1-lam1-h0.1", "emp_err_8"], arrow=" \u2192 "),
        _pair(_get(t1, "undefended", "emp_err_8"), _get(t1, "fd-l1-lam1-h0.1", "emp_err_8"), arrow=" \u2192 ")
        + " (16/255: " + _pair(_get(t1, "undefended", "emp_err_16"), _get(t1, "fd-l1-lam1-h0.1", "emp_err_16"),
                               arrow=" \u2192 ") + ")")
    add("gain-l2", "The squared-l2 penalty makes models robust in l2 (vs undefended)",
        "mean best-attack l2 distance: undefended vs FD l2, lam 1",
        _pair(p2.loc["undefended", "mean_empirical"], p2.loc["fd-l2-lam1", "mean_empirical"], 2, " \u2192 "),
        _pair(_get(t2, "undefended", "mean_empirical"), _get(t2, "fd-l2-lam1", "mean_empirical"), 2, " \u2192 "))
    add("tradeoff", "Stronger regularization trades clean accuracy for robustness",
        "clean % error, FD l2 at lam 0.1 vs lam 1",
        _pair(p2.loc["fd-l2-lam0.1", "clean_error"], p2.loc["fd-l2-lam1", "clean_error"], arrow=" \u2192 "),
        _pair(_get(t2, "fd-l2-lam0.1", "clean_error"), _get(t2, "fd-l2-lam1", "clean_error"), arrow=" \u2192 "))
    add("vs-at-linf", "7-step AT is somewhat more robust in linf than the best penalty (about 5 points)",
        "empirical % error at 8/255: FD l1 lam 1 h 0.1 vs PGD-AT 8/255",
        _pair(p1.loc["fd-l1-lam1-h0.1", "emp_err_8"], p1.loc["pgd-at-8", "emp_err_8"]),
        _pair(_get(t1, "fd-l1-lam1-h0.1", "emp_err_8"), _get(t1, "pgd-at-8", "emp_err_8"))
        + " (16/255: " + _pair(_get(t1, "fd-l1-lam1-h0.1", "emp_err_16"), _get(t1, "pgd-at-8", "emp_err_16")) + ")")
    add("vs-at-l2", "In l2 the penalty matches or beats 7-step AT",
        "mean best-attack l2 distance: FD l2 lam 1 vs PGD-AT 8/255",
        _pair(p2.loc["fd-l2-lam1", "mean_empirical"], p2.loc["pgd-at-8", "mean_empirical"], 2),
        _pair(_get(t2, "fd-l2-lam1", "mean_empirical"), _get(t2, "pgd-at-8", "mean_empirical"), 2))
    add("at-cost", "...at less than half of 7-step AT's training time",
        "training hours: FD l1 lam 1 vs PGD-AT 8/255 (ratio AT/FD)",
        _pair(ph["fd-l1-lam1-h0.1"], ph["pgd-at-8"], 2) + f" (x{ph['pgd-at-8'] / ph['fd-l1-lam1-h0.1']:.2f})",
        _pair(hours.get("fd-l1-lam1-h0.1", _NAN), hours.get("pgd-at-8", _NAN), 2)
        + f" (x{hours.get('pgd-at-8', _NAN) / hours.get('fd-l1-lam1-h0.1', _NAN):.2f})")
    add("fd-vs-dbp-robust", "FD is at least as robust as DBP at the same lambda",
        "linf: emp. % error at 8/255, FD vs DBP (l1, lam 1); l2: mean distance, FD vs DBP (l2, lam 1)",
        _pair(p1.loc["fd-l1-lam1-h0.1", "emp_err_8"], p1.loc["dbp-l1-lam1", "emp_err_8"]) + "; "
        + _pair(p2.loc["fd-l2-lam1", "mean_empirical"], p2.loc["dbp-l2-lam1", "mean_empirical"], 2),
        _pair(_get(t1, "fd-l1-lam1-h0.1", "emp_err_8"), _get(t1, "dbp-l1-lam1", "emp_err_8")) + "; "
        + _pair(_get(t2, "fd-l2-lam1", "mean_empirical"), _get(t2, "dbp-l2-lam1", "mean_empirical"), 2))
    fd_keys = [k for k in ("fd-l1-lam0.1", "fd-l1-lam1-h0.1", "fd-l2-lam0.1", "fd-l2-lam1")]
    dbp_keys = [k for k in ("dbp-l1-lam0.1", "dbp-l1-lam1", "dbp-l2-lam0.1", "dbp-l2-lam1")]

    def mean_h(keys, table):
        v = [table.get(k, _NAN) for k in keys]
        return float(np.mean(v)) if v else _NAN

    add("fd-vs-dbp-cost", "FD trains faster than DBP (about 50% on CIFAR-10, 10% on MNIST-sized nets)",
        "mean training hours of the four FD vs the four DBP models (ratio DBP/FD)",
        _pair(mean_h(fd_keys, ph), mean_h(dbp_keys, ph), 2) + f" (x{mean_h(dbp_keys, ph) / mean_h(fd_keys, ph):.2f})",
        _pair(mean_h(fd_keys, hours), mean_h(dbp_keys, hours), 3)
        + f" (x{mean_h(dbp_keys, hours) / mean_h(fd_keys, hours):.2f})")
    hs = ["h=1e-4", "h=1e-3", "h=1e-2", "h=0.1", "h=1"]
    add("h-clean", "Small h costs clean accuracy (Table B.4)", "clean % error at h = 1e-4, 1e-3, 1e-2, 0.1, 1",
        ", ".join(f"{p4.loc[h, 'clean_error']:.1f}" for h in hs),
        ", ".join(_num(_get(b4, h, "clean_error")) for h in hs))
    add("h-robust", "h = 0.1 is the most robust; h = 1 loses robustness", "empirical % error at 8/255 for the same h",
        ", ".join(f"{p4.loc[h, 'emp_err_8']:.1f}" for h in hs),
        ", ".join(_num(_get(b4, h, "emp_err_8")) for h in hs) + " (16/255: "
        + ", ".join(_num(_get(b4, h, "emp_err_16")) for h in hs) + ")")
    add("regularity", "AT and the penalty shrink gradients and omega (Table B.3)",
        "mean l2 gradient norm: undefended, PGD-AT 8/255, FD l2 lam 1",
        ", ".join(f"{p3.loc[k, 'grad_mean']:.2f}" for k in ("undefended", "pgd-at-8", "fd-l2-lam1")),
        ", ".join(f"{_get(b3, k, 'grad_mean'):.3g}" for k in ("undefended", "pgd-at-8", "fd-l2-lam1")))
    add("bounds", "The L- and omega-bounds are reasonable estimates below the empirical distance; omega is closer",
        "FD l2 lam 1: mean L-bound, mean omega-bound, mean empirical l2 distance",
        ", ".join(f"{p2.loc['fd-l2-lam1', c]:.2f}" for c in ("mean_L_bound", "mean_omega_bound", "mean_empirical")),
        ", ".join(f"{_get(t2, 'fd-l2-lam1', c):.3f}" for c in ("mean_L_bound", "mean_omega_bound", "mean_empirical")))
    audit = bound_audit(grid)
    if len(audit):
        viol = (f"L-bound {audit['L-bound violations %'].mean():.1f}%, omega-bound "
                f"{audit['omega-bound violations %'].mean():.1f}% (mean over {len(audit)} model-norm pairs; "
                f"max {audit['omega-bound violations %'].max():.0f}%)")
    else:
        viol = "\u2013"
    add("bound-violations", "(not in the paper) How often a bound exceeds an adversarial found",
        "% of attacked images where the bound > best attack distance", "not reported", viol)
    chk = check_verdicts(grid)
    masking = (f"check passed for {int(chk['no_gradient_masking'].sum())} of {len(chk)} models"
               if "no_gradient_masking" in chk else "\u2013")
    add("no-masking", "No gradient masking: the gradient-free Boundary attack does not beat the gradient attacks",
        "models where Boundary beats every gradient attack by 2x on at most 1% of images",
        "reported as no masking", masking)
    add("smoothing", "Randomized smoothing confirms the penalty's l2 robustness (Table B.5)",
        "certified % error at r = 0.25 and 0.5: undefended vs FD l2 lam 1",
        f"{_pair(p5.loc['undefended', 'r=0.25'], p5.loc['fd-l2-lam1', 'r=0.25'], 0)} (0.25); "
        f"{_pair(p5.loc['undefended', 'r=0.5'], p5.loc['fd-l2-lam1', 'r=0.5'], 0)} (0.5)",
        f"{_pair(_get(b5, 'undefended', 'r=0.25'), _get(b5, 'fd-l2-lam1', 'r=0.25'), 0)} (0.25); "
        f"{_pair(_get(b5, 'undefended', 'r=0.5'), _get(b5, 'fd-l2-lam1', 'r=0.5'), 0)} (0.5)")
    return pd.DataFrame(rows).set_index("id")


# --------------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------------


def _paper_hours(key: str) -> float:
    row = paper.TABLE1.get(key) or paper.TABLE2.get(key)
    return float(row[-1]) if row else _NAN


def training_costs(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Training wall time of every model, in hours and as a multiple of the undefended model's, beside the
    paper's hours and multiples (CIFAR-10 on one GTX 1080 Ti; models the paper did not train are NaN)."""
    base = _train_hours(grid["undefended"]) if "undefended" in grid else _NAN
    base_p = paper.TABLE1["undefended"][-1]
    rows = []
    for k, m in grid.items():
        ph = _paper_hours(k)
        rows.append({"row": k, "hours": _train_hours(m), "x undefended": _train_hours(m) / base,
                     "epochs": int(len(m.log)), "paper hours": ph, "paper x undefended": ph / base_p})
    return pd.DataFrame(rows).set_index("row")


def attack_costs(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Seconds per image of each attack of the suite (median and range over the grid's models)."""
    per: dict[str, list[float]] = {}
    for m in grid.values():
        if m.suite is None:
            continue
        for job, st in m.suite.summary.get("jobs", {}).items():
            if st.get("seconds_per_image") is not None:
                per.setdefault(job, []).append(float(st["seconds_per_image"]))
    rows = [{"attack": j, "median s/image": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v)),
             "models": len(v)} for j, v in per.items()]
    return pd.DataFrame(rows).set_index("attack") if rows else pd.DataFrame()


def stage_hours(grid: dict[str, ModelResults]) -> pd.Series:
    """Compute time of each stage summed over the grid's models (hours), as ``paperlib reproduce`` measured
    it; with several processes running side by side the wall time is shorter than this sum."""
    tot: dict[str, float] = {}
    for m in grid.values():
        for stage, sec in m.seconds.items():
            tot[stage] = tot.get(stage, 0.0) + sec / 3600
    return pd.Series(tot, name="hours").reindex(["train", "attack", "bound", "certify"]).dropna()


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def model_error_curves(grid: dict[str, ModelResults], norm: str, keys: Sequence[str], eps: Sequence[float]
                       ) -> pd.DataFrame:
    """Empirical % error against eps (:func:`~paperlib.metrics.error_curve`) for the models ``keys`` in ``norm``
    on one eps grid: one column per model (models not attacked yet left out), index eps."""
    data = {k: error_curve(grid[k].suite.best, eps, norm)["error_pct"].to_numpy() for k in keys
            if k in grid and _attacked(grid[k], norm)}
    return pd.DataFrame(data, index=pd.Index(np.asarray(eps, dtype=float), name="eps"))


def figure1(grid: dict[str, ModelResults], *, dataset: str = "Fashion-MNIST"):
    """Figure 1's two panels: empirical % error against the attack size in linf and l2, for the undefended,
    adversarially trained and gradient-regularized models; the paper's CIFAR-10 Table 1 points (linf, 2/255 and
    8/255) as open markers. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    grids = {"linf": np.linspace(0, 48 / 255, 97), "l2": np.linspace(0, 3.0, 121)}
    for ax, norm in zip(axes, ("linf", "l2")):
        curves = model_error_curves(grid, norm, FIGURE1_MODELS[norm], grids[norm])
        for i, k in enumerate(curves.columns):
            color = f"C{i}"
            x = curves.index.to_numpy() * (255 if norm == "linf" else 1)
            ax.plot(x, curves[k], color=color, label=paper.ROW_KEYS.get(k, k), lw=1.8)
            if norm == "linf" and k in paper.TABLE1:
                p = paper.TABLE1[k]
                ax.plot([2, 8], [p[3], p[4]], "o", mfc="none", color=color, ms=7)
        if norm == "linf":
            ax.plot([], [], "o", mfc="none", color="gray", label="paper, CIFAR-10 (Table 1)")
            ax.set_xlabel("perturbation size eps, linf (units of 1/255)")
            for e in (2, 8):
                ax.axvline(e, color="0.85", lw=0.8, zorder=0)
        else:
            ax.set_xlabel("perturbation size eps, l2 (pixel scale [0, 1])")
        ax.set_ylabel("% test error under attack (best of the suite)")
        ax.set_title(f"{dataset}: attacks in {'l-infinity' if norm == 'linf' else 'l2'}")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return fig

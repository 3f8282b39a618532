"""This project's numbers for the paper's tables and figures, read from a profile's grid of finished runs.

:func:`load_grid` reads what ``paperlib reproduce --profile <p>`` wrote (training runs and their attack, bounds
and certification sub-runs) into one :class:`ModelResults` per grid key. The table functions turn it into
frames with the paper's columns (:mod:`paperlib.report.paper`), and
:func:`~paperlib.report.results.side_by_side` puts the paper's numbers and ours next to each other for the book's
table pages:

>>> grid = load_grid("fmnist")                    # doctest: +SKIP
>>> side_by_side("1", table1(grid))               # doctest: +SKIP

Conventions (the paper's, see section 4): errors in percent; clean error on the whole test set; empirical and
bound errors on the profile's seeded image sample (images a model misclassifies count as errors at every
radius); mean distances over that sample with clean errors at distance 0; linf radii named in units of 1/255
(``emp_err_8`` is the empirical error at eps = 8/255). A model or stage that has not run yet gives NaN cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from paperlib.attacks.suite import load_suite
from paperlib.bounds import load_bounds, load_certify, max_certifiable_radius
from paperlib.bounds.audit import BOUND_LABELS, audit_bounds
from paperlib.config import check_choice
from paperlib.metrics import (
    best_values,
    bootstrap_interval,
    certified_error,
    difference_of_proportions_interval,
    empirical_error,
    error_curve,
    error_indicators,
    paired_difference_interval,
    ratio_interval,
    verdict,
    wilson_interval,
)
from paperlib.report import paper
from paperlib.bounds.smoothing import certify_grid_configs
from paperlib.evaluation import resolve_scale, scale_training
from paperlib.reproduce import SMOOTHING_MODELS, diverged_note, recipe_tag, seeded_key, stage_seconds, stage_subrun
from paperlib.reproduce import evaluation_configs as profile_evaluation_configs
from paperlib.reproduce import grid as profile_grid
from paperlib.runs import RunStore, default_runs_dir
from paperlib.training import run_name

__all__ = [
    "ModelResults", "load_grid", "diverged_models", "table1", "table2", "tableB3", "tableB4", "tableB5", "tableB6", "our_table",
    "side_by_side", "fmt", "run_ids", "check_verdicts", "check_messages", "bound_audit", "claims", "training_costs",
    "attack_costs", "stage_hours", "model_error_curves", "figure1", "LINF_EPS", "FIGURE1_MODELS",
    "table_cells", "display_table", "column_header", "format_interval", "comparisons", "closest_comparisons",
    "verdict_table", "grid_names", "CELL_COLUMNS", "DATASET_NAMES", "smoothing_errors",
    "invalid_certificates", "ADVERSARIAL_OMEGA", "AUDITED_BOUNDS", "clipping_table", "estimator_table", "attack_budget", "load_seeds", "seeded_grid", "seed_comparisons",
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
        subruns: the names of the sub-runs loaded into ``suite``, ``bounds`` and ``certify`` (those the pages
            read; other finished sub-runs of the model, e.g. another evaluation scale's, are not listed).
        scale: the evaluation scale the grid was loaded at (``'profile'`` or ``'paper'``,
            :data:`~paperlib.evaluation.SCALES`).
        certify_sigmas: ``{sigma: CertifyResult}`` for every finished sigma of the scale's certification
            (one at the profile scale, the certification grid's three at paper scale); ``certify`` is the first.
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
    subruns: list[str] = field(default_factory=list)
    scale: str = "profile"
    certify_sigmas: dict[float, Any] = field(default_factory=dict)
    #: norms whose matched attack budget (``paperlib.evaluation.MATCHED_ESCALATION``) has not finished yet: the
    #: suite shown is the one at the model's own budget
    matched_pending: tuple[str, ...] = ()


def load_grid(profile: str = "fmnist", runs_dir: str | Path | None = None,
              scale: str | None = None) -> dict[str, ModelResults]:
    """Load every finished model of ``profile``'s grid and its finished evaluation stages.

    ``scale`` picks the grid (:data:`~paperlib.evaluation.SCALES`): ``'profile'``, the profile's own training and
    evaluation budgets; ``'paper'``, the paper-scale grid (:data:`~paperlib.evaluation.PAPER_SCALE_TRAINING`,
    evaluated with the paper-scale budgets); None (the default), ``'paper'`` where the profile defines it (fmnist)
    and ``'profile'`` elsewhere -- what ``paperlib reproduce --profile <p> [--scale paper]`` computed.
    Models that are not trained yet are left out; stages that have not run are None. Nothing is computed.
    """
    return _load_models(profile, runs_dir, scale, (0,))


def load_seeds(profile: str = "fmnist", runs_dir: str | Path | None = None, scale: str | None = None,
               seeds: Sequence[int] = (1, 2)) -> dict[str, ModelResults]:
    """The grid's models trained again with other seeds (``paperlib reproduce --seeds 1,2 --only ...``) that have
    finished, with their finished evaluation stages, keyed ``'<key>@seed<k>'`` (``scale`` as in
    :func:`load_grid`). Nothing is computed; a model without a seed-``k`` run is left out."""
    return _load_models(profile, runs_dir, scale, tuple(int(s) for s in seeds if int(s) != 0))


def _load_models(profile: str, runs_dir: str | Path | None, scale: str | None,
                 seeds: Sequence[int]) -> dict[str, ModelResults]:
    """The finished models of the grid trained with ``seeds`` (keys :func:`~paperlib.reproduce.seeded_key`)."""
    scale = resolve_scale(profile, scale)
    store = RunStore(runs_dir if runs_dir is not None else default_runs_dir())
    recipe, free_schedule = scale_training(profile, scale)
    certify_configs = (list(certify_grid_configs(profile).values()) if scale == "paper"
                       else [profile_evaluation_configs(profile, scale)["certify"]])
    tag = recipe_tag(recipe, free_schedule)
    seconds = stage_seconds(store.root / profile, tag)
    if scale == "paper":  # the evaluation's seconds are recorded apart from the training's
        for key, secs in stage_seconds(store.root / profile, tag + "-paper").items():
            seconds.setdefault(key, {}).update({k: v for k, v in secs.items() if k != "train"})
    out: dict[str, ModelResults] = {}
    for key, cfg in profile_grid(profile, recipe, free_schedule).items():
        for seed in seeds:
            skey = seeded_key(key, seed)
            res = _load_model(store, profile, scale, skey, replace(cfg, seed=seed) if seed else cfg,
                              seconds.get(skey, {}), certify_configs)
            if res is not None:
                out[skey] = res
    return out


def _load_model(store: RunStore, profile: str, scale: str, key: str, cfg, seconds: dict[str, float],
                certify_configs: list) -> ModelResults | None:
    """One model's finished training run and evaluation sub-runs (None while it is not trained)."""
    run = store.run(cfg.profile, run_name(cfg), cfg)
    if not run.is_finished():
        return None
    evals = profile_evaluation_configs(profile, scale, key)  # with the model's matched attack budget
    res = ModelResults(key=key, path=run.path, run_id=f"{cfg.profile}/{run.path.name}", config=cfg,
                       metrics=run.read_json("metrics.json"), log=run.read_table("train_log.csv"),
                       seconds=seconds, scale=scale)
    sub = stage_subrun(run, evals["attack"])
    if not sub.is_finished() and evals["attack"].escalate_norms:
        # the matched budget (MATCHED_ESCALATION) has not finished: the suite at the model's own budget, which the
        # comparisons then flag as attacked at another budget than its partner's
        own = stage_subrun(run, replace(evals["attack"], escalate_norms=()))
        if own.is_finished():
            sub, res.matched_pending = own, evals["attack"].escalate_norms
    if sub.is_finished():
        res.suite = load_suite(sub)
        res.subruns.append(sub.path.name)
    for norm in ("l2", "linf"):
        sub = stage_subrun(run, evals[f"bound-{norm}"])
        if sub.is_finished():
            res.bounds[norm] = load_bounds(sub)
            res.subruns.append(sub.path.name)
    for ccfg in certify_configs if key.split("@")[0] in SMOOTHING_MODELS else []:
        sub = stage_subrun(run, ccfg)
        if sub.is_finished():
            res.certify_sigmas[float(ccfg.sigma)] = load_certify(sub)
            res.subruns.append(sub.path.name)
    res.certify = next(iter(res.certify_sigmas.values()), None)
    return res


def diverged_models(profile: str = "fmnist", runs_dir: str | Path | None = None,
                    scale: str | None = None) -> dict[str, str]:
    """Grid models whose training diverged (non-finite loss), with the recorded message: ``{key: message}``
    (``scale`` picks the grid as in :func:`load_grid`)."""
    store = RunStore(runs_dir if runs_dir is not None else default_runs_dir())
    out = {}
    for key, cfg in profile_grid(profile, *scale_training(profile, resolve_scale(profile, scale))).items():
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


#: The columns of :func:`~paperlib.report.results.table_cells`: the cell's value, its 95% interval, the number
#: of images it is a share or mean of, and how the interval was computed (``'Wilson'``, ``'bootstrap'``, or
#: ``''`` where there is none: training hours, a maximum, an EVT estimate of omega).
CELL_COLUMNS = ["value", "low", "high", "n", "interval"]


def _cell(value: float, low: float = _NAN, high: float = _NAN, n: float = _NAN, interval: str = "") -> dict:
    return {"value": float(value), "low": float(low), "high": float(high), "n": float(n), "interval": interval}


_MISSING = _cell(_NAN)


def _pct_cell(errors: np.ndarray) -> dict:
    """% of images that are errors, with its Wilson interval (``errors``: one bool per image)."""
    e = np.asarray(errors, dtype=bool)
    k, n = int(e.sum()), int(e.size)
    return _cell(100.0 * k / n, *wilson_interval(k, n), n, "Wilson")


def _mean_cell(values: np.ndarray) -> dict:
    """Mean of per-image values (non-finite ones left out), with its bootstrap interval."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return _cell(float(a.mean()) if a.size else _NAN, n=a.size)
    return _cell(float(a.mean()), *bootstrap_interval(a), a.size, "bootstrap")


def _clean_cell(m: ModelResults) -> dict:
    """Clean % error on the whole test set (``metrics.json``), Wilson interval over its ``test_images``."""
    pct = float(m.metrics["clean_error_pct"])
    n = m.metrics.get("test_images")
    if not n:
        return _cell(pct)
    k = int(round(pct * int(n) / 100))
    return _cell(pct, *wilson_interval(k, int(n)), int(n), "Wilson")


def _clean_attacked_cell(m: ModelResults) -> dict:
    """Clean % error on the attacked images: the images ``best.csv`` marks ``'clean'`` (misclassified before
    any attack, distance 0)."""
    if m.suite is None or not len(m.suite.best):
        return _MISSING
    per_image = m.suite.best.groupby("image")["best_attack"].first()
    return _pct_cell(per_image.to_numpy() == "clean")


def _emp_cell(m: ModelResults, norm: str, eps: float) -> dict:
    return _pct_cell(error_indicators(m.suite.best, eps, norm)) if _attacked(m, norm) else _MISSING


#: The per-image omega-distance of the adversarial estimator (``bounds.csv``; not in the paper): the omega-bound
#: with each image's own omega, maximised by projected gradient ascent (:class:`~paperlib.bounds.stage.BoundConfig`'s
#: ``omega_ascent_steps`` and ``omega_per_image``). The tables show it beside the paper's random-sample omega.
ADVERSARIAL_OMEGA = "omega_distance_adversarial_per_image"


def _bound_cell(m: ModelResults, norm: str, radius: float, column: str = "omega_distance") -> dict:
    b = m.bounds.get(norm)
    if b is None or column not in b.table.columns:  # a bounds run without the adversarial estimator
        return _MISSING
    t = b.table
    return _pct_cell(~(t["correct"].to_numpy(bool) & (t[column].to_numpy(float) >= radius)))


def _frame(rows: dict[str, dict[str, float]], keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame([[rows.get(k, {}).get(c, _NAN) for c in columns] for k in keys], index=list(keys),
                      columns=list(columns), dtype=float)
    df.index.name = "row"
    return df


def _keys(table: str) -> list[str]:
    """The paper's rows of ``table`` that a CPU profile can have (no ImageNet rows)."""
    return [k for k in paper.TABLES[table][1] if not k.startswith("imagenet") and not k.startswith(("cohen", "salman"))]


def _cells1(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> dict[str, dict[str, dict]]:
    rows = {}
    for k, m in grid.items():
        r = {"clean_error": _clean_cell(m), "clean_error_attacked": _clean_attacked_cell(m),
             "train_hours": _cell(_train_hours(m))}
        for e in eps255:
            r[_linf_col("omega_err", e)] = _bound_cell(m, "linf", e / 255)
            r[_linf_col("omegaadv_err", e)] = _bound_cell(m, "linf", e / 255, ADVERSARIAL_OMEGA)
            r[_linf_col("emp_err", e)] = _emp_cell(m, "linf", e / 255)
        rows[k] = r
    return rows


def _cols1(eps255: Sequence[float] = LINF_EPS) -> list[str]:
    return (["clean_error", "clean_error_attacked"] + [_linf_col("omega_err", e) for e in eps255]
            + [_linf_col("omegaadv_err", e) for e in eps255] + [_linf_col("emp_err", e) for e in eps255]
            + ["train_hours"])


def _cells2(grid: dict[str, ModelResults]) -> dict[str, dict[str, dict]]:
    rows = {}
    for k, m in grid.items():
        b = m.bounds.get("l2")
        rows[k] = {
            "clean_error": _clean_cell(m), "clean_error_attacked": _clean_attacked_cell(m),
            "mean_L_bound": _mean_cell(b.table["l_bound"].to_numpy()) if b is not None else _MISSING,
            "mean_omega_bound": _mean_cell(b.table["omega_distance"].to_numpy()) if b is not None else _MISSING,
            "mean_omega_bound_adversarial": (_mean_cell(b.table[ADVERSARIAL_OMEGA].to_numpy())
                                             if b is not None and ADVERSARIAL_OMEGA in b.table else _MISSING),
            "mean_empirical": _mean_cell(best_values(m.suite.best, "l2")) if _attacked(m, "l2") else _MISSING,
            "train_hours": _cell(_train_hours(m)),
        }
    return rows


_COLS2 = ["clean_error", "clean_error_attacked", "mean_L_bound", "mean_omega_bound", "mean_omega_bound_adversarial",
          "mean_empirical", "train_hours"]


def _cells3(grid: dict[str, ModelResults]) -> dict[str, dict[str, dict]]:
    rows = {}
    for k, m in grid.items():
        b = m.bounds.get("l2")
        if b is None:
            continue
        om = b.omega()
        rows[k] = {"grad_mean": _mean_cell(b.table["grad_norm_l2"].to_numpy()),
                   "grad_max": _cell(float(b.table["grad_norm_l2"].max())),
                   "omega_0.5": _cell(om.get(0.5, _NAN)), "omega_1.0": _cell(om.get(1.0, _NAN))}
    return rows


#: Table B.4's rows that are another key in the grid.
_B4_ALIAS = {"h=0.1": "fd-l1-lam1-h0.1"}


def _cells4(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> dict[str, dict[str, dict]]:
    rows = {}
    for row in paper.TABLEB4:
        m = grid.get(_B4_ALIAS.get(row, row))
        if m is None:
            continue
        rows[row] = {"clean_error": _clean_cell(m), "clean_error_attacked": _clean_attacked_cell(m),
                     **{_linf_col("emp_err", e): _emp_cell(m, "linf", e / 255) for e in eps255}}
    return rows


def _cols4(eps255: Sequence[float] = LINF_EPS) -> list[str]:
    return ["clean_error", "clean_error_attacked"] + [_linf_col("emp_err", e) for e in eps255]


def smoothing_errors(certify, radii: Sequence[float] = paper.TABLEB5_RADII) -> dict[float, np.ndarray | None]:
    """Per-image certified-error indicators of one certification run at each radius (abstentions and
    misclassifications count as errors); None where the radius is beyond what its ``n`` and ``alpha`` can
    certify (an error by the certificate's construction for every image, not a measurement of the model)."""
    t = certify.table
    cor, rad = t["correct"].to_numpy(bool), t["radius"].to_numpy(float)
    reach = _certifiable_radius(certify)
    return {float(r): (~(cor & (rad >= r)) if r <= reach else None) for r in radii}


def _cells5(grid: dict[str, ModelResults]) -> dict[str, dict[str, dict]]:
    """Table B.5's cells: at each radius the certified error of the sigma that certifies the most there (the
    envelope over the sigmas that ran, as Cohen et al. report it; one sigma at the profile scale)."""
    rows = {}
    for k, m in grid.items():
        if not m.certify_sigmas:
            continue
        per_sigma = [smoothing_errors(c) for c in m.certify_sigmas.values()]
        row = {}
        for r in paper.TABLEB5_RADII:
            errs = [e[float(r)] for e in per_sigma if e[float(r)] is not None]
            # "beyond n" where no sigma's n can certify r: never printed as 100%
            row[f"r={r}"] = (_pct_cell(min(errs, key=lambda e: float(e.mean()))) if errs
                             else _cell(_NAN, interval="beyond n"))
        rows[k] = row
    return rows


def _certifiable_radius(certify) -> float:
    """The largest radius the certificates' ``n`` and ``alpha`` can certify (infinite if the config is unknown)."""
    cfg = certify.config
    if cfg is None:
        return math.inf
    return max_certifiable_radius(cfg.n, cfg.alpha, cfg.sigma)


def _cells6(grid: dict[str, ModelResults]) -> dict[str, dict[str, dict]]:
    return {k: {**{f"r={r}": _bound_cell(m, "l2", r) for r in paper.TABLEB6_RADII},
                **{f"adv r={r}": _bound_cell(m, "l2", r, ADVERSARIAL_OMEGA) for r in paper.TABLEB6_RADII}}
            for k, m in grid.items()}


def _cols6() -> list[str]:
    return [f"r={r}" for r in paper.TABLEB6_RADII] + [f"adv r={r}" for r in paper.TABLEB6_RADII]


def invalid_certificates(name: str, grid: dict[str, ModelResults]) -> set[tuple[str, str]]:
    """The ``(row, column)`` cells of table ``name`` where an omega-bound "certified" % error is below the
    empirical % error at the same radius, which a valid certificate cannot be: Table 1's omega columns against its
    empirical linf columns, Table B.6's radii against the empirical l2 error at that radius. Other tables have no
    such cell (Table B.5 certifies the smoothed classifier, which the attacks do not attack)."""
    out: set[tuple[str, str]] = set()
    for k, m in grid.items():
        if name == "1":
            for e in LINF_EPS:
                emp = _emp_cell(m, "linf", e / 255)["value"]
                for prefix in ("omega_err", "omegaadv_err"):
                    col = _linf_col(prefix, e)
                    cert = _bound_cell(m, "linf", e / 255, "omega_distance" if prefix == "omega_err"
                                       else ADVERSARIAL_OMEGA)["value"]
                    if cert < emp:  # False where either is NaN
                        out.add((k, col))
        elif name == "B.6":
            for r in paper.TABLEB6_RADII:
                emp = _emp_cell(m, "l2", r)["value"]
                for col, column in ((f"r={r}", "omega_distance"), (f"adv r={r}", ADVERSARIAL_OMEGA)):
                    if _bound_cell(m, "l2", r, column)["value"] < emp:
                        out.add((k, col))
    return out


def estimator_table(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """How every L and omega the pages show was estimated, per model and norm (``evt.json`` of its bounds run):
    the L behind the L-bound (``'EVT accepted'`` or the empirical-maximum fallback, with the fit's KS p-value),
    and for the paper's omega and the adversarial one, ``'k of N'`` radii whose extreme-value fit was accepted
    (the others use the empirical maximum)."""
    rows = []
    for k, m in grid.items():
        for norm, b in m.bounds.items():
            ev = b.evt
            fit = ev.get("lipschitz", {}).get("evt", {})
            row = {"row": k, "norm": norm, "L": ev.get("lipschitz_estimator", {}).get("evt", ""),
                   "L fit KS p": float(fit.get("ks_pvalue", _NAN)) if fit else _NAN}
            for name, what in (("omega", "omega (random samples)"), ("omega_adversarial", "omega (adversarial)")):
                fits = ev.get(name) or []
                row[f"{what}: fits accepted"] = (f"{sum(e.get('estimator') == 'EVT accepted' for e in fits)} of "
                                                 f"{len(fits)}") if fits else "not computed"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["row", "norm"]) if rows else pd.DataFrame()


def clipping_table(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Per model trained with gradient-norm clipping: the clipping norm and the % of optimizer steps it clipped
    (over all epochs, in the first epoch, in the last), from ``train_log.csv``'s ``clipped_pct``; the last
    epoch's test error beside them. Empty for a grid trained without clipping."""
    rows = {}
    for k, m in grid.items():
        clip = getattr(m.config, "grad_clip", None)
        log = m.log
        if not clip or log is None or "clipped_pct" not in log.columns:
            continue
        pct, steps = log["clipped_pct"].to_numpy(float), log["steps"].to_numpy(float)
        rows[k] = {"clip norm": float(clip), "clipped % of steps": float((pct * steps).sum() / steps.sum()),
                   "first epoch": float(pct[0]), "last epoch": float(pct[-1]),
                   "test % error (last epoch)": float(log["test_error_pct"].iloc[-1])}
    return pd.DataFrame.from_dict(rows, orient="index")


def _values_of(rows: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    return {k: {c: cell["value"] for c, cell in r.items()} for k, r in rows.items()}


def table1(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> pd.DataFrame:
    """Table 1 (linf): clean error (whole test set, and on the attacked images), omega-bound and empirical %
    error at each eps (in 1/255), train hours. Intervals: :func:`~paperlib.report.results.table_cells`."""
    return _frame(_values_of(_cells1(grid, eps255)), _keys("1"), _cols1(eps255))


def table2(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table 2 (l2): clean error (whole test set, and on the attacked images), mean distance by the L-bound, the
    omega-bound and the best attack (images no attack broke left out); hours. Intervals:
    :func:`~paperlib.report.results.table_cells`."""
    return _frame(_values_of(_cells2(grid)), _keys("2"), _COLS2)


def tableB3(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.3: mean and max l2 gradient norm of the margin loss, omega(0.5) and omega(1.0) (l2)."""
    return _frame(_values_of(_cells3(grid)), _keys("B.3"), paper.TABLEB3_COLUMNS)


def tableB4(grid: dict[str, ModelResults], eps255: Sequence[float] = LINF_EPS) -> pd.DataFrame:
    """Table B.4 (the h study, squared l1, lam 1): clean error and empirical linf % error per eps."""
    return _frame(_values_of(_cells4(grid, eps255)), list(paper.TABLEB4), _cols4(eps255))


def tableB5(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.5: randomized-smoothing certified % error at the paper's l2 radii."""
    return _frame(_values_of(_cells5(grid)), _keys("B.5"), [f"r={r}" for r in paper.TABLEB5_RADII])


def tableB6(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table B.6: omega-bound certified % error at the paper's l2 radii."""
    return _frame(_values_of(_cells6(grid)), _keys("B.6"), _cols6())


_TABLES = {"1": table1, "2": table2, "B.3": tableB3, "B.4": tableB4, "B.5": tableB5, "B.6": tableB6}
_CELLS = {"1": (_cells1, lambda: _keys("1"), _cols1), "2": (_cells2, lambda: _keys("2"), lambda: _COLS2),
          "B.3": (_cells3, lambda: _keys("B.3"), lambda: list(paper.TABLEB3_COLUMNS)),
          "B.4": (_cells4, lambda: list(paper.TABLEB4), _cols4),
          "B.5": (_cells5, lambda: _keys("B.5"), lambda: [f"r={r}" for r in paper.TABLEB5_RADII]),
          "B.6": (_cells6, lambda: _keys("B.6"), _cols6)}


def our_table(name: str, grid: dict[str, ModelResults]) -> pd.DataFrame:
    """This project's table ``name`` ('1', '2', 'B.3', 'B.4', 'B.5', 'B.6') from ``grid``."""
    check_choice("table", name, _TABLES)
    return _TABLES[name](grid)


def table_cells(name: str, grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Table ``name``'s cells with their uncertainty, tidy: one row per (table row, column) with
    :data:`~paperlib.report.results.CELL_COLUMNS`. Percentages carry a 95% Wilson interval over the images
    they are a share of (the whole test set for the clean error, the attacked sample otherwise), mean distances
    and the mean gradient norm a 95% percentile bootstrap interval over the images (seeded); training hours, maxima and omega
    (an extreme-value estimate) carry none. ``value`` equals :func:`~paperlib.report.results.our_table`'s cell."""
    check_choice("table", name, _CELLS)
    cells, keys, cols = _CELLS[name]
    rows = cells(grid)
    data = [{"row": k, "column": c, **rows.get(k, {}).get(c, _MISSING)} for k in keys() for c in cols()]
    return pd.DataFrame(data).set_index(["row", "column"])[CELL_COLUMNS]


def column_header(name: str, column: str) -> str:
    """The human header (with units) of ``column`` of table ``name``, e.g. ``'omega-bound % error at eps =
    2/255'`` for Table 1's ``omega_err_2``."""
    fixed = {"clean_error": "clean % error (whole test set)", "clean_error_attacked": "clean % error (attacked images)",
             "train_hours": "training hours", "mean_L_bound": "mean L-bound l2 distance",
             "mean_omega_bound": "mean omega-bound l2 distance",
             "mean_omega_bound_adversarial": "mean adversarial omega-bound l2 distance (per image; not in the paper)",
             "mean_empirical": "mean best-attack l2 distance",
             "grad_mean": "mean l2 norm of the margin loss's input gradient",
             "grad_max": "max l2 norm of the margin loss's input gradient",
             "omega_0.5": "omega(0.5), l2", "omega_1.0": "omega(1.0), l2"}
    if column in fixed:
        return fixed[column]
    for prefix, what in (("omega_err_", "omega-bound % error"),
                         ("omegaadv_err_", "adversarial omega-bound % error (per image; not in the paper)"),
                         ("emp_err_", "empirical % error")):
        if column.startswith(prefix):
            return f"{what} at eps = {column[len(prefix):]}/255"
    if column.startswith("adv r="):
        return f"adversarial omega-bound (per image; not in the paper) certified % error at l2 radius {column[6:]}"
    if column.startswith("r="):
        what = "smoothing certified % error" if name == "B.5" else "omega-bound certified % error"
        return f"{what} at l2 radius {column[2:]}"
    return column


def format_interval(value: float, low: float = _NAN, high: float = _NAN, digits: int = 1) -> str:
    """``'12.3 [8.1, 17.9]'`` (value and its interval), ``'12.3'`` without an interval, an en dash for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _digits(column: str) -> int:
    return 3 if column.startswith(("mean_", "grad_", "omega_0", "omega_1", "train_")) else 1


def display_table(name: str, grid: dict[str, ModelResults], *, rows: str = "paper") -> pd.DataFrame:
    """Table ``name`` for reading: :func:`~paperlib.report.results.side_by_side` with human headers
    (:func:`~paperlib.report.results.column_header`) and our cells formatted as ``'value [low, high]'``
    (:func:`~paperlib.report.results.format_interval`, intervals of :func:`~paperlib.report.results.table_cells`).
    Strings only; the numbers are in :func:`~paperlib.report.results.our_table` and
    :func:`~paperlib.report.results.table_cells`."""
    ours = our_table(name, grid)
    cells = table_cells(name, grid)
    sbs = side_by_side(name, ours, rows=rows)
    keys = _side_by_side_keys(name, ours, rows)
    data = {}
    for col, side in sbs.columns:
        d = _digits(col)
        if side == "ours" and col in ours.columns:
            data[(column_header(name, col), side)] = [
                format_interval(*(cells.loc[(k, col), ["value", "low", "high"]] if (k, col) in cells.index
                                  else (_NAN, _NAN, _NAN)), digits=d) for k in keys]
        else:
            # the paper's cells as printed (their own digits)
            data[(column_header(name, col), side)] = ["\u2013" if math.isnan(float(v)) else f"{float(v):g}"
                                                      for v in sbs[(col, side)]]
    df = pd.DataFrame(data, index=sbs.index)
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df


def _paper_rows(name: str) -> pd.DataFrame:
    theirs = paper.paper_table(name)
    return theirs.loc[[k for k in theirs.index if not k.startswith("imagenet")]]


def _side_by_side_keys(name: str, ours: pd.DataFrame, rows: str) -> list[str]:
    theirs = _paper_rows(name)
    return list(theirs.index) + ([k for k in ours.index if k not in theirs.index] if rows == "all" else [])


def side_by_side(name: str, ours: pd.DataFrame, *, ours_label: str = "ours", paper_label: str = "paper",
                 rows: str = "paper") -> pd.DataFrame:
    """The paper's table ``name`` and ``ours`` in one frame: columns ``(column, paper_label | ours_label)``.

    Rows are the paper's (labels as printed, ImageNet rows left out) plus rows only we have (``rows='all'``).
    A column only one side has (e.g. our extra linf radii) shows NaN on the other side.
    """
    theirs = _paper_rows(name)
    keys = _side_by_side_keys(name, ours, rows)
    # our column order where ours has every paper column (Table 1's extra clean error and radii in place)
    cols = (list(ours.columns) if set(theirs.columns) <= set(ours.columns)
            else list(dict.fromkeys(list(theirs.columns) + list(ours.columns))))
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
    """Which run each row comes from: grid key, run id, the attack/bounds/certify sub-runs loaded into the grid
    (``subruns`` of :class:`~paperlib.report.results.ModelResults`), images."""
    rows = []
    for k in keys if keys is not None else grid:
        m = grid.get(k)
        if m is None:
            continue
        subs = sorted(m.subruns)  # the sub-runs this grid's pages read, not every finished one on disk
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


#: The lower bounds :func:`~paperlib.report.results.bound_audit` checks, ``bounds.csv`` column -> the name its
#: column carries (``'<name> violations %'``; :data:`paperlib.bounds.audit.BOUND_LABELS`); the adversarial ones
#: only where the bounds run computed them.
AUDITED_BOUNDS = BOUND_LABELS


def bound_audit(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Per model and norm: % of attacked images where a lower bound exceeds the best adversarial distance found
    (a violated lower bound; :func:`paperlib.bounds.audit.audit_bounds`): the L-bound, the paper's omega-bound and,
    where the bounds run has them, the adversarial omega-bound with omega's supremum over the images and with each
    image's own omega (:data:`AUDITED_BOUNDS`; NaN where a run lacks one). ``compared``: the images some attack
    broke; ``max excess``: the largest amount by which the per-image adversarial bound exceeds an attack."""
    rows = []
    for k, m in grid.items():
        if m.suite is None:
            continue
        for norm, b in m.bounds.items():
            cols = [c for c in AUDITED_BOUNDS if c in b.table.columns]
            a = audit_bounds(b.table, m.suite.best, norm, columns=cols).set_index("bound")
            row = {"row": k, "norm": norm, "compared": int(a.loc["l_bound", "n_compared"])}
            for c, what in AUDITED_BOUNDS.items():
                row[f"{what} violations %"] = float(a.loc[c, "violation_rate"]) if c in a.index else _NAN
            row["max excess"] = float(a.loc[ADVERSARIAL_OMEGA, "max_excess"]) if ADVERSARIAL_OMEGA in a.index else _NAN
            rows.append(row)
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


#: How a dataset id of :func:`paperlib.data.load_dataset` is written in a sentence (other ids as they are).
DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "imagenet": "ImageNet-1k",
                 "synthetic-fashion-mnist": "synthetic Fashion-MNIST", "synthetic-cifar10": "synthetic CIFAR-10",
                 "synthetic-imagenet": "synthetic ImageNet"}


def grid_names(grid: dict[str, ModelResults]) -> dict[str, Any]:
    """The names a generated text may use for ``grid``: its ``profile``, ``dataset`` (as written in a sentence,
    :data:`~paperlib.report.results.DATASET_NAMES`) and ``model`` (from the training configs), ``n_images``,
    the number of attacked images (the smallest over the models), the evaluation ``scale`` and the ``command``
    that computes the grid."""
    cfgs = [m.config for m in grid.values() if m.config is not None]

    def pick(attr: str, names: dict[str, str] | None = None) -> str:
        return ", ".join(sorted({(names or {}).get(str(getattr(c, attr)), str(getattr(c, attr))) for c in cfgs})) or "?"

    n = [int(m.suite.best["image"].nunique()) for m in grid.values() if m.suite is not None and len(m.suite.best)]
    scale = ", ".join(sorted({m.scale for m in grid.values()})) or "profile"
    profile = pick("profile")
    command = f"paperlib reproduce --profile {profile}" + (" --scale paper" if scale == "paper" else "")
    return {"profile": profile, "dataset": pick("dataset", DATASET_NAMES), "model": pick("model"),
            "n_images": min(n) if n else 0, "scale": scale, "command": command}


def _label(key: str) -> str:
    """A grid key as the paper's row label (the h-study rows: the squared-l1 FD model at that h)."""
    if key in paper.ROW_KEYS:
        return paper.ROW_KEYS[key]
    if key.startswith("h="):
        return f"Squared l1 norm (FD), lambda = 1, {key.replace('=', ' = ')}"
    return key


# Per-image values, indexed by image id, so that two models' values are paired by image.

def _by_image(values: np.ndarray, images: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=np.float64), index=pd.Index(np.asarray(images), name="image"))


def _s_emp(norm: str, eps: float):
    def get(m: ModelResults) -> pd.Series | None:
        if not _attacked(m, norm):
            return None
        b = m.suite.best[m.suite.best["norm"] == norm]
        return _by_image(100.0 * error_indicators(b, eps), b["image"].to_numpy())
    return get


def _s_best(norm: str):
    def get(m: ModelResults) -> pd.Series | None:
        if not _attacked(m, norm):
            return None
        b = m.suite.best[m.suite.best["norm"] == norm]
        return _by_image(b["best"].to_numpy(float), b["image"].to_numpy())
    return get


def _s_bound(column: str, norm: str = "l2"):
    def get(m: ModelResults) -> pd.Series | None:
        b = m.bounds.get(norm)
        return None if b is None else _by_image(b.table[column].to_numpy(float), b.table["image"].to_numpy())
    return get


def _s_smoothing_error(radius: float):
    def get(m: ModelResults) -> pd.Series | None:
        if m.certify is None:
            return None
        t = m.certify.table
        err = ~(t["correct"].to_numpy(bool) & (t["radius"].to_numpy(float) >= radius))
        return _by_image(100.0 * err, t["image"].to_numpy())
    return get


def _epoch_seconds(m: ModelResults) -> np.ndarray | None:
    """Per-epoch training seconds of the run (``train_log.csv``), the replicates of a training-cost ratio."""
    if m.log is None or "train_seconds" not in getattr(m.log, "columns", ()):
        return None
    v = m.log["train_seconds"].to_numpy(float)
    return v[np.isfinite(v)]


#: Where a profile's side-by-side training benchmark lives, relative to its runs (``benchmarks/bench_training.py``)
TRAINING_BENCHMARK = Path("benchmarks") / "training.json"

#: The benchmark's method of each training method of the grid (``TrainConfig.method``, or the penalty's scheme)
def _benchmark_note(grid: dict[str, ModelResults], a: str, b: str) -> str:
    """The per-step cost ratio of training methods ``a`` / ``b`` (the benchmark's names: 'fd', 'dbp', 'pgd-at', ...) from the profile's
    side-by-side benchmark (:data:`TRAINING_BENCHMARK` beside the grid's runs), per benchmarked model; '' when
    there is none. The grid's own training seconds come from a shared machine; these were measured in one run."""
    m = next(iter(grid.values()), None)
    path = None if m is None else Path(m.path).parent / TRAINING_BENCHMARK
    if path is None or not path.is_file():
        return ""
    rec = json.loads(path.read_text())
    ms = {(r["model"], r["method"]): float(r["ms_per_step"]) for r in rec.get("rows", [])}
    parts = [f"{model} {ms[(model, a)] / ms[(model, b)]:.2f}"
             for model in dict.fromkeys(k[0] for k in ms) if (model, a) in ms and (model, b) in ms]
    if not parts:
        return ""
    return (f"{a} / {b} per training step in the side-by-side benchmark {path.parent.parent.name}/"
            f"{TRAINING_BENCHMARK.as_posix()} of the run store, {rec.get('machine', 'this machine')}: "
            + ", ".join(parts))


_UNITS = {"points": "percentage points", "l2": "l2 distance", "ratio": "ratio", "norm": "gradient norm"}


def _describe(row: dict, names: dict[str, Any]) -> str:
    """One comparison as generated text: what minus what, the value and interval, and what the interval says."""
    if row["verdict"] == "not evaluated":
        return f"{row['comparison']}: {row['note']} (not counted)"
    d = 3 if row["unit"] in ("l2", "norm") else 2 if row["unit"] == "ratio" else 1
    op = " / " if row["unit"] == "ratio" else " \u2212 "
    t = f"{row['target']:g}"
    side, other = {"positive": ("above", "at or below"), "negative": ("below", "at or above")}[row["direction"]]
    where = {"holds": f"lies {side} {t}", "not resolved": f"contains {t}",
             "does not hold": f"lies {other} {t}"}[row["verdict"]]
    sample = (f"{int(row['n'])} {names['dataset']} test images" if row["unit"] != "ratio"
              else f"{int(row['n'])} training epochs")
    what = (f" ({_label(row['a'])})" if row["a"] == row["b"]
            else f": {row.get('a_label') or _label(row['a'])}{op}{row.get('b_label') or _label(row['b'])}")
    return (f"{row['comparison']}{what} = {row['difference']:.{d}f} "
            f"[{row['low']:.{d}f}, {row['high']:.{d}f}] ({row['measure']}; {row['interval']}, {sample}): "
            f"the 95% interval {where}" + (f" ({row['note']})" if row.get("note") else ""))


def attack_budget(m: ModelResults, norm: str) -> int:
    """The multiple of the suite's budgets behind a model's best distances in ``norm``: 1, or ``2**r`` after ``r``
    escalation rounds (``AttackConfig.escalate``; the convergence record's ``factor``)."""
    if m.suite is None:
        return 1
    return int(((m.suite.summary.get("convergence") or {}).get("factor") or {}).get(norm, 1))


def _budget_note(ma: ModelResults, mb: ModelResults, measure: str) -> str:
    """A warning where the two models' attacks ended at different budgets in the measure's norm: the one attacked
    with less looks more robust than the same budget would show."""
    norm = "l2" if "best-attack l2" in measure else "linf" if "(linf)" in measure else None
    if norm is None or ma is None or mb is None:
        return ""
    fa, fb = attack_budget(ma, norm), attack_budget(mb, norm)
    if fa == fb:
        return ""
    pending = [m.key for m in (ma, mb) if norm in m.matched_pending]
    return (f"attack budgets differ: {ma.key} x{fa}, {mb.key} x{fb} in {norm}, after escalation where the "
            "convergence check failed"
            + (f" (the matched budget of {' and '.join(pending)} has not finished yet)" if pending else "")
            + "; the model attacked with less looks more robust than equal budgets would show")


def comparisons(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Every comparison behind :func:`~paperlib.report.results.claims`, one row each: the claim id, the two
    models ``a`` and ``b``, the measure and its unit, ``difference`` (``a - b``; for training cost the ratio
    ``a / b``) with its 95% interval ``low``/``high`` and how it was computed (paired bootstrap over the same images where the
    per-image outcomes are stored; Newcombe's score interval for the clean error on the whole test set; an
    unpaired bootstrap over training epochs for costs), the claimed ``direction`` of ``difference`` against
    ``target`` (0, or the claimed ratio), the :func:`~paperlib.metrics.verdict` and ``closeness``,
    ``|difference - target| / (high - low)`` (small: the comparison the data can least tell apart)."""
    rows: list[dict] = []

    def add(cid, comparison, measure, unit, a, b, value, target=0.0, direction="positive", n=_NAN, interval="",
            note="", a_label="", b_label=""):
        row = {"claim": cid, "comparison": comparison, "a": a, "b": b, "a_label": a_label, "b_label": b_label,
               "measure": measure, "unit": unit,
               "difference": _NAN, "low": _NAN, "high": _NAN, "n": n, "interval": interval, "target": target,
               "direction": direction, "verdict": "not evaluated", "closeness": _NAN, "note": note}
        if value is not None:
            d, lo, hi = value
            v = verdict(lo - target, hi - target, direction)
            width = hi - lo
            close = (abs(d - target) / width if width > 0 else (0.0 if d == target else math.inf))
            row.update(difference=d, low=lo, high=hi, verdict=v, closeness=close)
        rows.append(row)

    def paired(cid, comparison, measure, unit, a, b, get_a, get_b=None, target=0.0, direction="positive"):
        get_b = get_b or get_a
        ma, mb = grid.get(a), grid.get(b)
        sa = get_a(ma) if ma is not None else None
        sb = get_b(mb) if mb is not None else None
        if sa is None or sb is None:
            missing = [k for k, s in ((a, sa), (b, sb)) if s is None]
            add(cid, comparison, measure, unit, a, b, None,
                note=f"{' and '.join(_label(k) for k in missing)} not evaluated in this grid")
            return
        both = pd.concat([sa.rename("a"), sb.rename("b")], axis=1, join="inner")
        both = both[np.isfinite(both).all(axis=1)]
        if len(both) < 2:
            add(cid, comparison, measure, unit, a, b, None, note=f"{len(both)} image(s) with both values")
            return
        add(cid, comparison, measure, unit, a, b,
            paired_difference_interval(both["a"].to_numpy(), both["b"].to_numpy()), target, direction,
            n=len(both), interval="paired bootstrap", note=_budget_note(ma, mb, measure))

    def clean(cid, comparison, a, b):
        ma, mb = grid.get(a), grid.get(b)
        if ma is None or mb is None or not ma.metrics.get("test_images") or not mb.metrics.get("test_images"):
            add(cid, comparison, "clean % error, whole test set", "points", a, b, None,
                note=f"{_label(a if ma is None else b)} not evaluated in this grid")
            return
        na, nb = int(ma.metrics["test_images"]), int(mb.metrics["test_images"])
        ka = int(round(float(ma.metrics["clean_error_pct"]) * na / 100))
        kb = int(round(float(mb.metrics["clean_error_pct"]) * nb / 100))
        add(cid, comparison, "clean % error, whole test set", "points", a, b,
            difference_of_proportions_interval(ka, na, kb, nb), n=min(na, nb), interval="Newcombe score interval")

    def cost(cid, comparison, a_keys, b_keys, target, a_label="", b_label="", methods=("", "")):
        sa = [_epoch_seconds(grid[k]) for k in a_keys if k in grid]
        sb = [_epoch_seconds(grid[k]) for k in b_keys if k in grid]
        sa, sb = [v for v in sa if v is not None], [v for v in sb if v is not None]
        a, b = " + ".join(a_keys), " + ".join(b_keys)
        if not sa or not sb or sum(map(len, sa)) < 2 or sum(map(len, sb)) < 2:
            add(cid, comparison, "training seconds per epoch", "ratio", a, b, None,
                note="the training logs of these models are not in this grid", a_label=a_label, b_label=b_label)
            return
        xa, xb = np.concatenate(sa), np.concatenate(sb)
        add(cid, comparison, "mean training seconds per epoch", "ratio", a, b, ratio_interval(xa, xb), target,
            n=min(len(xa), len(xb)), interval="bootstrap over epochs", a_label=a_label, b_label=b_label,
            note=_benchmark_note(grid, *methods))

    emp = {e: _s_emp("linf", e / 255) for e in (8, 16)}
    best_l2 = _s_best("l2")
    for e in (8, 16):
        paired("gain-linf", f"linf error at {e}/255", f"empirical % error at eps = {e}/255 (linf)", "points",
               "undefended", "fd-l1-lam1-h0.1", emp[e])
    paired("gain-l2", "mean l2 distance", "mean best-attack l2 distance", "l2", "fd-l2-lam1", "undefended", best_l2)
    clean("tradeoff", "clean error, lam 1 vs 0.1", "fd-l2-lam1", "fd-l2-lam0.1")
    for e in (8, 16):
        paired("vs-at-linf", f"linf error at {e}/255", f"empirical % error at eps = {e}/255 (linf)", "points",
               "fd-l1-lam1-h0.1", "pgd-at-8", emp[e])
    paired("vs-at-l2", "mean l2 distance", "mean best-attack l2 distance", "l2", "fd-l2-lam1", "pgd-at-8", best_l2)
    cost("at-cost", "AT / FD training time", ["pgd-at-8"], ["fd-l1-lam1-h0.1"], 2.0, methods=("pgd-at", "fd"))
    paired("fd-vs-dbp-robust", "linf error at 8/255", "empirical % error at eps = 8/255 (linf)", "points",
           "dbp-l1-lam1", "fd-l1-lam1-h0.1", emp[8])
    paired("fd-vs-dbp-robust-l2", "mean l2 distance", "mean best-attack l2 distance", "l2", "fd-l2-lam1",
           "dbp-l2-lam1", best_l2)
    cost("fd-vs-dbp-cost", "DBP / FD training time", ["dbp-l1-lam0.1", "dbp-l1-lam1", "dbp-l2-lam0.1", "dbp-l2-lam1"],
         ["fd-l1-lam0.1", "fd-l1-lam1-h0.1", "fd-l2-lam0.1", "fd-l2-lam1"], 1.0, "the DBP models (l1, l2; lam 0.1, 1)",
         "the FD models (the same four)", methods=("dbp", "fd"))
    for h in ("h=1e-4", "h=1e-3", "h=1e-2"):
        clean("h-clean", f"clean error, {h} vs h = 0.1", h, "fd-l1-lam1-h0.1")
    for h in ("h=1e-4", "h=1e-3", "h=1e-2", "h=1"):
        paired("h-robust", f"linf error at 8/255, {h} vs h = 0.1", "empirical % error at eps = 8/255 (linf)",
               "points", h, "fd-l1-lam1-h0.1", emp[8])
    grad = _s_bound("grad_norm_l2")
    for k in ("pgd-at-8", "fd-l2-lam1"):
        paired("regularity", f"gradient norm, undefended vs {k}", "mean l2 norm of the margin loss's input gradient",
               "norm", "undefended", k, grad)
    for col, what in (("omega_distance", "omega-bound"), ("l_bound", "L-bound")):
        paired("bounds", f"attack distance vs {what}", f"mean best-attack l2 distance minus mean {what}", "l2",
               "fd-l2-lam1", "fd-l2-lam1", best_l2, _s_bound(col))
    paired("bounds", "omega-bound vs L-bound", "mean omega-bound minus mean L-bound (l2)", "l2", "fd-l2-lam1",
           "fd-l2-lam1", _s_bound("omega_distance"), _s_bound("l_bound"))
    for r in (0.25, 0.5):
        paired("smoothing", f"certified error at r = {r}", f"smoothing certified % error at l2 radius {r}", "points",
               "undefended", "fd-l2-lam1", _s_smoothing_error(r))
    return pd.DataFrame(rows)


def closest_comparisons(comps: pd.DataFrame, k: int = 2) -> pd.DataFrame:
    """The ``k`` evaluated comparisons of :func:`~paperlib.report.results.comparisons` with the smallest
    ``closeness`` (the difference's distance from the claim's boundary relative to its interval width): the
    ones more training seeds should settle. Training-time ratios are left out: their spread comes from the
    machine's load while a model trained, which more seeds do not average out (the side-by-side benchmark of
    the performance page measures the cost)."""
    evaluated = comps[(comps["verdict"] != "not evaluated") & (comps["unit"] != "ratio")]
    return evaluated.sort_values("closeness", kind="mergesort").head(k)


def seeded_grid(grid: dict[str, ModelResults], seeded: dict[str, ModelResults], seed: int) -> dict[str, ModelResults]:
    """``grid`` with every model that has a finished seed-``seed`` run in ``seeded`` (:func:`load_seeds`) replaced
    by that run."""
    return {key: seeded.get(seeded_key(key, seed), m) for key, m in grid.items()}


def seed_comparisons(grid: dict[str, ModelResults], seeded: dict[str, ModelResults],
                     which: pd.DataFrame | None = None) -> pd.DataFrame:
    """The comparisons made again with retrained models (:func:`load_seeds`): for every seed ``k`` of ``seeded``,
    :func:`comparisons` on the grid with each model that has a seed-``k`` run replaced by it, kept where both
    models of a comparison were retrained and the retrained ones have the stages it needs, beside the grid's own
    (seed 0) row.

    ``which`` (rows of :func:`comparisons`, e.g. :func:`closest_comparisons`) restricts the output to those
    comparisons. Columns: ``claim``, ``comparison``, ``seed``, ``a``, ``b``, ``difference``, ``low``, ``high``,
    ``verdict``; no rows where nothing was retrained."""
    cols = ["claim", "comparison", "seed", "a", "b", "difference", "low", "high", "verdict"]
    seeds = sorted({int(k.split("@seed")[1]) for k in seeded if "@seed" in k})
    base = comparisons(grid).assign(seed=0)
    rows = []
    for seed in seeds:
        retrained = {key for key in grid if seeded_key(key, seed) in seeded}
        if not retrained:
            continue
        c = comparisons(seeded_grid(grid, seeded, seed)).assign(seed=seed)
        # a retrained model without the comparison's stage (seeds are trained and attacked only; a stage still
        # running) has nothing to say about it
        rows.append(c[c["a"].isin(retrained) & c["b"].isin(retrained) & (c["verdict"] != "not evaluated")])
    again = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    if again.empty:
        return pd.DataFrame(columns=cols)
    key = ["claim", "comparison", "a", "b"]
    again = pd.concat([base.merge(again[key].drop_duplicates(), on=key), again], ignore_index=True)
    if which is not None:
        again = again.merge(which[key].drop_duplicates(), on=key)
    return again.sort_values(["claim", "comparison", "seed"], kind="mergesort")[cols].reset_index(drop=True)


def _combine(verdicts: Sequence[str]) -> str:
    """A claim of several comparisons holds if every evaluated one holds, does not hold if one does not."""
    v = [x for x in verdicts if x != "not evaluated"]
    if not v:
        return "not resolved"
    if "does not hold" in v:
        return "does not hold"
    return "holds" if all(x == "holds" for x in v) else "not resolved"


def claims(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """The paper's claims with the numbers that test them, the paper's (CIFAR-10) beside ours, and a verdict
    computed from our numbers.

    One row per claim: ``id``, ``claim``, ``measure`` (what is compared, in which units), ``paper`` and
    ``ours`` (the same comparison as text), ``verdict`` (``'holds'``, ``'does not hold'`` or ``'not resolved'``,
    from the 95% intervals of :func:`~paperlib.report.results.comparisons`: a claim of several comparisons holds
    where every one holds)
    and ``why`` (generated from the numbers and the grid's own names, :func:`~paperlib.report.results.grid_names`).
    """
    t1, t2, b3, b4 = table1(grid), table2(grid), tableB3(grid), tableB4(grid)
    p1, p2, p3, p4 = (paper.paper_table(n) for n in ("1", "2", "B.3", "B.4"))
    b5, p5 = tableB5(grid), paper.paper_table("B.5")
    hours = {k: _train_hours(m) for k, m in grid.items()}
    ph = {k: _paper_hours(k) for k in paper.ROW_KEYS}
    names = grid_names(grid)
    comps = comparisons(grid)
    rows = []

    def add(cid, claim, measure, paper_text, ours_text, verdict_text=None, why=None):
        mine = comps[comps["claim"] == cid]
        if verdict_text is None:
            verdict_text = _combine(mine["verdict"].tolist())
            why = "; ".join(_describe(r, names) for r in mine.to_dict("records")) or "nothing to compare"
        rows.append({"id": cid, "claim": claim, "measure": measure, "paper": paper_text, "ours": ours_text,
                     "verdict": verdict_text, "why": why})

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
    add("fd-vs-dbp-robust", "FD is at least as robust as DBP at the same lambda (linf)",
        "empirical % error at 8/255, FD vs DBP (l1, lam 1)",
        _pair(p1.loc["fd-l1-lam1-h0.1", "emp_err_8"], p1.loc["dbp-l1-lam1", "emp_err_8"]),
        _pair(_get(t1, "fd-l1-lam1-h0.1", "emp_err_8"), _get(t1, "dbp-l1-lam1", "emp_err_8")))
    add("fd-vs-dbp-robust-l2", "FD is at least as robust as DBP at the same lambda (l2)",
        "mean best-attack l2 distance, FD vs DBP (l2, lam 1)",
        _pair(p2.loc["fd-l2-lam1", "mean_empirical"], p2.loc["dbp-l2-lam1", "mean_empirical"], 2),
        _pair(_get(t2, "fd-l2-lam1", "mean_empirical"), _get(t2, "dbp-l2-lam1", "mean_empirical"), 2))
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
    add(*_violations_row(grid, names))
    add(*_masking_row(grid))
    add("smoothing", "Randomized smoothing confirms the penalty's l2 robustness (Table B.5)",
        "certified % error at r = 0.25 and 0.5: undefended vs FD l2 lam 1",
        f"{_pair(p5.loc['undefended', 'r=0.25'], p5.loc['fd-l2-lam1', 'r=0.25'], 0)} (0.25); "
        f"{_pair(p5.loc['undefended', 'r=0.5'], p5.loc['fd-l2-lam1', 'r=0.5'], 0)} (0.5)",
        f"{_pair(_get(b5, 'undefended', 'r=0.25'), _get(b5, 'fd-l2-lam1', 'r=0.25'), 0)} (0.25); "
        f"{_pair(_get(b5, 'undefended', 'r=0.5'), _get(b5, 'fd-l2-lam1', 'r=0.5'), 0)} (0.5)")
    return pd.DataFrame(rows).set_index("id")


def _violations_row(grid: dict[str, ModelResults], names: dict[str, Any]) -> tuple:
    """The bound-violation row: a lower bound is refuted by one adversarial closer than it, and no finite sample
    proves it, so the verdict is 'does not hold' where the Wilson interval of the violation rate excludes 0
    and 'not resolved' otherwise."""
    audit = bound_audit(grid)
    measure = "% of attacked images where the bound > best attack distance"
    claim = "(not in the paper) The L- and omega-bounds are lower bounds: no attack finds an adversarial closer"
    if not len(audit):
        return ("bound-violations", claim, measure, "not reported", "\u2013", "not resolved", "no bounds audited")
    parts, verdicts, ours = [], [], []
    for what in AUDITED_BOUNDS.values():
        col = f"{what} violations %"
        have = audit[col].notna()
        if not have.any():
            continue
        k = int(round(float((audit.loc[have, col] * audit.loc[have, "compared"] / 100).sum())))
        n = int(audit.loc[have, "compared"].sum())
        lo, hi = wilson_interval(k, n)
        if what in ("L-bound", "omega-bound"):  # the paper's bounds carry the verdict; ours are reported beside
            verdicts.append("does not hold" if lo > 0 else "not resolved")
        ours.append(f"{what} {100 * k / n:.1f}%")
        parts.append(f"{what}: {k} of {n} image-model-norm cases violated ({100 * k / n:.1f}% [{lo:.1f}, {hi:.1f}], "
                     f"Wilson; {int(have.sum())} model-norm pairs of {names['n_images']} {names['dataset']} "
                     f"images; max {audit[col].max():.1f}% on one model)")
    return ("bound-violations", claim, measure, "not reported", ", ".join(ours),
            "does not hold" if "does not hold" in verdicts else "not resolved", "; ".join(parts))


def _masking_row(grid: dict[str, ModelResults]) -> tuple:
    """The gradient-masking row: a check per model, so the verdict is the checks' (every model passes: holds)."""
    chk = check_verdicts(grid)
    claim = "No gradient masking: the gradient-free Boundary attack does not beat the gradient attacks"
    measure = "models where Boundary beats every gradient attack by 2x on at most 1% of images"
    if "no_gradient_masking" not in chk:
        return ("no-masking", claim, measure, "reported as no masking", "\u2013", "not resolved",
                "the masking check has not run")
    passed, total = int(chk["no_gradient_masking"].sum()), len(chk)
    failed = [k for k in chk.index if not chk.loc[k, "no_gradient_masking"]]
    return ("no-masking", claim, measure, "reported as no masking", f"check passed for {passed} of {total} models",
            "holds" if passed == total else "does not hold",
            f"the check passed on {passed} of {total} models" + (f"; failed on {', '.join(failed)}" if failed else ""))


def verdict_table(claims_table: pd.DataFrame) -> str:
    """The verdict columns of :func:`~paperlib.report.results.claims` (claim, verdict, why) as an HTML table
    with every word shown (no truncation), for the book's verdict page."""
    return claims_table[["claim", "verdict", "why"]].to_html(escape=True, border=0)


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


def stage_cpu_hours(grid: dict[str, ModelResults]) -> pd.DataFrame:
    """Per stage, the CPU hours of this process summed over the models whose stage recorded them (runs computed
    after ``paperlib reproduce`` began recording ``'<stage>_cpu'``), with the wall hours of the same models and
    how many they are: the CPU hours do not grow when other processes share the cores, the wall hours do."""
    rows = {}
    for stage in ("train", "attack", "bound", "certify"):
        have = [m.seconds for m in grid.values() if f"{stage}_cpu" in m.seconds and stage in m.seconds]
        if have:
            rows[stage] = {"models": len(have), "CPU hours": sum(s[f"{stage}_cpu"] for s in have) / 3600,
                           "wall hours": sum(s[stage] for s in have) / 3600}
    return pd.DataFrame.from_dict(rows, orient="index")


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


def figure1(grid: dict[str, ModelResults], *, dataset: str | None = None):
    """Figure 1's two panels: empirical % error against the attack size in linf and l2, for the undefended,
    adversarially trained and gradient-regularized models, each with its 95% Wilson band over the attacked
    images; the paper's CIFAR-10 Table 1 points (linf, 2/255 and 8/255) as open markers. ``dataset`` titles
    the panels (default: the grid's dataset, :func:`~paperlib.report.results.grid_names`). Returns the
    matplotlib figure."""
    import matplotlib.pyplot as plt

    if dataset is None:
        dataset = grid_names(grid)["dataset"]

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.6))
    grids = {"linf": np.linspace(0, 48 / 255, 97), "l2": np.linspace(0, 3.0, 121)}
    for ax, norm in zip(axes, ("linf", "l2")):
        curves = model_error_curves(grid, norm, FIGURE1_MODELS[norm], grids[norm])
        for i, k in enumerate(curves.columns):
            color = "black" if k == "undefended" else f"C{i}"
            # three families told apart by line style: undefended dotted, adversarial training dashed, penalties solid
            style = ":" if k == "undefended" else "--" if k.startswith(("pgd-at", "free-at")) else "-"
            x = curves.index.to_numpy() * (255 if norm == "linf" else 1)
            ax.plot(x, curves[k], color=color, ls=style, label=paper.ROW_KEYS.get(k, k), lw=1.8)
            n = int(grid[k].suite.best[grid[k].suite.best["norm"] == norm]["image"].nunique())
            band = np.array([wilson_interval(int(round(v * n / 100)), n) for v in curves[k]])
            ax.fill_between(x, band[:, 0], band[:, 1], color=color, alpha=0.08, lw=0)
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
        ax.set_ylabel("% test error under attack (band: 95% Wilson)")
        ax.set_title(f"{dataset}: attacks in {'l-infinity' if norm == 'linf' else 'l2'}")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        # below the panel, where it hides no curve
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def tradeoff_figure(grid: dict[str, ModelResults], *, new: tuple[str, float, dict[str, float]] | None = None,
                    eps: dict[str, float] | None = None):
    """The grid's clean-vs-robust trade-off: for each model, the clean % error on the whole test set (x) against
    the empirical % error under the attack suite at one radius per norm (y; default 8/255 in linf, 1.0 in l2),
    one panel per norm, adversarial training and penalties told apart by marker. ``new = (label, clean % error,
    {norm: robust % error})`` adds a model that is not in the grid (the train and attack pages' model): a star
    where its robust error is known, a vertical line at its clean error where it is not. Returns the figure."""
    import matplotlib.pyplot as plt

    eps = {"linf": 8 / 255, "l2": 1.0, **(eps or {})}
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.6))
    for ax, norm in zip(axes, ("linf", "l2")):
        for k, m in grid.items():
            if not _attacked(m, norm):
                continue
            marker = "s" if k == "undefended" else "^" if k.startswith(("pgd-at", "free-at")) else "o"
            color = "black" if k == "undefended" else "C1" if marker == "^" else "C0"
            ax.plot(float(m.metrics["clean_error_pct"]), _emp_err(m, norm, eps[norm]), marker, color=color,
                    ms=7, alpha=0.8)
        for marker, color, label in (("s", "black", "undefended"), ("^", "C1", "adversarial training"),
                                     ("o", "C0", "gradient penalties")):
            ax.plot([], [], marker, color=color, label=f"grid: {label}")
        if new is not None:
            label, clean, robust = new
            if robust.get(norm) is not None and not math.isnan(float(robust[norm])):
                ax.plot(float(clean), float(robust[norm]), "*", color="C3", ms=16, label=f"this page: {label}")
            else:
                ax.axvline(float(clean), color="C3", ls="--", lw=1.5,
                           label=f"this page: {label} (clean error only)")
        radius = f"{eps[norm] * 255:g}/255" if norm == "linf" else f"{eps[norm]:g}"
        ax.set_xlabel("clean % test error (whole test set)")
        ax.set_ylabel(f"% error under attack, {norm} eps = {radius}")
        ax.set_title(f"{grid_names(grid)['dataset']}: the trade-off in {norm}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5, loc="lower right")
    fig.tight_layout()
    return fig


def boundary_start_failures(grid: dict[str, ModelResults], n_noise: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Why the Boundary attack failed where it did: one row per model whose ``boundary-l2`` job left a correctly
    classified image unbroken, with the labels of those images and the share of ``n_noise`` uniform-noise images
    (seeded) that the model assigns to each of these labels.

    The Boundary attack (foolbox's, and ours) starts from blended uniform noise the model misclassifies; on an
    image whose label the model gives to (nearly) every noise image there is no such start, so the attack cannot
    begin. A share near 100 % names that cause; a small one would point elsewhere (the budget)."""
    import torch

    from paperlib.data import load_dataset, sample_images
    from paperlib.training import load_trained

    rows = []
    for k, m in grid.items():
        if m.suite is None:
            continue
        a = m.suite.attacks
        b = a[(a["attack"] == "boundary") & (a["norm"] == "l2")]
        failed = b[~b["success"].astype(bool)]
        if failed.empty:
            continue
        model, _ = load_trained(m.path)
        x, _, _ = sample_images(load_dataset(m.config.dataset, "test"), 1, seed=0)  # for the image shape
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            pred = model(torch.rand(n_noise, *x.shape[1:], generator=g)).argmax(1)
        labels = failed["label"].value_counts().sort_index()
        shares = [100 * float((pred == int(lab)).float().mean()) for lab in labels.index]
        rows.append({"model": k, "boundary success %": float(m.suite.summary["jobs"]["boundary-l2"]["success_pct"]),
                     "failed": int(len(failed)),
                     "their labels": ", ".join(f"{int(lab)} ({int(c)})" for lab, c in labels.items()),
                     "noise given that label %": ", ".join(f"{v:.1f}" for v in shares),
                     "least noise share %": min(shares)})
    return pd.DataFrame(rows)


def check_failures_note(grid: dict[str, ModelResults]) -> str:
    """The verdict page's reading of the evaluation checks, generated from the runs: which check fails on how
    many models, each failing check's measured message on one model, and whether the best distances could depend
    on it (images no attack broke). Markdown; empty checks give a sentence saying so."""
    checks = check_verdicts(grid)
    if checks.empty:
        return "No model of this grid has been attacked yet."
    failing = [c for c in checks.columns if not checks[c].all()]
    if not failing:
        return f"All {len(checks)} attacked models pass every check."
    lines = []
    for c in failing:
        bad = [k for k in checks.index if not checks.loc[k, c]]
        example = check_messages(grid, c)[bad[0]]
        lines.append(f"- `{c}` fails on {len(bad)} of {len(checks)} models ({', '.join(bad)}); on "
                     f"{bad[0]}: {example}.")
        if c == "minimal_attacks_succeed":
            for r in boundary_start_failures({k: grid[k] for k in bad}).to_dict("records"):
                why = ("so the attack's noise start has no misclassified point to begin from on them"
                       if r["least noise share %"] >= 99 else
                       "so its noise start is not the whole cause; a larger Boundary budget may be")
                lines.append(f"  - {r['model']}: the Boundary attack failed on {r['failed']} images, of labels (count) "
                             f"{r['their labels']}; the model assigns {r['noise given that label %']} % of 1000 "
                             f"uniform-noise images to these labels, {why}.")
    unbroken = {k: (int(m.suite.summary.get("unbroken_l2", 0)), int(m.suite.summary.get("unbroken_linf", 0)))
                for k, m in grid.items() if m.suite is not None}
    left = {k: v for k, v in unbroken.items() if sum(v)}
    if left:
        lines.append("- Images no attack broke (l2, linf): " + ", ".join(f"{k} {a}, {b}" for k, (a, b) in left.items())
                     + "; their best distance is unknown, so a failing success check can move these models' numbers.")
    else:
        lines.append(f"- On every model some attack broke every attacked image (no image is left unbroken in either "
                     f"norm), so a minimal attack's failures do not leave a best distance unknown; the convergence "
                     f"check above says whether the budgets found the closest ones.")
    return "\n".join(lines)

"""Validity audit: a lower bound on the minimal adversarial distance must not exceed an adversarial found.

The attack suite writes, per image and norm, the smallest distance at which any attack found an adversarial
(``best.csv``: columns ``image, label, norm, best, best_attack``; ``best = 0`` for a clean error, ``inf`` when
no attack succeeded). A *valid* lower bound ``b`` on the minimal distance satisfies ``b <= best`` for every
image. The L-bound and the omega-bound rest on estimated suprema (L, omega), so the paper calls them heuristic;
this audit measures how heuristic: the percentage of images where a bound exceeds the best attack distance.

Images no attack broke (``best = inf``) cannot show a violation; they are counted (``n_unbroken``) but left
out of the rate's denominator (``n_compared``). The randomized-smoothing radius is audited the same way (l2 only;
its guarantee holds with probability ``1 - alpha`` per image, so a violation rate near 0 is expected).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from paperlib.config import ConfigError, normalize_norm
from paperlib.runs import finished_dir

__all__ = ["BOUND_COLUMNS", "BOUND_LABELS", "present_bounds", "audit_bounds", "smoothing_lower_bound", "find_best_tables", "audit_model_run"]

#: The per-image lower bounds of ``bounds.csv`` that the audit checks (those a table has): the L-bound with
#: either L, the omega-bound with the paper's random omega (``omega_distance``) and, when the bounds run used the
#: adversarial estimator (``BoundConfig.omega_ascent_steps > 0``), with the adversarial omega and the per-image one.
BOUND_COLUMNS: tuple[str, ...] = ("l_bound_evt", "l_bound_empirical_max", "omega_distance",
                                  "omega_distance_adversarial", "omega_distance_adversarial_per_image")

#: How the pages name the per-image bounds of ``bounds.csv`` (``l_bound`` is the L-bound with the L the bounds run
#: reports, its extreme-value estimate where the fit was accepted): the paper's two, then the adversarial
#: omega-bound (not in the paper) with omega's supremum over the images and with each image's own omega.
BOUND_LABELS: dict[str, str] = {"l_bound": "L-bound", "omega_distance": "omega-bound",
                                "omega_distance_adversarial": "adversarial omega-bound (sup)",
                                "omega_distance_adversarial_per_image": "adversarial omega-bound (per image)"}

#: The columns of ``best.csv`` the audit reads (of :data:`~paperlib.metrics.BEST_COLUMNS`).
_BEST_NEEDED = ("image", "norm", "best")


def present_bounds(table: pd.DataFrame) -> dict[str, str]:
    """The bounds of :data:`BOUND_LABELS` that a ``bounds.csv`` table has, ``{column: label}`` (a run without the
    adversarial estimator has only the paper's two)."""
    return {c: label for c, label in BOUND_LABELS.items() if c in table.columns}


def _check_best(best: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _BEST_NEEDED if c not in best.columns]
    if missing:
        raise ConfigError(f"best-distance table lacks column(s) {missing}; expected {list(_BEST_NEEDED)} "
                          "(the attack suite's best.csv)")
    best = best.copy()
    best["norm"] = best["norm"].map(lambda s: normalize_norm(str(s)))
    best["best"] = pd.to_numeric(best["best"], errors="coerce").astype(float)
    if best["best"].isna().any():
        raise ConfigError("best-distance table has non-numeric distances")
    return best


def audit_bounds(
    bounds: pd.DataFrame,
    best: pd.DataFrame,
    norm: str,
    *,
    columns: Sequence[str] | None = None,
    tol: float = 1e-9,
) -> pd.DataFrame:
    """Violation rate of each lower-bound column of ``bounds`` against the attack suite's ``best`` distances.

    Args:
        bounds: one row per image with an ``image`` column and the bound columns (``bounds.csv``, or any table
            shaped like it, e.g. :func:`smoothing_lower_bound`'s).
        best: the attack suite's ``best.csv`` (``image``, ``norm``, ``best``; other columns are ignored).
        norm: the norm both are measured in; rows of ``best`` in other norms are ignored.
        columns: bound columns to audit (default: those of :data:`BOUND_COLUMNS` present in ``bounds``).
        tol: a bound counts as violating when ``bound > best + tol`` (float round-off allowance).

    Returns:
        One row per bound: bound, norm, n_images (matched by image), n_compared (attack succeeded),
        n_unbroken, n_violations, violation_rate (% of n_compared), mean_bound, mean_best (over
        n_compared), max_excess (largest ``bound - best``, 0 if none).
    """
    norm = normalize_norm(norm)
    if "image" not in bounds.columns:
        raise ConfigError("bounds table lacks the 'image' column")
    best = _check_best(best)
    best = best[best["norm"] == norm]
    if best["image"].duplicated().any():
        raise ConfigError(f"best-distance table has several rows for one image in norm {norm}")
    cols = [c for c in (columns or BOUND_COLUMNS) if c in bounds.columns]
    if columns is not None and len(cols) != len(columns):
        raise ConfigError(f"bounds table lacks column(s) {sorted(set(columns) - set(cols))}")
    merged = bounds.merge(best[["image", "best"]], on="image", how="inner")
    rows = []
    for col in cols:
        b = merged[col].to_numpy(dtype=float)
        d = merged["best"].to_numpy(dtype=float)
        finite = np.isfinite(d)
        excess = b[finite] - d[finite]
        viol = excess > tol
        n_cmp = int(finite.sum())
        rows.append({
            "bound": col,
            "norm": norm,
            "n_images": int(len(merged)),
            "n_compared": n_cmp,
            "n_unbroken": int((~finite).sum()),
            "n_violations": int(viol.sum()),
            "violation_rate": float(100.0 * viol.mean()) if n_cmp else math.nan,
            "mean_bound": float(b[finite].mean()) if n_cmp else math.nan,
            "mean_best": float(d[finite].mean()) if n_cmp else math.nan,
            "max_excess": float(max(excess.max(), 0.0)) if n_cmp else math.nan,
        })
    return pd.DataFrame(rows, columns=["bound", "norm", "n_images", "n_compared", "n_unbroken", "n_violations",
                                       "violation_rate", "mean_bound", "mean_best", "max_excess"])


def smoothing_lower_bound(certify: pd.DataFrame) -> pd.DataFrame:
    """``certify.csv`` as a bound table: ``smoothing_radius`` = the certified radius if correct, else 0."""
    correct = certify["correct"].astype(bool)
    return pd.DataFrame({"image": certify["image"], "smoothing_radius": certify["radius"].where(correct, 0.0)})


def find_best_tables(run_path: str | Path) -> list[Path]:
    """Every ``best.csv`` of a finished run under a model's run directory (the attack suite's sub-runs)."""
    root = Path(run_path)
    return sorted(p for p in root.rglob("best.csv")
                  if _finished(p.parent) and ".stale-" not in str(p) and ".old-" not in str(p))


def _finished(path: Path) -> bool:
    return finished_dir(path)


def audit_model_run(run_path: str | Path, *, best_tables: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """Audit every finished bounds and certification sub-run of one model against its attack results.

    Looks under ``run_path`` for ``bounds.csv`` and ``certify.csv`` of finished sub-runs and for the attack
    suite's ``best.csv`` files; returns one row per (bounds run, best table, bound) with the columns of
    :func:`audit_bounds` plus ``bounds_run`` and ``best_table``. An empty table when either side is missing.
    """
    root = Path(run_path)
    tables = [Path(p) for p in best_tables] if best_tables is not None else find_best_tables(root)
    out = []
    for best_path in tables:
        best = _check_best(pd.read_csv(best_path))
        for bpath in sorted(root.rglob("bounds.csv")):
            if not _finished(bpath.parent) or ".stale-" in str(bpath) or ".old-" in str(bpath):
                continue
            bounds = pd.read_csv(bpath)
            if bounds.empty or "norm" not in bounds.columns:
                continue
            df = audit_bounds(bounds, best, str(bounds["norm"].iloc[0]))
            df.insert(0, "best_table", str(best_path.relative_to(root)))
            df.insert(0, "bounds_run", str(bpath.parent.relative_to(root)))
            out.append(df)
        for cpath in sorted(root.rglob("certify.csv")):
            if not _finished(cpath.parent) or ".stale-" in str(cpath) or ".old-" in str(cpath):
                continue
            df = audit_bounds(smoothing_lower_bound(pd.read_csv(cpath)), best, "l2", columns=["smoothing_radius"])
            df.insert(0, "best_table", str(best_path.relative_to(root)))
            df.insert(0, "bounds_run", str(cpath.parent.relative_to(root)))
            out.append(df)
    if not out:
        return pd.DataFrame(columns=["bounds_run", "best_table", "bound", "norm", "n_images", "n_compared",
                                     "n_unbroken", "n_violations", "violation_rate", "mean_bound", "mean_best",
                                     "max_excess"])
    return pd.concat(out, ignore_index=True)

"""The book's table and figure numbers: read back from a (tiny) grid and checked against the raw run files."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paperlib.attacks.suite import SuiteResult, error_curve
from paperlib.metrics import empirical_error, wilson_interval
from paperlib.report import experiments, paper, results
from paperlib.runs import Run
from tests.conftest import requires_fmnist

KEYS = ["undefended", "fd-l2-lam1"]


@pytest.fixture(scope="module")
def smoke_grid(tmp_path_factory):
    """Two smoke models through every stage, with a PGD-only attack suite so that this takes seconds."""
    import paperlib.reproduce as rep

    mp = pytest.MonkeyPatch()
    budgets = dict(rep._EVAL["smoke"]["attack"], attacks=("pgd",), pgd_steps=5, pgd_search_steps=4)
    mp.setitem(rep._EVAL["smoke"], "attack", budgets)
    root = tmp_path_factory.mktemp("runs")
    rep.reproduce("smoke", root, only=KEYS, progress=False, log=lambda *a: None)
    yield results.load_grid("smoke", root), root
    mp.undo()



def test_seeded_models_load_apart_and_their_comparisons_sit_beside_the_grids(smoke_grid):
    """``reproduce --seeds 1`` retrains the models; load_seeds finds them under ``<key>@seed1`` (load_grid does
    not), and seed_comparisons makes every comparison of two retrained models again beside the seed-0 row."""
    import paperlib.reproduce as rep

    grid, root = smoke_grid
    assert results.load_seeds("smoke", root) == {}  # nothing retrained yet: no rows either
    assert results.seed_comparisons(grid, {}).empty
    rep.reproduce("smoke", root, only=KEYS, seeds=(1,), stages=("train", "attack"), progress=False,
                  log=lambda *a: None)
    seeded = results.load_seeds("smoke", root, seeds=(1, 2))
    assert sorted(seeded) == [f"{k}@seed1" for k in sorted(KEYS)]
    assert set(results.load_grid("smoke", root)) == set(grid)  # the grid itself is unchanged
    m = seeded["fd-l2-lam1@seed1"]
    assert m.config.seed == 1 and m.path.name.endswith("-seed1") and m.suite is not None and not m.bounds
    out = results.seed_comparisons(grid, seeded)
    gain = out[out["claim"] == "gain-l2"]
    assert gain["seed"].tolist() == [0, 1] and set(gain["a"]) == {"fd-l2-lam1"}
    comps = results.comparisons(grid).set_index("claim")
    assert gain["difference"].iloc[0] == comps.loc["gain-l2", "difference"]  # seed 0 is the grid's row
    # the seed-1 row is the same measure on the retrained models: mean best l2 of a minus b
    d = m.suite.best[m.suite.best["norm"] == "l2"].set_index("image")["best"]
    u = seeded["undefended@seed1"].suite.best
    u = u[u["norm"] == "l2"].set_index("image")["best"]
    both = pd.concat([d, u], axis=1, join="inner")
    both = both[np.isfinite(both).all(axis=1)]
    assert gain["difference"].iloc[1] == pytest.approx(float((both.iloc[:, 0] - both.iloc[:, 1]).mean()))
    only = results.seed_comparisons(grid, seeded, which=comps.reset_index().query("claim == 'gain-l2'"))
    assert set(only["claim"]) == {"gain-l2"}
    # the seeds have no bounds: the grid's bound comparisons of fd-l2-lam1 with itself are not made again
    assert comps.loc["bounds", "verdict"].tolist() != ["not evaluated"] * len(comps.loc[["bounds"]])
    assert "bounds" not in set(out["claim"]) and "not evaluated" not in set(out["verdict"])


def test_closest_comparisons_leave_out_training_time_ratios():
    comps = pd.DataFrame({"claim": ["cost", "a", "b", "c"], "unit": ["ratio", "l2", "points", "l2"],
                          "verdict": ["not resolved", "holds", "holds", "not evaluated"],
                          "closeness": [0.01, 0.5, 0.2, 0.0]})
    assert results.closest_comparisons(comps)["claim"].tolist() == ["b", "a"]

@requires_fmnist
def test_load_grid_reads_every_stage(smoke_grid):
    grid, root = smoke_grid
    assert list(grid) == KEYS
    und = grid["undefended"]
    assert und.run_id == "smoke/undefended" and und.suite is not None and set(und.bounds) == {"l2", "linf"}
    assert und.certify is not None and grid["fd-l2-lam1"].certify is not None
    assert und.seconds["train"] > 0 and len(und.log) == 1
    assert results.load_grid("smoke", root / "elsewhere") == {}  # nothing there: nothing loaded, nothing run


@requires_fmnist
def test_table_cells_follow_the_run_files(smoke_grid):
    grid, _ = smoke_grid
    t1 = results.table1(grid)
    assert list(t1.index) == [k for k in paper.TABLE1 if not k.startswith("imagenet")]
    best = grid["undefended"].suite.best
    for e in results.LINF_EPS:
        assert t1.loc["undefended", f"emp_err_{e:g}"] == pytest.approx(empirical_error(best, e / 255, "linf"))
    assert t1.loc["undefended", "clean_error"] == grid["undefended"].metrics["clean_error_pct"]
    assert t1.loc["pgd-at-2"].isna().all()  # not in this grid
    b5 = results.tableB5(grid)
    cert = grid["fd-l2-lam1"].certify.metrics
    reach = cert["max_certifiable_radius"]
    for r in paper.TABLEB5_RADII:
        if r <= reach:
            assert b5.loc["fd-l2-lam1", f"r={r}"] == pytest.approx(cert[f"certified_error@{r:g}"])
        else:  # 100% by the certificate's construction: shown as "beyond n", not as a result
            assert np.isnan(b5.loc["fd-l2-lam1", f"r={r}"]) and cert[f"beyond_n@{r:g}"]
            assert results.table_cells("B.5", grid).loc[("fd-l2-lam1", f"r={r}"), "interval"] == "beyond n"
    assert any(r > reach for r in paper.TABLEB5_RADII) or reach == float("inf")
    b6 = results.tableB6(grid)
    bounds = grid["fd-l2-lam1"].bounds["l2"].metrics
    assert b6.loc["fd-l2-lam1", "r=0.5"] == pytest.approx(bounds["omega_bound_error@0.5"])
    t2 = results.table2(grid)
    assert t2.loc["fd-l2-lam1", "mean_omega_bound"] == pytest.approx(bounds["mean_omega_distance"])
    b3 = results.tableB3(grid)
    assert b3.loc["undefended", "grad_max"] >= b3.loc["undefended", "grad_mean"] > 0


@requires_fmnist
def test_side_by_side_pairs_the_papers_cells_with_ours(smoke_grid):
    grid, _ = smoke_grid
    df = results.side_by_side("2", results.table2(grid))
    label = paper.ROW_KEYS["fd-l2-lam1"]
    assert df.loc[label, ("mean_empirical", "paper")] == paper.TABLE2["fd-l2-lam1"][3]
    assert df.loc[label, ("clean_error", "ours")] == grid["fd-l2-lam1"].metrics["clean_error_pct"]
    assert not any(str(i).startswith("ImageNet") for i in df.index)
    shown = results.fmt(df)
    assert shown.loc[paper.ROW_KEYS["pgd-at-2"], ("clean_error", "ours")] == "\u2013"


@requires_fmnist
def test_figure1_draws_a_curve_per_present_model(smoke_grid):
    import matplotlib

    matplotlib.use("Agg")
    grid, _ = smoke_grid
    curves = results.model_error_curves(grid, "l2", results.FIGURE1_MODELS["l2"], np.linspace(0, 3, 7))
    assert list(curves.columns) == KEYS
    assert (np.diff(curves.to_numpy(), axis=0) >= 0).all()  # error grows with eps
    fig = results.figure1(grid)
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 2


def test_fmt_and_unknown_table():
    df = pd.DataFrame({"a": [1.234, math.nan]})
    assert results.fmt(df, 1)["a"].tolist() == [1.2, "\u2013"]
    from paperlib.config import ConfigError

    with pytest.raises(ConfigError, match="table='B.7'"):
        results.our_table("B.7", {})


@requires_fmnist
def test_claims_costs_and_audits_read_the_grid(smoke_grid):
    grid, _ = smoke_grid
    c = results.claims(grid)
    assert {"gain-linf", "fd-vs-dbp-cost", "h-robust", "smoothing", "no-masking"} <= set(c.index)
    assert c.loc["gain-l2", "paper"] == "0.12 \u2192 0.81"  # Table 2, undefended -> FD l2 lam 1
    t2 = results.table2(grid)
    assert c.loc["gain-l2", "ours"] == f"{t2.loc['undefended', 'mean_empirical']:.2f} \u2192 " \
                                       f"{t2.loc['fd-l2-lam1', 'mean_empirical']:.2f}"
    costs = results.training_costs(grid)
    assert costs.loc["undefended", "x undefended"] == 1.0
    assert costs.loc["fd-l2-lam1", "paper hours"] == paper.TABLE2["fd-l2-lam1"][-1]
    assert set(results.stage_hours(grid).index) == {"train", "attack", "bound", "certify"}
    audit = results.bound_audit(grid)
    assert set(audit.index.get_level_values("norm")) == {"l2", "linf"}
    assert ((audit["omega-bound violations %"] >= 0) & (audit["omega-bound violations %"] <= 100)).all()
    checks = results.check_verdicts(grid)
    assert "attacks_converged" in checks.columns and checks.dtypes.eq(bool).all()


def test_table1_and_the_error_curves_count_a_distance_tied_with_eps_the_same(tmp_path):
    # One linf best distance exactly at each of Table 1's radii, written to best.csv and read back as the
    # grid reads it (10 significant digits: each comes back a hair above its radius, 1e-13 to 2e-11).
    radii = np.array(results.LINF_EPS) / 255
    best = pd.DataFrame({"image": range(5), "label": 0, "norm": "linf", "best": [*radii, math.inf],
                         "best_attack": "pgd-linf"})
    run = Run(tmp_path / "attack", {"test": "ties"}).start()
    run.write_table("best.csv", best)
    stored = run.finish().read_table("best.csv")
    model = results.ModelResults(key="undefended", path=tmp_path, run_id="t/undefended", config=None,
                                 metrics={"clean_error_pct": 0.0}, log=pd.DataFrame(),
                                 suite=SuiteResult(attacks=pd.DataFrame(), best=stored, checks=[]))
    grid = {"undefended": model}
    t1 = results.table1(grid)
    for i, (e, r) in enumerate(zip(results.LINF_EPS, radii)):
        cell = t1.loc["undefended", f"emp_err_{e:g}"]
        assert cell == error_curve(stored, [r], "linf")["error_pct"].iloc[0], f"Table 1 and the curve differ at {e}/255"
        assert cell == 20.0 * (i + 1)  # the tie counts: the adversarial lies in the closed eps-ball
    # Figure 1's curves and the attack page's, on grids that hold the radii exactly
    figure = results.model_error_curves(grid, "linf", ["undefended"], np.linspace(0, 48 / 255, 97))
    page = experiments.error_curves(stored, n_points=97, eps_max={"linf": 48 / 255})["linf"].set_index("eps")
    for e, r in zip(results.LINF_EPS, radii):
        cell = t1.loc["undefended", f"emp_err_{e:g}"]
        assert figure.loc[r, "undefended"] == cell and page.loc[r, "error_pct"] == cell


def _synthetic_grid(shift: float, n: int = 80) -> dict:
    """A grid of a made-up profile and dataset (no run files): every model's best distances, bounds, smoothing
    radii and training log, with the 'defended' models ``shift`` further from their adversarials than the
    undefended model (a negative shift flips every robustness comparison)."""
    from types import SimpleNamespace

    from paperlib.bounds.smoothing import CertifyResult

    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 3.0, n)
    images = np.arange(1000, 1000 + n)
    grid = {}
    keys = ["undefended", "pgd-at-8", "fd-l1-lam1-h0.1", "dbp-l1-lam1", "fd-l2-lam1", "dbp-l2-lam1", "fd-l2-lam0.1",
            "h=1e-2", "h=1"]
    for i, key in enumerate(keys):
        # robustness order: undefended < dbp < h study < fd < pgd-at (shift per rank)
        rank = {"undefended": 0, "dbp-l1-lam1": 1, "dbp-l2-lam1": 1, "h=1e-2": 2, "h=1": 2, "fd-l2-lam0.1": 2,
                "fd-l1-lam1-h0.1": 3, "fd-l2-lam1": 3, "pgd-at-8": 4}[key]
        d = np.maximum(base + shift * rank, 1e-3)
        best = pd.concat([pd.DataFrame({"image": images, "label": 0, "norm": norm,
                                        "best": d * (1 if norm == "l2" else 8 / 255 / 1.5), "best_attack": "pgd-" + norm})
                          for norm in ("l2", "linf")], ignore_index=True)
        correct = np.ones(n, bool)
        bounds = {norm: SimpleNamespace(table=pd.DataFrame({"image": images, "correct": correct,
                                                            "l_bound": 0.3 * d * scale, "omega_distance": 0.8 * d * scale,
                                                            "grad_norm_l2": 1.0 / d}),
                                        omega=lambda: {0.5: 0.1, 1.0: 0.2})
                  for norm, scale in (("l2", 1.0), ("linf", 8 / 255 / 1.5))}
        certify = CertifyResult(table=pd.DataFrame({"image": images, "label": 0, "prediction": 0, "correct": correct,
                                                    "radius": 0.4 * d}), certified=pd.DataFrame())
        seconds = {"pgd-at-8": 300.0}.get(key, 100.0 if key.startswith("fd") else 130.0)
        log = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_seconds": seconds * np.array([1.0, 1.02, 0.98, 1.01])})
        grid[key] = results.ModelResults(
            key=key, path=Path("."), run_id=f"toyprofile/{key}", config=SimpleNamespace(profile="toyprofile",
                                                                                      dataset="toy-digits",
                                                                                      model="toy-net"),
            metrics={"clean_error_pct": 10.0 + (3.0 if key == "fd-l2-lam1" else 0.0) + (2 if key == "h=1e-2" else 0),
                     "test_images": 5000, "train_hours": seconds * 4 / 3600},
            log=log, suite=SuiteResult(attacks=pd.DataFrame(), best=best,
                                       checks=[("no_gradient_masking", True, "ok")]),
            bounds=bounds, certify=certify if key in ("undefended", "fd-l2-lam1") else None)
    return grid


def test_claims_text_uses_the_grids_own_names_and_the_verdicts_follow_the_numbers():
    up, down = results.claims(_synthetic_grid(0.3)), results.claims(_synthetic_grid(-0.3))
    for table in (up, down):
        text = table.to_string() + results.verdict_table(table)
        for word in ("Fashion-MNIST", "fashion-mnist", "fmnist"):
            assert word.lower() not in text.lower(), f"{word!r} printed for another profile"
        assert "toy-digits" in table.loc["gain-linf", "why"] and "80 toy-digits test images" in table.loc["gain-l2", "why"]
        assert set(table["verdict"]) <= {"holds", "does not hold", "not resolved"}
    # robust defended models: the robustness claims hold; reversed: they do not
    for cid in ("gain-linf", "gain-l2", "vs-at-linf", "fd-vs-dbp-robust", "fd-vs-dbp-robust-l2", "regularity"):
        assert up.loc[cid, "verdict"] == "holds", (cid, up.loc[cid, "why"])
        assert down.loc[cid, "verdict"] == "does not hold", (cid, down.loc[cid, "why"])
    assert up.loc["vs-at-l2", "verdict"] == "does not hold"  # AT is the most robust in the synthetic order
    # costs from the per-epoch logs: AT 3x FD (> 2: holds), DBP 1.3x FD (> 1: holds)
    assert up.loc["at-cost", "verdict"] == "holds" and up.loc["fd-vs-dbp-cost", "verdict"] == "holds"
    assert up.loc["tradeoff", "verdict"] == "holds"  # 13% vs 10% of 5000 images
    # the omega-bound is 0.8 x the attack distance and the L-bound 0.3 x: both below, omega closer
    assert up.loc["bounds", "verdict"] == "holds"
    assert up.loc["bound-violations", "verdict"] == "not resolved"  # no violation seen: a bound cannot be proven


def test_comparisons_are_paired_by_image_and_name_the_closest():
    comps = results.comparisons(_synthetic_grid(0.3))
    row = comps[(comps["claim"] == "gain-l2")].iloc[0]
    assert row["difference"] == pytest.approx(0.3 * 3) and row["low"] == pytest.approx(0.9)  # a uniform shift
    assert row["interval"] == "paired bootstrap" and row["n"] == 80
    missing = comps[comps["comparison"].str.contains("h=1e-4")]
    assert (missing["verdict"] == "not evaluated").all()  # not in the grid: shown, not counted
    close = results.closest_comparisons(comps)
    assert len(close) == 2 and (close["closeness"].to_numpy() <= comps["closeness"].min() + 1e-12).any()
    assert close["closeness"].is_monotonic_increasing


def test_table_cells_carry_wilson_and_bootstrap_intervals_and_display_formats_them():
    grid = _synthetic_grid(0.3)
    cells = results.table_cells("1", grid)
    c = cells.loc[("undefended", "emp_err_8")]
    k = int(round(c["value"] * 80 / 100))
    assert (c["low"], c["high"]) == pytest.approx(wilson_interval(k, 80)) and c["interval"] == "Wilson"
    clean = cells.loc[("undefended", "clean_error")]
    assert clean["n"] == 5000 and clean["low"] < 10 < clean["high"]
    assert cells.loc[("undefended", "clean_error_attacked"), "value"] == 0.0  # no image marked 'clean'
    assert results.table1(grid).loc["undefended", "emp_err_8"] == c["value"]
    m = results.table_cells("2", grid).loc[("fd-l2-lam1", "mean_empirical")]
    assert m["interval"] == "bootstrap" and m["low"] < m["value"] < m["high"]
    shown = results.display_table("1", grid)
    col = (results.column_header("1", "omega_err_2"), "ours")
    assert col[0] == "omega-bound % error at eps = 2/255" and col in shown.columns
    assert results.format_interval(12.34, 8.06, 17.91) == "12.3 [8.1, 17.9]"
    assert shown.loc[paper.ROW_KEYS["pgd-at-2"], (results.column_header("1", "clean_error"), "ours")] == "\u2013"
    assert shown.loc[paper.ROW_KEYS["undefended"], (results.column_header("1", "clean_error"), "paper")] == "4.36"


# --------------------------------------------------------------------------------------------------
# The paper-scale grid, the envelope over sigma, the adversarial omega columns
# --------------------------------------------------------------------------------------------------

def test_the_paper_scale_grid_is_the_committed_plateau_grid():
    from paperlib.config import ConfigError
    from paperlib.evaluation import resolve_scale, scale_training
    from paperlib.reproduce import grid, recipe_tag
    from paperlib.training import run_name

    recipe, free = scale_training("fmnist", "paper")
    assert recipe_tag(recipe, free) == "-r25fcef"  # the records of runs/fmnist's paper-scale grid
    names = {k: run_name(c) for k, c in grid("fmnist", recipe, free).items()}
    assert names["undefended"] == "undefended-rc1ca23"
    assert names["free-at-8"] == "free-m8-linf-eps8_255-sgdsteps-rc1ca23"
    assert scale_training("fmnist", "profile") == ({}, None)
    assert resolve_scale("fmnist", None) == "paper" and resolve_scale("smoke", None) == "profile"
    assert resolve_scale("fmnist", "profile") == "profile"
    with pytest.raises(ConfigError, match="scale='huge'"):
        resolve_scale("fmnist", "huge")
    with pytest.raises(ConfigError, match="not defined for profile 'smoke'"):
        scale_training("smoke", "paper")


def _certify(sigma: float, n: int, radius: list[float], correct: list[bool]):
    import types

    t = pd.DataFrame({"image": range(len(radius)), "radius": radius, "correct": correct,
                      "prediction": [0 if c else -1 for c in correct]})
    return types.SimpleNamespace(table=t, config=types.SimpleNamespace(n=n, alpha=0.001, sigma=sigma), metrics={})


def _model(key: str, **kw) -> results.ModelResults:
    return results.ModelResults(key=key, path=Path("."), run_id=f"x/{key}", config=None,
                                metrics={"clean_error_pct": 0.0, "train_hours": 0.1}, log=None, **kw)


def test_table_b5_takes_the_best_sigma_at_each_radius_and_marks_what_no_sigma_reaches():
    # sigma 0.25 (n = 100: reach 0.25 * Phi^-1(0.001^(1/100)) ~ 0.25 * 1.55) certifies 2 of 4 images at r = 0.25;
    # sigma 1 certifies 3 of 4 at r = 0.25 and reaches farther
    lo = _certify(0.25, 100, [0.3, 0.3, 0.0, 0.0], [True, True, True, False])
    hi = _certify(1.0, 100, [1.2, 0.9, 0.5, 0.0], [True, True, True, False])
    m = _model("undefended", certify_sigmas={0.25: lo, 1.0: hi}, certify=lo)
    b5 = results.tableB5({"undefended": m})
    assert b5.loc["undefended", "r=0.25"] == 25.0  # sigma 1's 1 of 4, not sigma 0.25's 2 of 4
    assert b5.loc["undefended", "r=1.0"] == 75.0   # only sigma 1 reaches 1.0
    cells = results.table_cells("B.5", {"undefended": m})
    reach = 1.0 * float(__import__("scipy.stats").stats.norm.ppf(0.001 ** (1 / 100)))
    beyond = [r for r in paper.TABLEB5_RADII if r > reach]
    assert beyond and all(cells.loc[("undefended", f"r={r}"), "interval"] == "beyond n" for r in beyond)


def test_a_certified_error_below_the_empirical_error_is_flagged_on_tables_1_and_b6():
    import types

    # 4 images, all correct; the attacks break image 0 at linf 1/255 and l2 0.2, the others far away
    best = pd.DataFrame({"image": [0, 1, 2, 3] * 2, "norm": ["linf"] * 4 + ["l2"] * 4,
                         "best": [1 / 255, 1.0, 1.0, 1.0, 0.2, 9.0, 9.0, 9.0], "best_attack": "pgd"})
    table = pd.DataFrame({"image": [0, 1, 2, 3], "correct": True,
                          "omega_distance": [0.5] * 4,  # every image "certified" to 0.5, image 0 beyond its attack
                          results.ADVERSARIAL_OMEGA: [0.0] * 4})
    m = _model("undefended", suite=types.SimpleNamespace(best=best),
               bounds={"linf": types.SimpleNamespace(table=table), "l2": types.SimpleNamespace(table=table)})
    grid = {"undefended": m}
    # Table 1: omega certifies 0% error at every linf radius up to 0.5, the attacks find 25% from 1/255 on
    assert results.invalid_certificates("1", grid) == {("undefended", f"omega_err_{e:g}") for e in results.LINF_EPS}
    # Table B.6: 0% certified at r = 0.25 and 0.5 against 25% empirical; 100% from 0.75 on (valid, not flagged)
    assert results.invalid_certificates("B.6", grid) == {("undefended", "r=0.25"), ("undefended", "r=0.5")}
    assert results.invalid_certificates("2", grid) == set()
    from paperlib.report import display

    parts = display.table_parts("1", grid)
    omega = next(t for t in parts if t.caption.startswith("% error certified by the omega-bound, the paper's"))
    assert "4 cells below the empirical % error" in omega.caption
    ours = omega.frame.xs("ours", axis=1, level=1).loc["Undefended"]
    assert len(ours) == 4 and all(v.endswith(display.INVALID_MARK) for v in ours)
    adv = next(t for t in parts if "maximised by gradient ascent" in t.caption)
    assert "below the empirical" not in adv.caption and not any(display.INVALID_MARK in v for v in adv.frame.values.ravel())


def test_the_estimator_table_says_how_each_l_and_omega_was_estimated():
    import types

    fit = lambda ok: {"estimator": "EVT accepted" if ok else "empirical max (fit rejected)"}  # noqa: E731
    evt = {"lipschitz": {"evt": {"ks_pvalue": 0.4}}, "lipschitz_estimator": {"evt": "EVT accepted"},
           "omega": [fit(True), fit(False), fit(True)]}
    m = _model("undefended", bounds={"l2": types.SimpleNamespace(evt=evt)})
    t = results.estimator_table({"undefended": m})
    row = t.loc[("undefended", "l2")]
    assert row["L"] == "EVT accepted" and row["L fit KS p"] == 0.4
    assert row["omega (random samples): fits accepted"] == "2 of 3"
    assert row["omega (adversarial): fits accepted"] == "not computed"


def test_a_comparison_of_models_attacked_at_different_budgets_says_so():
    import types

    def with_factor(key, factor):
        summary = {"convergence": {"factor": {"l2": factor}} if factor > 1 else {}}
        return _model(key, suite=types.SimpleNamespace(summary=summary))

    a, b = with_factor("fd-l2-lam1", 2), with_factor("pgd-at-8", 1)
    assert results.attack_budget(a, "l2") == 2 and results.attack_budget(a, "linf") == 1
    note = results._budget_note(a, b, "mean best-attack l2 distance")
    assert "fd-l2-lam1 x2, pgd-at-8 x1 in l2" in note
    assert results._budget_note(a, b, "empirical % error at eps = 8/255 (linf)") == ""  # linf budgets are equal
    assert results._budget_note(b, b, "mean best-attack l2 distance") == ""


def test_cost_comparisons_quote_the_side_by_side_benchmark_beside_the_runs(tmp_path):
    import json
    from types import SimpleNamespace

    grid = {"m": SimpleNamespace(path=tmp_path / "fmnist" / "some-run")}
    assert results._benchmark_note(grid, "dbp", "fd") == ""  # no benchmark: nothing said
    bench = tmp_path / "fmnist" / results.TRAINING_BENCHMARK
    bench.parent.mkdir(parents=True)
    rows = [{"model": "cnn", "method": "fd", "ms_per_step": 4.0}, {"model": "cnn", "method": "dbp", "ms_per_step": 3.0},
            {"model": "big", "method": "fd", "ms_per_step": 10.0}]
    bench.write_text(json.dumps({"machine": "CPU, 1 thread(s)", "rows": rows}))
    note = results._benchmark_note(grid, "dbp", "fd")
    assert note.endswith("CPU, 1 thread(s): cnn 0.75") and "fmnist/benchmarks/training.json" in note
    assert results._benchmark_note(grid, "pgd-at", "fd") == ""  # a method the benchmark did not measure

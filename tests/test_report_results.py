"""The book's table and figure numbers: read back from a (tiny) grid and checked against the raw run files."""

import math

import numpy as np
import pandas as pd
import pytest

from paperlib.attacks.suite import SuiteResult, error_curve
from paperlib.metrics import empirical_error
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
    for r in paper.TABLEB5_RADII:
        assert b5.loc["fd-l2-lam1", f"r={r}"] == pytest.approx(cert[f"certified_error@{r:g}"])
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

"""The experiment notebooks' helpers (paperlib.report.experiments): same configs as `paperlib reproduce`,
curves and tables that follow from the stored per-image results."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from paperlib.attacks.checks import Check
from paperlib.attacks.suite import SuiteResult
from paperlib.bounds import CertifyResult
from paperlib.config import config_hash
from paperlib.metrics import best_distances
from paperlib.report import experiments as ex
from paperlib.reproduce import evaluation_configs, grid
from paperlib.runs import RunStore
from paperlib.training import run_name
from tests.conftest import requires_fmnist

NOTEBOOK_PARAMS = {  # grid key -> the notebook parameters that name it
    "undefended": dict(method="undefended"),
    "pgd-at-2": dict(method="pgd-at", norm="linf", eps=2 / 255),
    "pgd-at-8": dict(method="pgd-at", norm="linf"),
    "free-at-8": dict(method="free-at", norm="linf"),
    "free-at-2": dict(method="free-at", norm="linf", m=2),
    "dbp-l1-lam0.1": dict(method="penalty", penalty="dbp", norm="l1", lam=0.1),
    "fd-l1-lam1-h0.1": dict(method="penalty", penalty="fd", norm="l1", lam=1.0, h=0.1),
    "fd-l2-lam1": dict(method="penalty", penalty="fd", norm="l2", lam=1.0, h=0.01),
    "h=1e-4": dict(method="penalty", penalty="fd", norm="l1", lam=1.0, h=1e-4),
}


@pytest.mark.parametrize("key", sorted(NOTEBOOK_PARAMS))
def test_notebook_parameters_give_the_grid_config_so_committed_runs_load(key):
    cfg = ex.train_config("fmnist", **NOTEBOOK_PARAMS[key])
    expected = grid("fmnist")[key]
    assert cfg == expected
    assert run_name(cfg) == run_name(expected) and config_hash(cfg) == config_hash(expected)


def test_default_notebook_parameters_are_the_l2_fd_model_of_the_grid():
    assert ex.train_config("fmnist") == grid("fmnist")["fd-l2-lam1"]


def test_train_config_ignores_options_of_other_methods_and_keeps_profile_epochs_unless_given():
    cfg = ex.train_config("smoke", "undefended", penalty="fd", norm="l2", lam=3.0, h=0.5, eps=0.1)
    assert cfg.method == "undefended" and cfg.lam is None and cfg.eps is None
    assert ex.train_config("smoke", "penalty", penalty="dbp").h is None
    assert ex.train_config("smoke", epochs=3).epochs == 3
    assert ex.train_config("smoke", epochs=None).epochs == grid("smoke")["undefended"].epochs


def test_evaluation_configs_equal_the_profiles_unless_overridden():
    base = evaluation_configs("fmnist")
    same = ex.evaluation_configs("fmnist", n_images=None, seed=0)
    assert {k: config_hash(v) for k, v in same.items()} == {k: config_hash(v) for k, v in base.items()}
    changed = ex.evaluation_configs("smoke", n_images=8, seed=3)
    assert all(c.n_images == 8 for c in changed.values())
    assert changed["attack"].seed == 3
    assert all(changed[k].image_seed == 3 and changed[k].seed == 3 for k in ("bound-l2", "bound-linf", "certify"))
    with pytest.raises(Exception):
        ex.evaluation_configs("smoke", n_images=0)


def test_run_id_is_the_path_relative_to_the_store(tmp_path):
    store = RunStore(tmp_path)
    run = store.run("smoke", "undefended", {"a": 1})
    assert ex.run_id(run, tmp_path) == "smoke/undefended"


def test_config_table_leaves_out_unset_fields_and_shows_eps_in_255ths():
    table = ex.config_table(ex.train_config("smoke", "pgd-at", norm="linf"))
    values = dict(zip(table["option"], table["value"]))
    assert "lam" not in values and values["eps"].endswith("(8/255)") and values["step_size"].endswith("(2/255)")
    assert values["lr"] == "0.05"


def _suite() -> SuiteResult:
    # image 0 misclassified, image 1 broken at l2 0.5 / linf 0.05, image 2 unbroken
    rows = [(0, 1, "pgd", "l2", True, 0.0, 0.0), (1, 2, "pgd", "l2", True, 0.5, 0.05),
            (2, 3, "pgd", "l2", False, math.inf, math.inf), (0, 1, "pgd", "linf", True, 0.0, 0.0),
            (1, 2, "pgd", "linf", True, 0.9, 0.04), (2, 3, "pgd", "linf", False, math.inf, math.inf)]
    attacks = pd.DataFrame(rows, columns=["image", "label", "attack", "norm", "success", "dist_l2", "dist_linf"])
    checks = [Check("a", True, "fine"), Check("b", False, "broken")]
    return SuiteResult(attacks=attacks, best=best_distances(attacks), checks=checks)


def test_error_curves_start_at_the_clean_error_and_never_reach_unbroken_images():
    curves = ex.error_curves(_suite().best)
    for norm, c in curves.items():
        assert c["error_pct"].iloc[0] == pytest.approx(100 / 3)
        assert c["error_pct"].iloc[-1] == pytest.approx(200 / 3)
        assert np.all(np.diff(c["error_pct"]) >= 0)
    assert curves["linf"]["eps"].iloc[-1] >= 8 / 255


def test_attack_and_checks_tables():
    suite = _suite()
    table = ex.attack_table(suite)
    assert table.loc["pgd-l2", "success (%)"] == pytest.approx(50.0)  # of the 2 clean-correct images
    assert table.loc["pgd-linf", "median linf"] == pytest.approx(0.04)
    checks = ex.checks_table(suite.checks)
    assert list(checks["verdict"]) == ["pass", "FAIL"]


def test_certified_error_curve_counts_wrong_images_as_errors_at_every_radius():
    curve = ex.certified_error_curve([0.5, 0.0, 2.0], [True, True, False], [0.0, 0.25, 1.0])
    assert list(curve["error_pct"]) == pytest.approx([100 / 3, 200 / 3, 100.0])


def test_bound_attack_pairs_leave_out_unbroken_images():
    bounds = pd.DataFrame({"image": [0, 1, 2], "l_bound": [0.0, 0.3, 0.4], "omega_distance": [0.0, 0.2, 0.1]})
    pairs = ex.bound_attack_pairs(bounds, _suite().best, "l2")
    assert list(pairs["image"]) == [0, 1] and list(pairs["best"]) == [0.0, 0.5]


def test_smoothing_table_counts_abstentions_as_errors():
    table = pd.DataFrame({"image": [0, 1, 2, 3], "label": [0, 1, 2, 3], "prediction": [0, -1, 2, 1],
                          "correct": [True, False, True, False], "radius": [0.5, 0.0, 0.25, 0.7]})
    result = CertifyResult(table=table, certified=pd.DataFrame(), metrics={"sigma": 0.25, "n": 100})
    s = ex.smoothing_table(result, base_error_pct=10.0)
    assert s["smoothed classifier clean error (%)"] == 50.0 and s["abstained (%)"] == 25.0
    assert s["mean certified radius (l2)"] == pytest.approx(0.1875, abs=1e-4)
    assert s["n (noise samples per image)"] == 100


def test_figures_have_labelled_axes_legends_and_titles():
    import matplotlib.pyplot as plt

    suite = _suite()
    log = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "train_clean_loss": [0.9, 0.4],
                        "test_error_pct": [20.0, 15.0]})
    curve = pd.DataFrame({"radius": [0.0, 1.0], "error_pct": [10.0, 50.0]})
    pairs = {"l2": pd.DataFrame({"best": [0.5], "l_bound": [0.2], "omega_distance": [0.1]})}
    figs = [
        ex.plot_training_log(log, "t"),
        ex.plot_error_curves(ex.error_curves(suite.best), "t"),
        ex.plot_certified_error({"l2": {"L-bound": curve}}, "t"),
        ex.plot_bound_vs_attack(pairs, "t"),
        ex.plot_smoothing(curve, "t", sigma=0.25, empirical=ex.error_curves(suite.best)["l2"]),
    ]
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
            assert ax.get_legend() is not None
        plt.close(fig)
    linf_ax = figs[1].axes[1]
    assert sorted(round(line.get_xdata()[0] * 255) for line in linf_ax.lines[1:]) == [2, 8]



def test_bound_error_curves_start_at_the_clean_error_and_end_at_100():
    from paperlib.bounds import BoundsResult

    table = pd.DataFrame({"image": [0, 1, 2], "correct": [True, True, False], "l_bound": [0.2, 0.4, 0.0],
                          "omega_distance": [0.1, 0.3, 0.0]})
    curves = ex.bound_error_curves({"l2": BoundsResult(table=table, evt={}, certified=pd.DataFrame())})
    for c in curves["l2"].values():
        assert c["error_pct"].iloc[0] == pytest.approx(100 / 3) and c["error_pct"].iloc[-1] == 100.0


@requires_fmnist
def test_prepare_trains_once_then_loads_and_names_the_run_like_reproduce(tmp_path):
    exp = ex.prepare("smoke", "undefended", runs_dir=tmp_path, n_images=4)
    assert exp.model_id == "smoke/undefended" and exp.run.is_finished()
    assert exp.x.shape[0] == 4 and exp.evals["attack"].n_images == 4
    assert ex.finished_attacks(exp) is None  # nothing is computed by asking
    again = ex.prepare("smoke", "undefended", runs_dir=tmp_path, evaluate=False)
    assert again.run.path == exp.run.path and again.model is None

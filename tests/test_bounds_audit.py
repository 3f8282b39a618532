"""Validity audit: lower bounds against the attack suite's best distances; bounds through the run store."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from paperlib.bounds import BoundConfig, audit_bounds, audit_model_run, load_bounds, run_bounds
from paperlib.config import ConfigError
from paperlib.runs import RunStore, StaleRunError


def test_violation_rate_counts_bounds_above_the_best_attack_distance():
    bounds = pd.DataFrame({
        "image": [10, 11, 12, 13, 14, 15],
        "l_bound_evt": [0.1, 0.2, 0.0, 0.5, 0.3, 0.9],
        "l_bound_empirical_max": [0.05, 0.1, 0.0, 0.2, 0.1, 0.4],
        "omega_distance": [0.3, 0.25, 0.0, 0.6, 0.2, 2.0],
    })
    best = pd.DataFrame({
        "image": [10, 11, 12, 13, 14, 15, 10, 99],
        "label": [0] * 8,
        "norm": ["l2", "L2", "l2", "l2", "l2", "l2", "linf", "l2"],
        "best": [0.2, 0.2, 0.0, 0.4, math.inf, 0.5, 0.01, 0.1],
        "best_attack": ["pgd-l2"] * 8,
    })
    out = audit_bounds(bounds, best, "l2").set_index("bound")
    # image 14 was never broken (inf): not comparable; image 99 has no bound; the linf row is ignored.
    assert (out["n_images"] == 6).all() and (out["n_compared"] == 5).all() and (out["n_unbroken"] == 1).all()
    assert out.loc["l_bound_evt", "n_violations"] == 2  # 0.5 > 0.4 and 0.9 > 0.5; 0.2 == 0.2 is no violation
    assert out.loc["l_bound_evt", "violation_rate"] == pytest.approx(40.0)
    assert out.loc["l_bound_empirical_max", "n_violations"] == 0
    assert out.loc["omega_distance", "n_violations"] == 4
    assert out.loc["omega_distance", "max_excess"] == pytest.approx(1.5)
    assert out.loc["omega_distance", "mean_best"] == pytest.approx(np.mean([0.2, 0.2, 0.0, 0.4, 0.5]))


def test_audit_rejects_tables_without_the_needed_columns():
    bounds = pd.DataFrame({"image": [1], "omega_distance": [0.1]})
    with pytest.raises(ConfigError, match="best.csv"):
        audit_bounds(bounds, pd.DataFrame({"image": [1], "distance": [0.2]}), "l2")
    with pytest.raises(ConfigError, match="norm"):
        audit_bounds(bounds, pd.DataFrame({"image": [1], "norm": ["l2"], "best": [0.2]}), "l1")
    with pytest.raises(ConfigError, match="l_bound_evt"):
        audit_bounds(bounds, pd.DataFrame({"image": [1], "norm": ["l2"], "best": [0.2]}), "l2",
                     columns=["l_bound_evt"])


def _linear_problem(n: int = 16):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 9, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.rand(n, 1, 3, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3
    return model, x, y, torch.arange(500, 500 + n)


def _exact_l2_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Minimal l2 distance to any other class of a multi-class linear model (box constraints ignored):
    min over j != y of (z_y - z_j) / ||w_y - w_j||, 0 if misclassified."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ w.T + b
    out = []
    for i in range(len(y)):
        c = int(y[i])
        d = [float((z[i, c] - z[i, j]) / (w[c] - w[j]).norm()) for j in range(3) if j != c]
        out.append(max(min(d), 0.0))
    return np.array(out)


def test_bounds_of_a_linear_model_never_exceed_its_exact_distance_and_the_audit_sees_a_planted_violation():
    model, x, y, idx = _linear_problem()
    cfg = BoundConfig(n_images=len(y), loss="logit-margin", omega_samples=2, grid_size=200, eps_max=3.0,
                      radii=(0.5,), omega_method="empirical-max", lipschitz_batch=2, batch_size=8)
    res = run_bounds(model, x, y, idx, cfg, progress=False)
    exact = _exact_l2_distance(model, x, y)
    best = pd.DataFrame({"image": idx.numpy(), "norm": "l2", "best": exact})
    out = audit_bounds(res.table, best, "l2").set_index("bound")
    assert (out["n_violations"] == 0).all() and (out["n_compared"] == len(y)).all()
    assert out.loc["omega_distance", "mean_bound"] > 0.5 * exact.mean()  # the bound is not vacuous
    half = best.assign(best=exact * 0.5)
    planted = audit_bounds(res.table, half, "l2").set_index("bound")
    assert planted.loc["omega_distance", "n_violations"] == int((exact > 0).sum())


def test_run_bounds_writes_the_run_store_loads_it_back_and_refuses_a_stale_config(tmp_path):
    model, x, y, idx = _linear_problem(10)
    cfg = BoundConfig(n_images=10, omega_samples=2, grid_size=4, radii=(0.5,), lipschitz_batch=2, batch_size=8,
                      omega_method="empirical-max")
    model_run = RunStore(tmp_path).run("smoke", "toy", {"model": "linear"})
    model_run.start()
    model_run.finish({})
    run = model_run.subrun("bounds-l2", cfg)
    first = run_bounds(model, x, y, idx, cfg, run, progress=False)
    assert run.status == "finished"
    for f in ("bounds.csv", "evt.json", "certified_error.csv", "metrics.json"):
        assert run.exists(f)

    class Exploding(nn.Module):
        def forward(self, inp):
            raise AssertionError("a finished run must be loaded, not recomputed")

    loaded = run_bounds(Exploding(), x, y, idx, cfg, run, progress=False)
    assert loaded.table["image"].tolist() == idx.tolist()
    np.testing.assert_allclose(loaded.table["omega_distance"], first.table["omega_distance"])
    np.testing.assert_allclose(loaded.table["l_bound"], first.table["l_bound"], rtol=1e-9)
    assert loaded.evt["omega"][0]["fit"]["method"] == "empirical-max"
    assert loaded.metrics["mean_omega_distance"] == pytest.approx(first.metrics["mean_omega_distance"])
    assert load_bounds(run).table["correct"].dtype == bool

    other = BoundConfig(**{**cfg.__dict__, "omega_samples": 3})
    with pytest.raises(StaleRunError, match="omega_samples"):
        run_bounds(model, x, y, idx, other, model_run.subrun("bounds-l2", other), progress=False)
    with pytest.raises(ConfigError, match="other images"):
        run_bounds(model, x, y, idx + 1, cfg, run, progress=False)

    # The model-level audit finds the bounds and a finished attack run's best.csv.
    attack = model_run.subrun("attack-test", {"attacks": ["exact"]})
    attack.start()
    attack.write_table("best.csv", pd.DataFrame({"image": idx.numpy(), "label": y.numpy(), "norm": "l2",
                                                 "best": _exact_l2_distance(model, x, y), "best_attack": "exact"}))
    assert audit_model_run(model_run.path).empty  # an unfinished attack run is not audited
    attack.finish({})
    table = audit_model_run(model_run.path)
    assert set(table["bound"]) == {"l_bound_evt", "l_bound_empirical_max", "omega_distance"}
    assert (table["bounds_run"] == "bounds-l2").all() and (table["best_table"] == "attack-test/best.csv").all()
    direct = audit_bounds(first.table, attack.read_table("best.csv"), "l2")
    assert table["n_violations"].tolist() == direct["n_violations"].tolist()
    # (With the softmax margin and L estimated from 10 images, the L-bound is violated on most of them:
    # the estimates are heuristic, which is what the audit is for.)


def test_run_bounds_resumes_after_an_interruption_with_the_same_result(tmp_path):
    model, x, y, idx = _linear_problem(10)
    cfg = BoundConfig(n_images=10, loss="logit-margin", omega_samples=2, grid_size=5, radii=(0.5,),
                      omega_method="empirical-max", batch_size=10)
    reference = run_bounds(model, x, y, idx, cfg, progress=False)
    run = RunStore(tmp_path).run("smoke", "toy", {"model": "linear"}).subrun("bounds-l2", cfg)

    class Interrupt(Exception):
        pass

    class Flaky(nn.Module):
        """The model, failing after a fixed number of forward passes: one statistics pass, then per radius one
        pass for l(x) and its gradient and one per perturbation (the grid has 7 radii)."""

        def __init__(self, budget: int) -> None:
            super().__init__()
            self.inner, self.budget = model, budget

        def forward(self, inp):
            if self.budget == 0:
                raise Interrupt
            self.budget -= 1
            return self.inner(inp)

    with pytest.raises(Interrupt):
        run_bounds(Flaky(1 + 3 + 3 + 1), x, y, idx, cfg, run, progress=False)  # dies inside the third radius
    assert run.status == "partial" and run.load_checkpoint()["done"] == [0, 1]
    assert len(cfg.grid()) == 7
    resumed = run_bounds(Flaky(1 + 3 * 5), x, y, idx, cfg, run, progress=False)  # only the rest is computed
    pd.testing.assert_frame_equal(resumed.table, reference.table)
    assert [e["omega"] for e in resumed.evt["omega"]] == [e["omega"] for e in reference.evt["omega"]]

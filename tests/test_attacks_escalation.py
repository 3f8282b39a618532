"""Budget escalation (``AttackConfig.escalate``): where the convergence check fails in a norm, the suite
re-attacks with that norm's gradient attacks at twice the budgets, keeps the closer adversarial per image, and
checks again; a finished suite of the same config without escalation is reused as the first phase."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from paperlib.attacks import checks as C
from paperlib.attacks.suite import AttackConfig, attack_model, attack_run_name, keep_closer, run_attack_suite
from paperlib.config import ConfigError
from paperlib.runs import Run


def _setup(n: int = 12):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(3)
    x = 0.2 + 0.6 * torch.rand(n, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y, torch.arange(n) * 3 + 11


# Budgets far too small to converge (1 PGD step per radius, 2 CW steps): the doubled budgets improve most images
WEAK = dict(attacks=("pgd", "cw", "logbarrier"), pgd_steps=1, pgd_search_steps=3, cw_steps=2,
            cw_binary_search_steps=1, logbarrier_outer=1, logbarrier_inner=2, batch_size=5, convergence_n=12,
            convergence_tail=0.05, n_images=12)


def test_keep_closer_replaces_only_strictly_closer_rows_in_place():
    rows = pd.DataFrame({"image": [1, 1, 2], "label": 0, "attack": ["pgd", "pgd", "pgd"], "norm": ["l2", "linf", "l2"],
                         "success": [True, True, False], "dist_l2": [1.0, 2.0, math.inf],
                         "dist_linf": [0.5, 0.1, math.inf]})
    more = pd.DataFrame({"image": [2, 1], "label": 0, "attack": ["pgd", "pgd"], "norm": ["l2", "l2"],
                         "success": [True, True], "dist_l2": [3.0, 1.5], "dist_linf": [0.9, 0.2]})
    out = keep_closer(rows, more)
    assert out["dist_l2"].tolist() == [1.0, 2.0, 3.0]  # image 1 kept (1.0 < 1.5), image 2 newly broken
    assert out["success"].tolist() == [True, True, True] and out["success"].dtype == bool
    with pytest.raises(ConfigError, match="no row to replace"):
        keep_closer(rows, more.assign(image=[9, 1]))


def test_escalate_needs_the_convergence_check():
    with pytest.raises(ConfigError, match="escalate=1 needs the convergence check"):
        AttackConfig(escalate=1, convergence_n=0)
    with pytest.raises(ConfigError, match="escalate"):
        AttackConfig(escalate=-1)
    assert AttackConfig.cheap().escalate == 1 and AttackConfig.cheap(convergence_n=0).escalate == 0
    cfg = AttackConfig(**WEAK)
    assert dataclasses.replace(cfg, escalate=2).escalated(4, ["l2"]).attacks == ("pgd", "cw", "logbarrier")
    assert attack_run_name(dataclasses.replace(cfg, escalate=0)) == attack_run_name(cfg)  # 0 is the committed default


def test_a_failing_norm_is_escalated_and_every_image_gets_no_farther(tmp_path):
    model, x, y, idx = _setup()
    base_cfg = AttackConfig(**WEAK)
    base = run_attack_suite(model, x, y, idx, base_cfg, progress=False)
    failing = C.convergence_failures(base.summary["convergence"], base_cfg.convergence_tol, base_cfg.convergence_tail)
    assert failing  # the weak budgets do not converge
    cfg = dataclasses.replace(base_cfg, escalate=1)
    res = run_attack_suite(model, x, y, idx, cfg, progress=False)
    (record,) = res.summary["escalation"]
    assert record["round"] == 1 and record["factor"] == 2 and record["norms"] == failing
    assert res.summary["convergence"]["factor"] == {n: 2 for n in failing}
    # the first phase is the same computation as the base suite's (seeded per image), then rows only improve
    b, e = base.best.set_index(["image", "norm"])["best"], res.best.set_index(["image", "norm"])["best"]
    assert (e <= b.reindex(e.index)).all() and (e < b.reindex(e.index)).any()
    # the escalated jobs cost their base passes plus the round's
    for job, (fwd, bwd) in record["passes_per_image"].items():
        before = base.summary["jobs"][job]
        after = res.summary["jobs"][job]
        assert after["forward_passes_per_image"] == pytest.approx(before["forward_passes_per_image"] + fwd)
        assert after["backward_passes_per_image"] == pytest.approx(before["backward_passes_per_image"] + bwd)
    check = next(c for c in res.checks if c[0] == "attacks_converged")
    assert "after escalation" in check[2]


def test_an_escalating_suite_reuses_the_finished_suite_without_escalation(tmp_path):
    model, x, y, idx = _setup()
    base_cfg = AttackConfig(**WEAK)
    model_dir = tmp_path / "model"
    base = attack_model(model, x, y, idx, base_cfg, Run(model_dir / attack_run_name(base_cfg), base_cfg),
                        progress=False)
    cfg = dataclasses.replace(base_cfg, escalate=1)
    reused = attack_model(model, x, y, idx, cfg, Run(model_dir / attack_run_name(cfg), cfg), progress=False)
    fresh = run_attack_suite(model, x, y, idx, cfg, progress=False)
    assert reused.summary["reused_first_phase"] is True and fresh.summary["reused_first_phase"] is False
    pd.testing.assert_frame_equal(reused.best, fresh.best)  # reusing changes nothing but the cost
    assert [c[0] for c in reused.checks] == [c[0] for c in fresh.checks]
    box = next(c for c in reused.checks if c[0] == "adversarials_in_unit_box")
    assert box[1] and box[2].startswith("first phase (reused run)")
    assert base.summary["convergence"]["n"] == reused.summary["convergence"]["n"] == 12
    # a model whose budgets already converge is not escalated: the reused suite is the result
    ok_cfg = dataclasses.replace(base_cfg, convergence_tol=10.0, convergence_tail=None)
    ok = run_attack_suite(model, x, y, idx, dataclasses.replace(ok_cfg, escalate=2), progress=False)
    assert ok.summary["escalation"] == []
    np.testing.assert_array_equal(ok.best["best"], run_attack_suite(model, x, y, idx, ok_cfg, progress=False).best["best"])


def test_escalate_norms_escalates_a_converged_norm_to_match_a_compared_models_budget(tmp_path):
    model, x, y, idx = _setup()
    ok_cfg = AttackConfig(**{**WEAK, "convergence_tol": 10.0, "convergence_tail": None})  # every check passes
    model_dir = tmp_path / "model"
    base = attack_model(model, x, y, idx, ok_cfg, Run(model_dir / attack_run_name(ok_cfg), ok_cfg), progress=False)
    cfg = dataclasses.replace(ok_cfg, escalate=1, escalate_norms=("l2",))
    res = attack_model(model, x, y, idx, cfg, Run(model_dir / attack_run_name(cfg), cfg), progress=False)
    assert res.summary["reused_first_phase"] is True  # the suite without escalation is the first phase
    (record,) = res.summary["escalation"]
    assert record["norms"] == ["l2"] and record["matched"] == ["l2"]
    assert res.summary["convergence"]["factor"] == {"l2": 2}  # what results.attack_budget reads
    b, e = base.best.set_index(["image", "norm"])["best"], res.best.set_index(["image", "norm"])["best"]
    assert (e <= b.reindex(e.index)).all()
    lin = lambda r: r.attacks[r.attacks["norm"] == "linf"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(lin(res), lin(base))  # the linf jobs are not re-run
    # without escalate_norms the same converged model is not escalated, and the field keeps the hash
    assert run_attack_suite(model, x, y, idx, dataclasses.replace(ok_cfg, escalate=1), progress=False
                            ).summary["escalation"] == []
    assert attack_run_name(dataclasses.replace(ok_cfg, escalate=1, escalate_norms=())) == \
        attack_run_name(dataclasses.replace(ok_cfg, escalate=1))
    assert attack_run_name(cfg) != attack_run_name(dataclasses.replace(ok_cfg, escalate=1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(escalate_norms=("l2",)), "needs an escalation round"),
    (dict(escalate=1, convergence_n=5, norms=("linf",), escalate_norms=("l2",)), "'l2' is not among norms"),
    (dict(escalate=1, convergence_n=5, escalate_norms=("l3",)), "l3"),
])
def test_bad_escalate_norms_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackConfig(**kwargs)


def test_escalate_norms_normalise_to_the_canonical_order():
    cfg = AttackConfig(escalate=1, convergence_n=5, escalate_norms=["LINF", "l2", "linf"])
    assert cfg.escalate_norms == ("l2", "linf")
    assert AttackConfig(escalate=1, convergence_n=5, escalate_norms="l2").escalate_norms == ("l2",)

"""The attack suite: tables, best distances, error curves, resumption, run store, checks and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from paperlib.attacks import checks as C
from paperlib.attacks.suite import (
    ATTACK_COLUMNS,
    BEST_COLUMNS,
    AttackConfig,
    attack_model,
    load_suite,
    run_attack_suite,
)
from paperlib.config import ConfigError
from paperlib.runs import RunStore


def tiny_setup(n: int = 6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(n, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[1] = (y[1] + 1) % 4  # clean-misclassified
    idx = torch.arange(100, 100 + n) * 7
    return model, x, y, idx


TINY = dict(pgd_steps=6, pgd_search_steps=5, cw_steps=20, cw_binary_search_steps=2, boundary_steps=60,
            logbarrier_outer=2, logbarrier_inner=10)


def test_suite_tables_have_documented_columns_and_rows(tmp_path):
    model, x, y, idx = tiny_setup()
    cfg = AttackConfig(n_images=6, batch_size=4, convergence_n=2, **TINY)
    run = RunStore(tmp_path).run("smoke", "attack", cfg)
    res = run_attack_suite(model, x, y, idx, cfg, run=run, progress=False)
    jobs = cfg.jobs()
    assert jobs == [("pgd", "l2"), ("pgd", "linf"), ("cw", "l2"), ("boundary", "l2"), ("logbarrier", "l2"),
                    ("logbarrier", "linf")]
    assert list(res.attacks.columns) == ATTACK_COLUMNS
    assert len(res.attacks) == 6 * len(jobs)
    assert set(res.attacks["image"]) == set(idx.tolist())
    assert list(res.best.columns) == BEST_COLUMNS and len(res.best) == 12
    # clean-misclassified image: distance 0, 'clean'
    b1 = res.best[res.best["image"] == int(idx[1])]
    assert (b1["best"] == 0).all() and (b1["best_attack"] == "clean").all()
    # best = min over successful rows of every attack (in that norm's distance)
    for norm in ("l2", "linf"):
        ok = res.attacks[res.attacks["success"]]
        expect = ok.groupby("image")[f"dist_{norm}"].min()
        got = res.best[res.best["norm"] == norm].set_index("image")["best"]
        assert np.allclose(got.loc[expect.index].values, expect.values)
    names = [c[0] for c in res.checks]
    assert names == ["model_returns_logits", "deterministic_forward", "adversarials_in_unit_box",
                     "fixed_eps_in_ball", "minimal_attacks_succeed", "distances_valid", "error_curve_monotone",
                     "no_gradient_masking", "attacks_converged"]
    for f in ("attacks.csv", "best.csv", "checks.json", "summary.json"):
        assert run.exists(f)
    # the results load back
    back = load_suite(run)
    pd.testing.assert_frame_equal(back.attacks, res.attacks, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(back.best, res.best, check_exact=False, rtol=1e-9)
    assert [tuple(c) for c in back.checks] == [tuple(c) for c in res.checks]


def test_suite_resumes_after_interruption_and_matches_uninterrupted_run(tmp_path, monkeypatch):
    model, x, y, idx = tiny_setup()
    cfg = AttackConfig(attacks=("pgd", "logbarrier"), norms=("l2",), n_images=6, batch_size=2, convergence_n=0,
                       **TINY)
    full = run_attack_suite(model, x, y, idx, cfg, progress=False)

    from paperlib.attacks import pgd as pgd_module

    calls = {"n": 0}
    original = pgd_module.MinimalPGD._attack

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(pgd_module.MinimalPGD, "_attack", flaky)
    run = RunStore(tmp_path).run("smoke", "attack", cfg)
    with pytest.raises(KeyboardInterrupt):
        run_attack_suite(model, x, y, idx, cfg, run=run, progress=False)
    assert run.status == "partial"
    assert run.load_checkpoint()["suite"]["batches_done"] == 1
    monkeypatch.setattr(pgd_module.MinimalPGD, "_attack", original)
    seen = []
    monkeypatch.setattr(pgd_module.MinimalPGD, "_attack",
                        lambda self, m, xx, *a, **k: (seen.append(len(xx)), original(self, m, xx, *a, **k))[1])
    resumed = run_attack_suite(model, x, y, idx, cfg, run=run, progress=False)
    assert sum(seen) <= 4  # only the two unfinished batches were attacked again
    pd.testing.assert_frame_equal(resumed.attacks, full.attacks)
    pd.testing.assert_frame_equal(resumed.best, full.best)


def test_attack_model_finishes_the_run_and_loads_it_without_recomputing(tmp_path, monkeypatch):
    model, x, y, idx = tiny_setup(4)
    cfg = AttackConfig(attacks=("pgd",), norms=("linf",), n_images=4, batch_size=4, convergence_n=0, **TINY)
    run = RunStore(tmp_path).run("smoke", "attack", cfg)
    first = attack_model(model, x, y, idx, cfg, run, progress=False)
    assert run.status == "finished" and run.read_json("metrics.json")["n_images"] == 4
    import paperlib.attacks.suite as suite

    monkeypatch.setattr(suite, "run_attack_suite", lambda *a, **k: pytest.fail("recomputed a finished run"))
    second = attack_model(model, x, y, idx, cfg, run, progress=False)
    pd.testing.assert_frame_equal(second.best, first.best, check_exact=False, rtol=1e-9)


def test_attack_config_validates_and_normalizes():
    cfg = AttackConfig(attacks=("logbarrier", "pgd"), norms=("Linf", "L2"))
    assert cfg.attacks == ("pgd", "logbarrier") and cfg.norms == ("l2", "linf")
    assert AttackConfig(norms=("linf",)).jobs() == [("pgd", "linf"), ("logbarrier", "linf")]
    with pytest.raises(ConfigError, match="attack"):
        AttackConfig(attacks=("fgsm",))
    with pytest.raises(ConfigError, match="norm"):
        AttackConfig(norms=("l1",))
    with pytest.raises(ConfigError, match="l2 attacks"):
        AttackConfig(attacks=("cw",), norms=("linf",))
    with pytest.raises(ConfigError, match="n_images"):
        AttackConfig(n_images=0)
    doubled = AttackConfig().scaled(2)
    assert doubled.pgd_steps == 80 and doubled.cw_steps == 2000 and doubled.boundary_steps == 50000
    with pytest.raises(ConfigError, match="same length"):
        run_attack_suite(nn.Linear(1, 1), torch.zeros(2, 1), torch.zeros(2), torch.zeros(3), AttackConfig())


def test_checks_fail_on_what_they_are_meant_to_catch():
    assert not C.check_unit_box({"pgd-l2": {"box_violation": 1e-3}}).passed
    assert C.check_unit_box({"pgd-l2": {"box_violation": 0.0}}).passed
    assert not C.check_in_ball({"pgd-l2": {"box_violation": 0.0, "ball_violation": 0.01}}).passed
    table = pd.DataFrame(
        [(1, 0, "pgd", "l2", True, 0.5, 0.1), (2, 0, "pgd", "l2", False, math.inf, math.inf),
         (1, 0, "boundary", "l2", True, 0.1, 0.05), (2, 0, "boundary", "l2", True, 0.4, 0.1)],
        columns=ATTACK_COLUMNS)
    low = C.check_success(table, 0.99)
    assert not low.passed and "pgd-l2 50.0%" in low.message
    masking = C.check_gradient_masking(table, ratio=0.5, max_fraction=0.01)
    # image 1: boundary 0.1 < 0.5 * 0.5; image 2: every gradient attack failed where Boundary succeeded
    assert not masking.passed and "2 of 2 images" in masking.message
    table.loc[1, ["success", "dist_l2", "dist_linf"]] = [True, 0.45, 0.1]
    assert "1 of 2 images" in C.check_gradient_masking(table, ratio=0.5, max_fraction=0.01).message
    assert C.check_gradient_masking(table, ratio=0.1, max_fraction=0.01).passed
    assert not C.check_convergence({"l2": (1.0, 0.9), "n": 5}, tol=0.05).passed
    assert C.check_convergence({"l2": (1.0, 0.99), "n": 5}, tol=0.05).passed
    bad = pd.DataFrame({"image": [1, 2], "label": [0, 0], "norm": ["l2", "l2"], "best": [np.nan, 0.1],
                        "best_attack": ["x", "y"]})
    assert not C.check_error_curve(bad)[0].passed
    x = torch.rand(4, 1, 6, 6)
    softmax_model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.Softmax(dim=1))
    assert not C.check_logits(softmax_model, x).passed
    assert C.check_logits(softmax_model[:2], x).passed

    class Noisy(nn.Module):
        def forward(self, z):
            return z.flatten(1)[:, :3] + torch.randn(len(z), 3)

    assert not C.check_deterministic(Noisy(), x).passed


def test_cli_attack_runs_loads_and_rejects_bad_input(tmp_path, capsys):
    from paperlib.cli import main
    from paperlib.training import TrainConfig, train

    tcfg = TrainConfig.from_profile("smoke", dataset="synthetic-fashion-mnist", train_subset=64, test_subset=32,
                                    epochs=1, batch_size=32)
    trun = train(tcfg, str(tmp_path), progress=False, device="cpu")
    argv = ["attack", str(trun.path), "--n", "4", "--attacks", "pgd", "--norms", "L2", "--convergence-n", "0",
            "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pgd-l2" in out and "adversarials_in_unit_box" in out
    sub = [p for p in trun.path.iterdir() if p.name.startswith("attack-")]
    assert len(sub) == 1 and (sub[0] / "best.csv").exists()
    best = pd.read_csv(sub[0] / "best.csv")
    assert list(best.columns) == BEST_COLUMNS and len(best) == 4
    assert main(argv) == 0  # finished: loads
    assert main(["attack", str(trun.path), "--norms", "l3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paperlib: error:") and "l3" in err[0]
    assert main(["attack", str(tmp_path / "nope")]) == 2


def _wins_tables():
    """Three images: image 0 PGD and LogBarrier tie in l2, image 1 clean-misclassified, image 2 only CW broke."""
    rows = [
        (0, 1, "pgd", "l2", True, 0.5, 0.1), (0, 1, "logbarrier", "l2", True, 0.5, 0.2), (0, 1, "cw", "l2", True, 0.504, 0.05),
        (1, 2, "pgd", "l2", True, 0.0, 0.0), (1, 2, "logbarrier", "l2", True, 0.0, 0.0), (1, 2, "cw", "l2", True, 0.0, 0.0),
        (2, 3, "pgd", "l2", False, math.inf, math.inf), (2, 3, "logbarrier", "l2", False, math.inf, math.inf),
        (2, 3, "cw", "l2", True, 0.9, 0.3),
    ]
    from paperlib.metrics import best_distances

    attacks = pd.DataFrame(rows, columns=ATTACK_COLUMNS)
    return attacks, best_distances(attacks, ("l2", "linf"))


def test_summary_and_report_count_wins_ties_to_each_tied_attack():
    from paperlib.attacks.suite import summarize
    from paperlib.attacks.suite import SuiteResult
    from paperlib.report.experiments import attack_wins_table

    attacks, best = _wins_tables()
    wins = summarize(attacks, best)["wins_l2"]
    assert wins["n_broken"] == 2  # the clean-misclassified image is left out
    assert (wins["pgd-l2"]["tied_best"], wins["logbarrier-l2"]["tied_best"], wins["cw-l2"]["tied_best"]) == (1, 1, 1)
    assert wins["pgd-l2"]["best"] + wins["logbarrier-l2"]["best"] == 1  # best.csv names one of the tied pair
    assert wins["cw-l2"]["within_1pct"] == 2  # 0.504 <= 1.01 * 0.5, and its own image
    table = attack_wins_table(SuiteResult(attacks=attacks, best=best, checks=[]))
    assert table.loc[("l2", "pgd-l2"), "best (%)"] == 50.0 and table.loc[("l2", "cw-l2"), "within 1% (%)"] == 100.0
    # in linf the l2 attacks' adversarials count: CW is closest on both broken images
    assert table.loc[("linf", "cw-l2"), "best (%)"] == 100.0 and table.loc[("linf", "pgd-l2"), "best (%)"] == 0.0


def test_passes_table_reads_the_summary_or_a_matching_benchmark_record(tmp_path):
    import json

    from paperlib.attacks.suite import SuiteResult
    from paperlib.report.experiments import attack_passes_table

    attacks, best = _wins_tables()
    counted = SuiteResult(attacks, best, [], summary={"jobs": {"pgd-l2": {
        "forward_passes_per_image": 10.0, "backward_passes_per_image": 4.0}}})
    t = attack_passes_table(counted)
    assert t.loc["pgd-l2", "passes per image"] == 14.0 and t.loc["pgd-l2", "source"] == "this run's summary"
    cfg = AttackConfig(n_images=60)
    record = tmp_path / "rec.json"
    stored = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(AttackConfig(n_images=100)).items()
              if k != "logbarrier_stall"}  # a record predating a field at its default still matches
    record.write_text(json.dumps({"n_images": 100, "today": stored, "models": {"runs/fmnist/m": {"jobs_today": {
        "cw-l2": {"forward": 3.0, "backward": 2.0}}}}}))
    uncounted = SuiteResult(attacks, best, [], summary={})
    t = attack_passes_table(uncounted, cfg, "fmnist/m", record)
    assert t.loc["cw-l2", "passes per image"] == 5.0 and "100 images" in t.loc["cw-l2", "source"]
    assert attack_passes_table(uncounted, AttackConfig(pgd_steps=7), "fmnist/m", record).empty
    assert attack_passes_table(uncounted, cfg, "fmnist/other", record).empty

"""Tests of the training engine (paperlib.training): config, schedule, methods, resume, NaN handling, CLI."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from paperlib.config import ConfigError, config_from_dict, config_hash, config_to_dict
from paperlib.runs import RunStore
from paperlib.training import TrainConfig, TrainingDivergedError, learning_rate, load_trained, run_name, train
from paperlib.training import engine, methods
from paperlib.training.methods import FreeAdversarialTraining, pgd_perturbation


@pytest.fixture(autouse=True)
def one_thread():
    # The CI machine is shared; one intra-op thread is both faster and reproducible here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> TrainConfig:
    """A few-second recipe on seeded synthetic Fashion-MNIST-shaped data with the BatchNorm-free CNN."""
    base = dict(dataset="synthetic-fashion-mnist", train_subset=192, test_subset=64, batch_size=64,
                eval_batch_size=64, epochs=3, lr=0.05, milestones=(2,))
    base.update(kw)
    return TrainConfig.from_profile("smoke", **base)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_run_names_are_readable_and_distinct_over_the_paper_grid():
    grid = [dict(method="undefended")]
    grid += [dict(method="pgd-at", eps=e) for e in (2 / 255, 8 / 255)]
    grid += [dict(method="free-at", m=m) for m in (2, 8)]
    grid += [dict(method="penalty", penalty=p, norm=n, lam=lam, h=(0.1 if (p, n, lam) == ("fd", "l1", 1.0) else None))
             for p in ("dbp", "fd") for n in ("l1", "l2") for lam in (0.1, 1.0)]
    grid += [dict(method="penalty", penalty="fd", norm="l1", lam=1.0, h=h) for h in (1e-4, 1e-3, 1e-2, 1)]
    grid = [{k: v for k, v in g.items() if v is not None} for g in grid]
    names = [run_name(TrainConfig.from_profile("fmnist", **g)) for g in grid]
    assert len(set(names)) == len(names)
    assert "undefended" in names and "pgd7-linf-eps8_255" in names and "pgd7-linf-eps2_255" in names
    assert "free-m8-linf-eps8_255" in names and "fd-l1-lam1-h0.1" in names and "dbp-l2-lam0.1" in names
    assert "fd-l2-lam0.1-h0.01" in names
    assert run_name(TrainConfig.from_profile("fmnist", seed=3)) == "undefended-seed3"
    changed = run_name(TrainConfig.from_profile("fmnist", epochs=3))
    assert changed.startswith("undefended-r") and changed != "undefended"


def test_train_config_round_trips_through_json_and_resolves_defaults():
    cfg = TrainConfig.from_profile("cifar10", method="pgd-at")
    assert cfg.eps == pytest.approx(8 / 255) and cfg.step_size == pytest.approx(2 / 255) and cfg.steps == 7
    assert cfg.random_start is True and cfg.lam is None and cfg.m is None
    assert cfg.augment is True and cfg.milestones == (60, 120, 160)
    back = config_from_dict(TrainConfig, config_to_dict(cfg))
    assert back == cfg and config_hash(back) == config_hash(cfg)
    pen = TrainConfig.from_profile("fmnist", method="penalty", penalty="dbp", norm="L1")
    assert pen.norm == "l1" and pen.h is None and pen.scheme is None and pen.lam == 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="penalty", lam=-1.0), "lam"),
    (dict(method="penalty", h=0.0), "h"),
    (dict(method="penalty", h=-0.01), "h"),
    (dict(method="penalty", norm="l3"), "norm"),
    (dict(method="penalty", norm="linf"), "dual"),
    (dict(method="pgd-at", norm="l1"), "norm"),
    (dict(method="adversarial"), "method"),
    (dict(method="penalty", penalty="exact"), "penalty"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=1.5), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=float("nan")), "lr"),
    (dict(method="pgd-at", eps=0.0), "eps"),
    (dict(method="free-at", m=0), "m"),
    (dict(method="undefended", lam=1.0), "does not apply"),
    (dict(method="pgd-at", h=0.1), "does not apply"),
    (dict(milestones=(4, 2)), "milestones"),
    (dict(nonsense=1), "unknown"),
])
def test_bad_training_input_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_profile("fmnist", **kwargs)


def test_unknown_profile_raises_config_error():
    with pytest.raises(ConfigError, match="profile"):
        TrainConfig.from_profile("mnist")


def test_learning_rate_schedule_follows_the_profile_and_free_at_divides_it_by_m():
    cfg = TrainConfig.from_profile("cifar10")
    lrs = [learning_rate(cfg, e) for e in (0, 59, 60, 119, 120, 159, 160, 199)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008])
    free = TrainConfig.from_profile("cifar10", method="free-at", m=8)
    assert engine.train_epochs(free) == 25
    assert learning_rate(free, 7) == pytest.approx(0.1) and learning_rate(free, 8) == pytest.approx(0.02)


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_perturbation_stays_in_the_ball_and_the_box_and_increases_the_loss(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(3, (8,))
    x0 = x.clone()
    eps = 0.1 if norm == "linf" else 0.5
    gen = torch.Generator().manual_seed(0)
    adv = pgd_perturbation(model, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=7, generator=gen)
    assert torch.equal(x, x0)
    assert adv.min() >= 0 and adv.max() <= 1
    dist = (adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert torch.all(dist <= eps + 1e-6)
    ce = nn.functional.cross_entropy
    assert ce(model(adv), y) > ce(model(x), y)
    # The same generator seed gives the same attack (the engine seeds it per step for exact resume).
    again = pgd_perturbation(model, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=7,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)


def test_free_at_replays_each_minibatch_m_times_with_a_persistent_perturbation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    orig = opt.step
    opt.step = lambda *a, **k: (steps.append(1), orig(*a, **k))[1]
    method = FreeAdversarialTraining(eps=0.05, m=3)
    x, y = torch.rand(4, 1, 4, 4), torch.randint(3, (4,))
    method.step(model, opt, x, y)
    assert len(steps) == 3
    delta = method.state_dict()["delta"]
    assert delta.abs().max() > 0 and delta.abs().max() <= 0.05 + 1e-7
    fresh = FreeAdversarialTraining(eps=0.05, m=3)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.delta, delta)


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


def _weights(run):
    return run.load_weights()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method_kw", [
    dict(method="penalty", penalty="fd", norm="l1", lam=1.0, h=0.1),
    dict(method="free-at", m=2, epochs=6),
    dict(method="pgd-at", steps=2),
])
def test_resume_after_a_kill_gives_the_same_weights_as_training_straight(tmp_path, monkeypatch, method_kw):
    cfg = tiny(**method_kw)
    straight = train(cfg, RunStore(tmp_path / "a"), progress=False)

    # Kill the second run in the middle of epoch 2 (after the checkpoint of epoch 1 was written).
    real_build = methods.build_method
    calls = {"n": 0}

    def killing_build(c):
        m = real_build(c)
        real_step = m.step

        def step(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3 + 1:  # 3 steps per epoch: the 2nd step of epoch 2
                raise _Killed()
            return real_step(*a, **k)

        m.step = step
        return m

    monkeypatch.setattr(engine, "build_method", killing_build)
    store = RunStore(tmp_path / "b")
    with pytest.raises(_Killed):
        train(cfg, store, progress=False)
    run = store.run(cfg.profile, run_name(cfg), cfg)
    assert run.status == "partial" and run.load_checkpoint()["epoch"] == 1
    monkeypatch.setattr(engine, "build_method", real_build)
    resumed = train(cfg, store, progress=False)
    assert resumed.status == "finished"
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = straight.read_table("train_log.csv"), resumed.read_table("train_log.csv")
    cols = ["epoch", "lr", "train_loss", "test_error_pct", "test_loss"]
    assert la[cols].equals(lb[cols])


class NaNAfter(nn.Module):
    """A linear model whose output turns NaN after ``k`` training-mode forwards."""

    def __init__(self, k: int):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.k, self.calls = k, 0

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.k:
                out = out * float("nan")
        return out


def test_nan_loss_stops_training_naming_the_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(model="linear", method="undefended")
    monkeypatch.setattr(engine, "_build", lambda c: NaNAfter(k=4))  # 3 steps per epoch: NaN at epoch 2 step 2
    store = RunStore(tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2 step 2 .*checkpoint of epoch 1") as info:
        train(cfg, store, progress=False)
    assert "not finite" in str(info.value)
    run = store.run(cfg.profile, run_name(cfg), cfg)
    assert run.status == "partial"
    ck = run.load_checkpoint()
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not run.exists("weights.pt")


def test_training_time_excludes_evaluation_and_a_finished_run_is_loaded_not_retrained(tmp_path, monkeypatch):
    cfg = tiny(epochs=2)
    real_eval = engine.evaluate
    # The engine's clock, advanced by an hour inside every evaluation: a verdict that does not depend on the
    # machine's load (a real sleep against real training time does).
    offset = {"s": 0.0}
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset["s"]))

    def slow_eval(*a, **k):
        offset["s"] += 3600.0
        return real_eval(*a, **k)

    monkeypatch.setattr(engine, "evaluate", slow_eval)
    run = train(cfg, RunStore(tmp_path), progress=False)
    log = run.read_table("train_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert (log["eval_seconds"] >= 3600).all() and (log["train_seconds"] < 3600).all()
    assert log["train_seconds_total"].iloc[-1] == pytest.approx(log["train_seconds"].sum())
    metrics = run.read_json("metrics.json")
    assert metrics["train_hours"] == pytest.approx(log["train_seconds"].sum() / 3600)
    assert metrics["clean_error_pct"] == pytest.approx(log["test_error_pct"].iloc[-1])
    # Asking again loads the finished run: nothing is retrained.
    stamp = (run.path / "weights.pt").stat().st_mtime_ns
    monkeypatch.setattr(engine, "_train_loop", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = train(cfg, RunStore(tmp_path), progress=False)
    assert again.path == run.path and (run.path / "weights.pt").stat().st_mtime_ns == stamp


def test_load_trained_gives_the_model_in_eval_mode_with_its_config(tmp_path):
    cfg = tiny(epochs=1, method="penalty", lam=0.5)
    run = train(cfg, RunStore(tmp_path), progress=False)
    model, back = load_trained(run)
    assert back == cfg and not model.training
    from paperlib.data import load_dataset, subset

    test = subset(load_dataset(cfg.dataset, "test"), cfg.test_subset, seed=0)
    err = engine.evaluate(model, test, batch_size=64)["error_pct"]
    assert err == pytest.approx(run.read_json("metrics.json")["clean_error_pct"])
    model2, _ = load_trained(run.path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


@pytest.mark.parametrize("profile,dataset,kw", [
    ("cifar10", "synthetic-cifar10", dict(method="penalty", penalty="fd", norm="l1", lam=1.0, h=0.1, bn_guard=True)),
    ("imagenet", "synthetic-imagenet", dict(method="penalty", penalty="fd", norm="l2", lam=1.0)),
])
def test_cifar10_and_imagenet_profiles_run_end_to_end_on_synthetic_data(tmp_path, profile, dataset, kw):
    # A few steps at the recipe's image size and network (ResNet-50 at 224 px costs seconds per step here).
    n, b = (2, 2) if profile == "imagenet" else (8, 4)
    # Gradient clipping: without it the FD penalty's first steps on ResNeXt move the weights so far that the
    # eval-mode test loss is ~1e6-1e29 (measured, lr 0.1 and 1e-3 alike), which training records as diverged.
    cfg = TrainConfig.from_profile(profile, dataset=dataset, epochs=1, train_subset=n, test_subset=b,
                                   batch_size=b, eval_batch_size=b, num_workers=0, grad_clip=5.0, **kw)
    assert cfg.model == {"cifar10": "resnext34-2x32", "imagenet": "resnet50"}[profile]
    run = train(cfg, RunStore(tmp_path), progress=False)
    log = run.read_table("train_log.csv")
    assert run.status == "finished" and log["steps"].iloc[0] == n // b
    assert math.isfinite(log["train_loss"].iloc[0]) and math.isfinite(log["train_penalty"].iloc[0])
    model, _ = load_trained(run)
    assert not model.training


def test_cli_train_writes_a_run_and_reports_bad_input_in_one_line(tmp_path, capsys):
    from paperlib.cli import main

    args = ["train", "--profile", "smoke", "--dataset", "synthetic-fashion-mnist", "--train-subset", "128",
            "--test-subset", "64", "--method", "fd", "--attack-norm", "linf", "--lam", "1", "--h", "0.1",
            "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fd-l1-lam1-h0.1" in out and "clean test error" in out
    assert main(["train", "--profile", "smoke", "--method", "penalty", "--lam", "-1", "--runs-dir",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lam=-1.0 must be >= 0" in err[0]
    assert main(["train", "--profile", "smoke", "--method", "pgd-at", "--eps", "8/255", "--epochs", "0",
                 "--runs-dir", str(tmp_path)]) == 2
    assert "epochs=0" in capsys.readouterr().err

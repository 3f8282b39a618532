import json

import pytest

import paperlib
import paperlib.training
from paperlib.config import ConfigError, config_hash
from paperlib.reproduce import evaluation_configs, grid, reproduce, stage_seconds
from paperlib.report.paper import ROW_KEYS, TABLEB4
from paperlib.runs import finished_dir
from tests.conftest import requires_fmnist


def test_grid_is_the_papers_grid():
    g = grid("fmnist")
    cifar_rows = {k for k in ROW_KEYS if not k.startswith("imagenet")}
    h_rows = {k for k in TABLEB4 if k.startswith("h=")} - {"h=0.1"}
    assert set(g) == cifar_rows | h_rows  # 13 rows of Tables 1/2 + 4 extra models of the h study
    assert len(g) == 17
    assert (g["fd-l1-lam1-h0.1"].norm, g["fd-l1-lam1-h0.1"].lam, g["fd-l1-lam1-h0.1"].h) == ("l1", 1.0, 0.1)
    assert g["fd-l2-lam1"].h == 0.01 and g["dbp-l2-lam0.1"].penalty == "dbp"
    assert g["pgd-at-2"].eps == pytest.approx(2 / 255) and g["pgd-at-2"].steps == 7
    assert g["free-at-8"].m == 8 and g["h=1e-4"].h == 1e-4
    assert len({paperlib.training.run_name(c) for c in g.values()}) == 17  # every model its own run


def test_evaluation_configs_follow_the_profile():
    ev = evaluation_configs("fmnist")
    assert ev["attack"].n_images == ev["bound-l2"].n_images == ev["certify"].n_images == 60
    assert evaluation_configs("cifar10")["attack"].n_images == 1000  # the paper's count at paper scale
    assert ev["bound-linf"].norm == "linf"


@requires_fmnist
def test_reproduce_smoke_is_resumable(tmp_path):
    lines = []
    stages = ("train", "bound", "certify")
    report = reproduce("smoke", tmp_path, stages=stages, only=["undefended"], progress=False, log=lines.append)
    assert report["models"] == ["undefended"]
    run = tmp_path / "smoke" / "undefended"
    assert finished_dir(run) and finished_dir(run / "bounds-l2") and finished_dir(run / "certify-sigma0.25")
    assert json.loads((tmp_path / "smoke" / "reproduce.json").read_text())["seconds"]["total"] > 0
    first = stage_seconds(tmp_path / "smoke")["undefended"]
    assert set(first) == {"train", "bound", "certify", "train_cpu", "bound_cpu", "certify_cpu"}
    assert min(first.values()) > 0
    from paperlib.report.results import ModelResults, stage_cpu_hours

    m = ModelResults(key="undefended", path=run, run_id="smoke/undefended", config=None, metrics={},
                     log=None, seconds=first)
    cpu = stage_cpu_hours({"undefended": m})
    assert list(cpu.index) == ["train", "bound", "certify"] and bool((cpu["models"] == 1).all())
    assert cpu.loc["train", "CPU hours"] == pytest.approx(first["train_cpu"] / 3600)
    again = reproduce("smoke", tmp_path, stages=stages, only=["undefended"], progress=False, log=lines.append)
    assert again["seconds"]["total"] < report["seconds"]["total"]  # everything loads
    assert stage_seconds(tmp_path / "smoke")["undefended"] == first  # loading keeps the computed seconds


def test_reproduce_rejects_unknown_stage_and_model(tmp_path):
    with pytest.raises(ConfigError, match="stage='plot'"):
        reproduce("smoke", tmp_path, stages=("plot",))
    with pytest.raises(ConfigError, match="model='fd-l3'"):
        reproduce("smoke", tmp_path, only=["fd-l3"])


@requires_fmnist
def test_a_diverging_model_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    import paperlib.training as training
    from paperlib.reproduce import DIVERGED
    from paperlib.report.results import diverged_models

    real_train = training.train

    def train(cfg, store, **kw):
        if cfg.h == 1e-4:
            store.run(cfg.profile, paperlib.training.run_name(cfg), cfg).start()
            raise training.TrainingDivergedError("training loss is inf at epoch 1 step 3")
        return real_train(cfg, store, **kw)

    monkeypatch.setattr(training, "train", train)
    lines = []
    report = reproduce("smoke", tmp_path, stages=("train",), only=["h=1e-4", "undefended"], progress=False,
                       log=lines.append)
    assert report["diverged"] == {"h=1e-4": "training loss is inf at epoch 1 step 3"}
    assert finished_dir(tmp_path / "smoke" / "undefended")  # the grid went on
    assert (tmp_path / "smoke" / "fd-l1-lam1-h0.0001" / DIVERGED).exists()
    assert diverged_models("smoke", tmp_path) == {"h=1e-4": "training loss is inf at epoch 1 step 3"}
    lines.clear()
    again = reproduce("smoke", tmp_path, stages=("train",), only=["h=1e-4"], progress=False, log=lines.append)
    assert again["diverged"] and "skipped" in lines[0]  # not retrained


def test_paper_scale_evaluation_is_the_recommended_configs_beside_the_profiles_own():
    from paperlib.attacks.suite import AttackConfig, attack_run_name
    from paperlib.bounds.smoothing import certify_grid_configs
    from paperlib.evaluation import BOUND_ESTIMATORS
    from paperlib.reproduce import evaluation_configs

    own, paper = evaluation_configs("fmnist"), evaluation_configs("fmnist", "paper")
    assert attack_run_name(own["attack"]) == "attack-84037464"  # the committed evaluation keeps its sub-runs
    assert paper["attack"] == AttackConfig.cheap(n_images=1000)
    assert paper["attack"].cw_patience > 0 and paper["attack"].boundary_every > 1  # early stopping, subsample
    for norm in ("l2", "linf"):
        b = paper[f"bound-{norm}"]
        assert b.norm == norm and b.n_images == 1000
        assert all(getattr(b, k) == v for k, v in BOUND_ESTIMATORS.items())
    assert paper["certify"] == certify_grid_configs("fmnist")[0.25] and paper["certify"].n == 10_000
    assert {k: config_hash(v) for k, v in own.items()}.keys() == {k: config_hash(v) for k, v in paper.items()}.keys()
    assert all(config_hash(own[k]) != config_hash(paper[k]) for k in own)  # side by side, never the same sub-run


@pytest.mark.parametrize("profile, scale, match", [("smoke", "paper", "not defined for profile 'smoke'"),
                                                   ("fmnist", "huge", "scale")])
def test_a_scale_that_does_not_exist_is_a_one_line_error(profile, scale, match):
    from paperlib.reproduce import evaluation_configs

    with pytest.raises(ConfigError, match=match) as info:
        evaluation_configs(profile, scale)
    assert "\n" not in str(info.value)


def test_extra_training_seeds_train_beside_the_grid_and_reload(tmp_path):
    lines = []
    report = reproduce("smoke", tmp_path, stages=("train",), only=["undefended"], seeds=(0, 1), progress=False,
                       log=lines.append)
    assert report["models"] == ["undefended", "undefended@seed1"]
    plain, seeded = tmp_path / "smoke" / "undefended", tmp_path / "smoke" / "undefended-seed1"
    assert finished_dir(plain) and finished_dir(seeded)
    cfg = json.loads((seeded / "config.json").read_text())["config"]
    assert cfg["seed"] == 1 and json.loads((plain / "config.json").read_text())["config"]["seed"] == 0
    assert (seeded / "weights.pt").read_bytes() != (plain / "weights.pt").read_bytes()  # another training
    again = reproduce("smoke", tmp_path, stages=("train",), only=["undefended"], seeds=(1,), progress=False,
                      log=lines.append)
    assert again["models"] == ["undefended@seed1"] and again["seconds"]["total"] < report["seconds"]["total"]
    for bad in ((), (-1,), (1.5,)):
        with pytest.raises(ConfigError):
            reproduce("smoke", tmp_path, stages=("train",), only=["undefended"], seeds=bad, progress=False)


@requires_fmnist
def test_a_stage_keeps_its_seconds_when_the_process_stops_in_a_later_one(tmp_path, monkeypatch):
    import paperlib.reproduce as rep

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rep, "run_certify", stopped)
    with pytest.raises(KeyboardInterrupt):
        reproduce("smoke", tmp_path, stages=("train", "bound", "certify"), only=["undefended"], progress=False,
                  log=lambda _: None)
    seconds = stage_seconds(tmp_path / "smoke")["undefended"]
    assert set(seconds) == {"train", "bound", "train_cpu", "bound_cpu"} and min(seconds.values()) > 0


@pytest.mark.parametrize("argv, recipe, free", [
    # --scale paper alone: the paper-scale grid's own training (its runs carry -rc1ca23)
    (["--scale", "paper"], None, None),
    # any recipe option: the profile's recipe with that change, evaluated at paper scale
    (["--scale", "paper", "--epochs", "3"], {"epochs": 3}, None),
    (["--scale", "paper", "--free-schedule", "steps"], {}, "steps"),
    ([], None, None),
])
def test_the_command_line_leaves_the_scales_training_to_reproduce(monkeypatch, tmp_path, argv, recipe, free):
    import paperlib.cli
    import paperlib.reproduce as rep

    seen = {}
    monkeypatch.setattr(rep, "reproduce", lambda *a, **kw: seen.update(kw))
    assert paperlib.cli.main(["reproduce", "--runs-dir", str(tmp_path), "--stages", "train", *argv]) == 0
    assert seen["recipe"] == recipe and seen["free_schedule"] == free


def test_reproduce_at_paper_scale_trains_the_paper_scale_grid(monkeypatch, tmp_path):
    seen = []

    def train(cfg, store, **kw):
        seen.append(paperlib.training.run_name(cfg))
        raise paperlib.training.TrainingDivergedError("stop here")

    monkeypatch.setattr(paperlib.training, "train", train)
    reproduce("fmnist", tmp_path, stages=("train",), only=("undefended",), scale="paper", log=lambda *a: None)
    reproduce("fmnist", tmp_path, stages=("train",), only=("undefended",), scale="paper", recipe={},
              log=lambda *a: None)
    assert seen == ["undefended-rc1ca23", "undefended"]


@requires_fmnist
def test_an_attack_stage_that_reused_its_first_phase_keeps_that_phases_seconds(tmp_path, monkeypatch):
    import json
    import time
    import types

    import paperlib.reproduce as rep

    reproduce("smoke", tmp_path, stages=("train",), only=["undefended"], progress=False, log=lambda _: None)
    timings = tmp_path / "smoke" / "timings" / "undefended.json"
    recorded = json.loads(timings.read_text())
    timings.write_text(json.dumps({**recorded, "attack": 100.0}))  # the first phase, computed earlier

    def reused(model, x, y, idx, cfg, run, **kw):  # an escalating suite that reused the finished first phase
        run.path.mkdir(parents=True, exist_ok=True)
        time.sleep(0.5)  # this invocation's part
        return types.SimpleNamespace(summary={"reused_first_phase": True}, checks=[])

    monkeypatch.setattr(rep, "attack_model", reused)
    reproduce("smoke", tmp_path, stages=("attack",), only=["undefended"], progress=False, log=lambda _: None)
    seconds = json.loads(timings.read_text())
    assert 100.5 <= seconds["attack"] < 160.0 and seconds["train"] == recorded["train"]  # 100 + this part


@requires_fmnist
def test_a_stage_finished_over_two_invocations_records_the_seconds_of_both(tmp_path, monkeypatch):
    """The bounds' l2 sub-run finished in an earlier invocation (recorded 1000 s, say); the linf one now: the
    record is their sum, not the linf sub-run's seconds alone."""
    import json
    import shutil
    import time

    import paperlib.reproduce as rep

    reproduce("smoke", tmp_path, stages=("train",), only=["undefended"], progress=False, log=lambda _: None)

    def bounds(model, x, y, idx, cfg, run, **kw):  # a bound stage that takes half a second per norm
        if not run.is_finished():
            time.sleep(0.5)
            run.start()
            run.finish({"norm": cfg.norm})

    monkeypatch.setattr(rep, "run_bounds", bounds)
    timings = tmp_path / "smoke" / "timings" / "undefended.json"
    reproduce("smoke", tmp_path, stages=("bound",), only=["undefended"], progress=False, log=lambda _: None)
    both_now = json.loads(timings.read_text())["bound"]
    assert 1.0 <= both_now < 30.0  # both norms computed in one invocation
    timings.write_text(json.dumps({**json.loads(timings.read_text()), "bound": 1000.0}))
    shutil.rmtree(next((tmp_path / "smoke").glob("undefended*/bounds-linf")))
    reproduce("smoke", tmp_path, stages=("bound",), only=["undefended"], progress=False, log=lambda _: None)
    assert 1000.5 <= json.loads(timings.read_text())["bound"] < 1030.0  # 1000 (l2, before) + linf now

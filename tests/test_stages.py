"""paperlib.stages: one run-or-load and one sub-run naming for every stage; paperlib.options: one set of execution
options for every computing command (issue 16)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields

import pytest
import torch

from paperlib.attacks.suite import AttackConfig, attack_model
from paperlib.bounds import BoundConfig, CertifyConfig
from paperlib.cli import build_parser, main
from paperlib.config import ConfigError, config_from_dict, config_hash
from paperlib.options import field_default, field_docs
from paperlib.runs import RunStore, StaleRunError
from paperlib.stages import Stage, check_run_config, register_stage, run_or_load, stage_of, stage_run, stage_subrun
from paperlib.training import TrainConfig, run_name
from tests.conftest import REPO

CONFIGS = {"AttackConfig": AttackConfig, "BoundConfig": BoundConfig, "CertifyConfig": CertifyConfig}


def _committed_subruns():
    for cfg_file in sorted((REPO / "runs" / "fmnist").glob("*/*/config.json")):
        record = json.loads(cfg_file.read_text())
        if record.get("type") in CONFIGS:
            yield cfg_file.parent, record


def test_stage_subrun_names_every_committed_sub_run_as_it_is_stored_with_its_stored_hash():
    seen = 0
    for path, record in _committed_subruns():
        cfg = config_from_dict(CONFIGS[record["type"]], record["config"])
        sub = stage_subrun(path.parent, cfg)
        if path.name.startswith("certify-sigma") and cfg.n >= 10_000:
            assert sub.name.endswith(f"-n{cfg.n}")
        if sub.name != path.name:  # a sub-run written under an older naming rule would show here
            assert not path.name.startswith(("attack-", "bounds-", "certify-sigma")), (path, sub.name)
            continue
        assert sub.hash == record["hash"] == config_hash(cfg)
        seen += 1
    assert seen >= 40  # 15 grid models with an attack suite and two bounds each, plus certificates


def test_stage_run_of_a_training_config_is_its_run_in_the_store(tmp_path):
    cfg = TrainConfig.from_profile("smoke", dataset="synthetic-fashion-mnist", train_subset=64, epochs=1,
                                   batch_size=32)
    run = stage_run(str(tmp_path), cfg)
    assert run.path == tmp_path / "smoke" / run_name(cfg) and run.hash == config_hash(cfg)
    assert stage_run(run, cfg) is run
    with pytest.raises(ConfigError, match="lives inside a model's run"):
        stage_run(str(tmp_path), BoundConfig())
    with pytest.raises(ConfigError, match="not a sub-run of a model's run"):
        stage_subrun(run, cfg)


def test_an_object_of_no_stage_is_one_clear_error():
    with pytest.raises(ConfigError, match="no stage has a config of type dict; expected one of ") as info:
        stage_of({"norm": "l2"})
    assert {"TrainConfig", "AttackConfig", "BoundConfig", "CertifyConfig"} <= set(
        str(info.value).split("expected one of ")[1].split(", "))


@dataclass(frozen=True)
class ToyConfig:
    value: int = 1


TOY = register_stage(Stage("toy", ToyConfig, lambda c: f"toy-{c.value}", lambda r: r.read_json("result.json")))


def test_run_or_load_computes_once_then_loads_and_checks_the_config(tmp_path):
    model_run = RunStore(tmp_path).run("smoke", "model", {"m": 1})
    cfg = ToyConfig(3)
    sub = stage_subrun(model_run, cfg)
    assert sub.name == "toy-3"
    calls = []

    def compute(r):
        calls.append(r.path)
        r.write_json("result.json", {"v": 3.000000001})
        return {"v": 3.000000001, "in_memory": True}

    out = run_or_load(sub, cfg, compute, metrics=lambda res: {"v": res["v"]}, load=TOY.load)
    assert out == {"v": 3.000000001, "in_memory": True} and sub.is_finished()
    assert sub.read_json("metrics.json") == {"v": 3.000000001}
    again = run_or_load(sub, cfg, compute, metrics=lambda res: None, load=TOY.load)
    assert again == {"v": 3.000000001} and len(calls) == 1  # loaded, not recomputed
    forced = run_or_load(sub, cfg, compute, metrics=lambda res: None, load=TOY.load, force=True, reload=True)
    assert forced == {"v": 3.000000001} and len(calls) == 2  # recomputed, and returned as read back

    with pytest.raises(ConfigError, match=rf"made for another config \(hash {sub.hash}, this one "
                                          rf"{config_hash(ToyConfig(4))}\)"):
        run_or_load(sub, ToyConfig(4), compute, metrics=lambda res: None, load=TOY.load)
    stale = model_run.subrun("toy-3", ToyConfig(4))  # another config where ToyConfig(3) finished
    with pytest.raises(StaleRunError, match="value: 3 -> 4"):
        run_or_load(stale, ToyConfig(4), compute, metrics=lambda res: None, load=TOY.load)
    assert len(calls) == 2


def test_attack_model_refuses_a_run_of_another_config_before_attacking(tmp_path):
    cfg = AttackConfig(attacks=("pgd",), norms=("linf",), n_images=2, batch_size=2, convergence_n=0)
    other = RunStore(tmp_path).run("smoke", "m", {"m": 1}).subrun("attack-x", AttackConfig(n_images=3))
    with pytest.raises(ConfigError, match="made for another config"):
        attack_model(None, torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.arange(2), cfg, other)
    assert not other.path.exists()


def _subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_computing_command_has_the_same_execution_options():
    sub = _subparsers()
    shared = {}
    for name in ("train", "attack", "bound", "certify"):
        opts = {s: a for a in sub[name]._actions for s in a.option_strings}
        for flag in ("--device", "--n-images", "--no-progress", "--force"):
            assert flag in opts, (name, flag)
        shared[name] = {f: (opts[f].dest, opts[f].default) for f in ("--device", "--n-images", "--no-progress")}
        assert opts["--device"].help == shared.setdefault("device help", opts["--device"].help)
    assert len({tuple(sorted(v.items())) for k, v in shared.items() if k != "device help"}) == 1
    assert shared["bound"]["--no-progress"] == ("progress", True) and shared["bound"]["--device"] == ("device", None)


@pytest.mark.parametrize("command, cls", [("bound", BoundConfig), ("certify", CertifyConfig), ("attack", AttackConfig)])
def test_config_options_take_their_defaults_and_help_from_the_config_dataclass(command, cls):
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in fields(cls)}  # every field documented, so every option has help
    opts = [a for a in _subparsers()[command]._actions if a.dest in docs and a.option_strings]
    generated = 0
    for a in opts:
        assert a.default is None  # left out: the dataclass's default, not one restated here
        shown = field_default(cls, a.dest)
        text = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in shown) if isinstance(shown, tuple) \
            else f"{shown:g}" if isinstance(shown, float) else str(shown)
        if a.help.endswith(f"(default: {text})"):
            generated += 1
    assert generated >= {"bound": 12, "certify": 6, "attack": 4}[command]
    grid = next(a for a in opts if a.dest == ("grid_size" if command == "bound" else "seed"))
    assert f"(default: {field_default(cls, grid.dest)})" in grid.help


def test_a_renamed_option_is_one_line_naming_the_new_one(tmp_path, capsys):
    assert main(["certify", str(tmp_path), "--n", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paperlib: error: --n 100 is not an option of certify: write --n-samples 100")
    assert len(err.splitlines()) == 1


def test_attack_takes_n_images_and_its_earlier_name_n_but_not_two_different_counts(tmp_path, capsys):
    from paperlib.attacks.cli import config_from_args

    parser = build_parser()
    new = parser.parse_args(["attack", str(tmp_path), "--n-images", "7"])
    old = parser.parse_args(["attack", str(tmp_path), "--n", "7"])
    assert config_from_args(new, "smoke") == config_from_args(old, "smoke")
    assert config_from_args(new, "smoke").n_images == 7
    both = parser.parse_args(["attack", str(tmp_path), "--n", "7", "--n-images", "8"])
    with pytest.raises(ConfigError, match="--n 7 and --n-images 8 disagree"):
        config_from_args(both, "smoke")


def test_train_n_images_is_the_test_subset():
    from paperlib.training.cli import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--profile", "smoke", "--dataset", "synthetic-fashion-mnist", "--n-images", "40"])
    assert config_from_args(args).test_subset == 40
    args = parser.parse_args(["train", "--profile", "smoke", "--dataset", "synthetic-fashion-mnist", "--n-images", "40",
                              "--test-subset", "50"])
    with pytest.raises(ConfigError, match="--n-images 40 and --test-subset 50 disagree"):
        config_from_args(args)


def test_check_run_config_rejects_what_is_not_a_run():
    with pytest.raises(ConfigError, match="expected a run of the run store"):
        check_run_config("runs/fmnist/undefended", BoundConfig())

"""Nothing wrong is ever marked finished; one writer per run (issue 11, items 2, 3 and 5).

Each test here reproduces a case of the reliability probe that today's code got wrong before this change: a
blown-up or step-less model marked finished, another config's checkpoint resumed, two processes writing one run,
a damaged or swapped result file loaded, ``reproduce`` ignoring ``$PAPERLIB_RUNS``, a malformed run breaking
``paperlib runs``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from paperlib.config import ConfigError
from paperlib.runs import (FINISHED, Run, RunCorruptError, RunLockedError, RunStore, StaleRunError,
                           load_or_run)
from paperlib.training import TrainConfig, TrainingDivergedError, load_trained, run_name, train
from tests.conftest import REPO

SYN = dict(dataset="synthetic-fashion-mnist", train_subset=128, test_subset=64, epochs=1, batch_size=64)


@dataclasses.dataclass(frozen=True)
class Cfg:
    lam: float = 1.0


def small(**kw) -> TrainConfig:
    return TrainConfig.from_profile("smoke", **{**SYN, **kw})


# -- a wrong model is never marked finished -------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(lr=1e20), dict(method="penalty", penalty="dbp", norm="l2", lam=1e10)])
def test_a_model_that_blew_up_is_diverged_not_finished(tmp_path, kw):
    # One optimizer step: its loss is finite (the per-step check passes), the step itself wrecks the model.
    cfg = small(train_subset=64, **kw)
    words = r"run .*: (test loss \S+ after epoch 1 is not finite or above 23|the weights are not finite)"
    with pytest.raises(TrainingDivergedError, match=words):
        train(cfg, RunStore(tmp_path), progress=False)
    run = RunStore(tmp_path).run(cfg.profile, run_name(cfg), cfg)
    assert run.status == "partial" and not (run.path / "weights.pt").exists()


def test_a_batch_larger_than_the_subset_is_refused_before_training(tmp_path):
    # 128 training images, drop_last: no optimizer step at all. Refused by the config, before any run exists.
    with pytest.raises(ConfigError, match=r"batch_size=256 is larger than the 128 training images"):
        small(batch_size=256)
    with pytest.raises(ConfigError, match=r"batch_size=70000 is larger than the 60000 training images"):
        TrainConfig.from_profile("fmnist", batch_size=70000)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    a, b = small(seed=1), small(seed=2)
    other = train(b, RunStore(tmp_path / "b"), progress=False)
    run = RunStore(tmp_path).run(a.profile, run_name(a), a).start()
    # A checkpoint as another configuration's training left it (its own config hash inside).
    run.save_checkpoint({"config_hash": other.hash, "epoch": 1, "model": {}, "optimizer": {}, "log": [],
                         "train_seconds": 0.0})
    with pytest.raises(StaleRunError, match=rf"checkpoint of another configuration \(hash {other.hash}"):
        train(a, RunStore(tmp_path), progress=False)


def test_run_names_never_round_two_configs_together():
    assert run_name(small(method="penalty", lam=0.1)) != run_name(small(method="penalty", lam=0.1000001))
    assert run_name(small(method="pgd-at", eps=8 / 255)) == "pgd7-linf-eps8_255-r" + run_name(small()).split("-r")[1]
    assert run_name(small(method="pgd-at", eps=8 / 255 + 1e-9)) != run_name(small(method="pgd-at", eps=8 / 255))
    assert run_name(small(method="penalty", lam=1.0, h=0.0001)).startswith("fd-l2-lam1-h0.0001")


# -- sealed results ------------------------------------------------------------------------------------------


def _finished_run(tmp_path, name="a", **extra) -> Run:
    run = RunStore(tmp_path).run("smoke", name, Cfg(**extra))

    def work(r):
        r.write_table("attacks.csv", pd.DataFrame({"i": range(16), "d": [0.5] * 16}))
        r.save_weights({"w": torch.arange(4.0)})
        return {"ok": 1}

    return load_or_run(run, work)


def test_a_truncated_table_is_an_error_not_fewer_rows(tmp_path):
    run = _finished_run(tmp_path)
    lines = (run.path / "attacks.csv").read_text().splitlines(keepends=True)
    (run.path / "attacks.csv").write_text("".join(lines[:11]))  # 10 of 16 rows, as the probe left it
    assert run.status == "corrupt" and "attacks.csv" in run.problem()
    with pytest.raises(RunCorruptError, match=r"attacks.csv has \d+ bytes where the finished run recorded .*--force"):
        run.read_table("attacks.csv")
    with pytest.raises(RunCorruptError, match="--force"):
        load_or_run(run, lambda r: None)
    load_or_run(run, lambda r: r.write_table("attacks.csv", pd.DataFrame({"i": range(16)})) and None, force=True)
    assert run.status == "finished" and len(run.read_table("attacks.csv")) == 16
    assert any(p.name.startswith("a.corrupt") for p in run.path.parent.iterdir())  # moved aside, not deleted


def test_swapped_in_weights_of_another_run_are_refused(tmp_path):
    a, b = _finished_run(tmp_path, "a"), _finished_run(tmp_path, "b", lam=2.0)
    b.save_weights({"w": torch.ones(4)})  # b's file changes after b finished ...
    (a.path / "weights.pt").write_bytes((b.path / "weights.pt").read_bytes())  # ... and a gets it
    with pytest.raises(RunCorruptError, match="weights.pt"):
        a.load_weights()
    assert a.status == "corrupt"


def test_a_truncated_weights_file_is_not_a_finished_training_run(tmp_path):
    cfg = small()
    run = train(cfg, RunStore(tmp_path), progress=False)
    data = (run.path / "weights.pt").read_bytes()
    (run.path / "weights.pt").write_bytes(data[: len(data) // 2])
    assert run.status == "corrupt"
    with pytest.raises(RunCorruptError, match=r"weights.pt has .* bytes .*--force"):
        load_trained(run)
    with pytest.raises(RunCorruptError, match="--force"):
        train(cfg, RunStore(tmp_path), progress=False)
    assert train(cfg, RunStore(tmp_path), progress=False, force=True).status == "finished"
    load_trained(run)


def test_a_marker_without_checksums_is_not_finished(tmp_path):
    run = _finished_run(tmp_path)
    marker = json.loads((run.path / FINISHED).read_text())
    del marker["files"]
    (run.path / FINISHED).write_text(json.dumps(marker))
    assert run.status == "corrupt" and "seals no result files" in run.problem()


def test_the_marker_is_written_before_the_checkpoint_is_removed(tmp_path, monkeypatch):
    run = RunStore(tmp_path).run("smoke", "a", Cfg()).start()
    run.save_checkpoint({"step": 3})
    import paperlib.runs as runs

    real = runs.atomic_write_text

    def die_on_marker(path, text):
        if str(path).endswith(FINISHED):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", die_on_marker)
    with pytest.raises(KeyboardInterrupt):
        run.finish({"ok": 1})
    assert run.status == "partial" and run.load_checkpoint() == {"step": 3}  # resumable, nothing lost


def test_paperlib_runs_lists_a_malformed_run_and_the_rest(tmp_path, capsys):
    from paperlib.cli import main

    _finished_run(tmp_path, "good")
    bad = tmp_path / "smoke" / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2, 3]")
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smoke/good" in out and "finished" in out
    assert "smoke/bad" in out and "corrupt" in out and "not a run record" in out


# -- one writer per run ---------------------------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import dataclasses, sys, time
    from paperlib.runs import RunStore

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        lam: float = 1.0

    run = RunStore(sys.argv[1]).run("smoke", "a", Cfg())
    with run.lock():
        print("locked", flush=True)
        time.sleep(120)
""")


def _holder(tmp_path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_stops_naming_the_holder_and_force_is_refused(tmp_path):
    proc = _holder(tmp_path)
    try:
        run = RunStore(tmp_path).run("smoke", "a", Cfg())
        for force in (False, True):
            with pytest.raises(RunLockedError, match=rf"being written by pid {proc.pid} on .* \(since "):
                load_or_run(run, lambda r: {"x": 1}, force=force)
        assert run.status == "missing"
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_of_a_killed_process_is_taken_over_and_a_waiter_gets_the_result(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9: no cleanup ran, the lock file is still there
    proc.wait()
    assert (tmp_path / "smoke" / ".a.lock").exists()
    run = load_or_run(RunStore(tmp_path).run("smoke", "a", Cfg()), lambda r: {"x": 1})
    assert run.status == "finished" and not (tmp_path / "smoke" / ".a.lock").exists()

    proc = _holder(tmp_path / "other")
    t0 = time.monotonic()
    with pytest.raises(RunLockedError):
        load_or_run(RunStore(tmp_path / "other").run("smoke", "a", Cfg()), lambda r: {"x": 1}, wait=1.0)
    assert time.monotonic() - t0 >= 1.0
    proc.kill()
    proc.wait()


def test_two_real_processes_training_one_run_leave_one_finished_model(tmp_path):
    """Two `paperlib train` processes on the same run: one trains, the other stops with a one-line message
    naming it; the finished model is the trainer's and survives."""
    args = [sys.executable, "-m", "paperlib", "train", "--profile", "smoke", "--dataset", "synthetic-fashion-mnist",
            "--train-subset", "2048", "--test-subset", "64", "--epochs", "8", "--runs-dir", str(tmp_path),
            "--no-progress"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    # ~20 s of training at one thread: the second process starts (a few seconds) while the first still trains.
    lock = tmp_path / "smoke" / f".{run_name(small(train_subset=2048, epochs=8))}.lock"
    for _ in range(600):
        if lock.exists():
            break
        time.sleep(0.1)
    second = subprocess.run(args + ["--force"], capture_output=True, text=True, cwd=REPO, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"being written by pid {first.pid}" in lines[0]
    cfg = small(train_subset=2048, epochs=8)
    assert RunStore(tmp_path).run(cfg.profile, run_name(cfg), cfg).status == "finished"
    assert not any(".stale-" in p.name or ".old-" in p.name for p in (tmp_path / "smoke").iterdir())


# -- where results go -----------------------------------------------------------------------------------------


def test_reproduce_honours_paperlib_runs(tmp_path, monkeypatch):
    from paperlib.cli import main

    monkeypatch.setenv("PAPERLIB_RUNS", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--profile", "smoke", "--stages", "train", "--only", "undefended",
                 "--no-progress"]) == 0
    assert (tmp_path / "store" / "smoke" / "undefended" / FINISHED).exists()
    assert not (tmp_path / "runs").exists()

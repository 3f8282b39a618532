import dataclasses
import json
import os
import pickle

import pandas as pd
import pytest
import torch

from paperlib.runs import (Run, RunCorruptError, RunStore, StaleRunError, atomic_write_text, load_or_run)


class Foreign:
    """An arbitrary pickled object: weights_only loading must refuse it."""


@dataclasses.dataclass(frozen=True)
class Cfg:
    lam: float = 1.0
    seed: int = 0


def test_atomic_write_killed_before_rename_leaves_old_content(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_run_lifecycle_missing_partial_finished(tmp_path):
    run = RunStore(tmp_path).run("smoke", "a", Cfg())
    assert run.status == "missing"
    run.start()
    assert run.status == "partial" and not run.is_finished()
    run.finish({"err": 0.1})
    assert run.status == "finished" and run.read_json("metrics.json") == {"err": 0.1}
    record = json.loads((run.path / "config.json").read_text())
    assert record["seed"] == 0 and record["hash"] == run.hash and record["config"] == {"lam": 1.0, "seed": 0}
    assert {"torch", "paperlib", "numpy", "python", "git_commit"} <= set(record["env"])


def test_interrupted_run_never_looks_finished_and_resumes(tmp_path):
    run = RunStore(tmp_path).run("smoke", "a", Cfg())
    calls = []

    def work(r):
        ck = r.load_checkpoint() or {"step": 0}
        calls.append(ck["step"])
        r.save_checkpoint({"step": ck["step"] + 1})
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {"steps": ck["step"] + 1}

    with pytest.raises(KeyboardInterrupt):
        load_or_run(run, work)
    assert run.status == "partial"
    load_or_run(run, work)
    assert calls == [0, 1] and run.read_json("metrics.json") == {"steps": 2}
    assert not (run.path / "checkpoint.pt").exists()
    load_or_run(run, work)  # finished: loaded, not recomputed
    assert calls == [0, 1]


def test_changed_config_never_loads_a_stale_result(tmp_path):
    store = RunStore(tmp_path)
    load_or_run(store.run("smoke", "a", Cfg(lam=1.0)), lambda r: {"v": 1})
    changed = store.run("smoke", "a", Cfg(lam=0.1))
    assert changed.status == "stale"
    with pytest.raises(StaleRunError, match=r"lam: 1.0 -> 0.1"):
        load_or_run(changed, lambda r: {"v": 2})
    load_or_run(changed, lambda r: {"v": 2}, force=True)
    assert changed.read_json("metrics.json") == {"v": 2}
    aside = [p.name for p in (tmp_path / "smoke").iterdir() if p.name.startswith("a.stale-")]
    assert len(aside) == 1  # the old run is kept, not deleted


def test_tables_and_json_roundtrip_with_inf(tmp_path):
    run = RunStore(tmp_path).run("smoke", "t", Cfg()).start()
    df = pd.DataFrame({"image": [3, 1], "best": [0.125, float("inf")], "attack": ["pgd", "cw"]})
    run.write_table("best.csv", df)
    pd.testing.assert_frame_equal(run.read_table("best.csv"), df)
    run.write_json("x.json", {"a": float("inf"), "b": [1.5, float("nan")]})
    back = run.read_json("x.json")
    assert back["a"] == float("inf") and back["b"][0] == 1.5 and back["b"][1] != back["b"][1]


def test_weights_roundtrip_and_clear_errors_on_bad_files(tmp_path):
    run = RunStore(tmp_path).run("smoke", "w", Cfg()).start()
    model = torch.nn.Linear(3, 2)
    run.save_weights(model.state_dict())
    loaded = run.load_weights()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    data = (run.path / "weights.pt").read_bytes()
    (run.path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunCorruptError, match="trunc.pt is not a loadable PyTorch weights file"):
        run.load_weights("trunc.pt")
    (run.path / "text.pt").write_text("hello")
    with pytest.raises(RunCorruptError, match="text.pt"):
        run.load_weights("text.pt")

    (run.path / "pickle.pt").write_bytes(pickle.dumps(Foreign()))
    with pytest.raises(RunCorruptError):  # weights_only refuses arbitrary objects
        run.load_weights("pickle.pt")
    torch.save([1, 2], run.path / "list.pt")
    with pytest.raises(RunCorruptError, match="does not hold a state_dict"):
        run.load_weights("list.pt")
    with pytest.raises(RunCorruptError, match="does not exist"):
        run.load_weights("absent.pt")


def test_corrupt_config_json_is_reported(tmp_path):
    store = RunStore(tmp_path)
    run = store.run("smoke", "c", Cfg()).start()
    (run.path / "config.json").write_text("{not json")
    with pytest.raises(RunCorruptError, match="config.json is not valid JSON"):
        run.status
    assert store.list_runs()[0]["status"] == "corrupt"


def test_subruns_and_listing(tmp_path):
    store = RunStore(tmp_path)
    parent = load_or_run(store.run("fmnist", "m", Cfg()), lambda r: None)
    child = parent.subrun("attack", {"n": 10, "seed": 0}).start()
    rows = {r["path"]: r["status"] for r in store.list_runs()}
    assert rows == {"fmnist/m": "finished", "fmnist/m/attack": "partial"}
    assert [p.name for p in parent.subruns()] == ["attack"]
    assert isinstance(child, Run)
    with pytest.raises(Exception, match="plain directory name"):
        store.run("fmnist", "../x", Cfg())


def test_weights_of_another_architecture_are_refused(tmp_path):
    from paperlib.models import architecture_fingerprint

    run = RunStore(tmp_path).run("smoke", "arch", Cfg()).start()
    maxpool = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2))
    avgpool = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AvgPool2d(2))
    run.save_weights(maxpool.state_dict(), architecture=architecture_fingerprint(maxpool))
    assert set(run.load_weights(architecture=architecture_fingerprint(maxpool))) == {"0.weight", "0.bias"}
    # same state_dict keys and shapes, different (parameter-free) layer: must not load silently
    with pytest.raises(StaleRunError, match="another architecture"):
        run.load_weights(architecture=architecture_fingerprint(avgpool))

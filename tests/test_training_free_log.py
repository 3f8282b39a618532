"""Free AT with the ``'steps'`` schedule is evaluated once per replay-epoch, like the other methods per epoch.

The plateau rule of the grid (the last three epochs' test errors within 0.5 points) then reads the same scale
for every row; before, free AT m = 8 over 16 replay-epochs logged two rows (one per pass).
"""

from __future__ import annotations

import pytest
import torch

from paperlib.runs import RunStore
from paperlib.training import TrainConfig, train
from paperlib.training.engine import run_name


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> TrainConfig:
    base = dict(dataset="synthetic-fashion-mnist", train_subset=256, test_subset=64, batch_size=32,
                eval_batch_size=64, epochs=6, lr=0.05, milestones=(4,))
    base.update(kw)
    return TrainConfig.from_profile("smoke", **base)


def test_free_at_in_replay_epochs_logs_one_row_per_replay_epoch(tmp_path):
    # 256 images / batch 32 = 8 minibatches per pass; m = 4 replays -> a replay-epoch every 2 minibatches,
    # 6 replay-epochs = 12 minibatches = one full pass and half a pass.
    cfg = tiny(method="free-at", m=4, free_schedule="steps")
    store = RunStore(tmp_path)
    run = train(cfg, store, progress=False)
    out = run.read_json("metrics.json")
    log = run.read_table("train_log.csv")
    assert list(log["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert list(log["pass"]) == [1, 1, 1, 1, 2, 2]
    assert list(log["steps"]) == [8] * 6  # 2 minibatches x 4 replays since the previous row
    assert log["test_error_pct"].notna().all()
    # The schedule in replay-epochs: milestone 4 -> the learning rate drops after the 4th replay-epoch.
    assert log["lr"].iloc[3] == pytest.approx(cfg.lr) and log["lr"].iloc[4] == pytest.approx(cfg.lr * cfg.lr_gamma)
    assert out["clean_error_pct"] == pytest.approx(log["test_error_pct"].iloc[-1])
    assert out["epochs"] == 2  # passes over the data
    assert out["train_seconds"] == pytest.approx(log["train_seconds"].sum(), rel=1e-9)


def test_the_other_methods_still_log_one_row_per_epoch(tmp_path):
    for kw in (dict(method="undefended"), dict(method="free-at", m=2)):
        cfg = tiny(epochs=4, **kw)
        store = RunStore(tmp_path / kw["method"])
        train(cfg, store, progress=False)
        log = store.run(cfg.profile, run_name(cfg), cfg).read_table("train_log.csv")
        passes = 4 if kw["method"] == "undefended" else 2
        assert list(log["epoch"]) == list(range(1, passes + 1)) and "pass" not in log.columns

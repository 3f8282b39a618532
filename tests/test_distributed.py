"""DDP with 2 gloo processes on CPU equals one process on the same global batch (BatchNorm-free model)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from paperlib.runs import RunStore
from paperlib.training import TrainConfig, engine, run_name, train

WORLD = 2


def configs() -> list[TrainConfig]:
    base = dict(dataset="synthetic-fashion-mnist", train_subset=128, test_subset=64, batch_size=64,
                eval_batch_size=64, epochs=2, lr=0.05, milestones=(1,))
    return [
        TrainConfig.from_profile("smoke", method="penalty", penalty="fd", norm="l2", lam=1.0, h=0.01, **base),
        TrainConfig.from_profile("smoke", method="penalty", penalty="dbp", norm="l1", lam=1.0, **base),
        TrainConfig.from_profile("smoke", method="pgd-at", steps=2, random_start=False, **base),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, root: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    from paperlib.training.distributed import destroy_distributed

    try:
        for cfg in configs():
            train(cfg, RunStore(root), progress=False, device="cpu")
    finally:
        destroy_distributed()


def test_ddp_with_two_gloo_processes_equals_single_process_training_on_the_global_batch(tmp_path, monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(var, raising=False)
        single = {cfg: train(cfg, RunStore(tmp_path / "single"), progress=False, device="cpu") for cfg in configs()}
        mp.spawn(_worker, args=(str(tmp_path / "ddp"), _free_port()), nprocs=WORLD, join=True)
    finally:
        torch.set_num_threads(n)
    for cfg, one in single.items():
        ddp = RunStore(tmp_path / "ddp").run(cfg.profile, run_name(cfg), cfg)
        assert ddp.status == "finished", run_name(cfg)
        a, b = one.load_weights(), ddp.load_weights()
        torch.manual_seed(cfg.seed)
        init_model = engine._build(cfg)
        init = init_model.state_dict()
        for k, _ in init_model.named_parameters():
            # Same data, same steps; only the order of floating-point sums differs (float32; the FD quotient
            # amplifies those roundings by about 1/h). Measured against how far training moved the weights,
            # so a wrong gradient average (a factor 2) or a wrong shard would fail by orders of magnitude.
            moved = (a[k] - init[k]).norm()
            assert moved > 0, (run_name(cfg), k)
            assert (a[k] - b[k]).norm() <= 2e-3 * moved, (run_name(cfg), k, float((a[k] - b[k]).norm() / moved))
        log_one, log_ddp = one.read_table("train_log.csv"), ddp.read_table("train_log.csv")
        assert list(log_ddp["steps"]) == list(log_one["steps"]) == [2, 2]
        assert log_ddp["train_loss"].values == pytest.approx(log_one["train_loss"].values, rel=1e-4)
        # Only rank 0 wrote: one log line per epoch, world size recorded.
        lines = [ln for ln in (ddp.path / "log.txt").read_text().splitlines() if " epoch " in ln]
        assert len(lines) == 2
        assert ddp.read_json("metrics.json")["world_size"] == WORLD

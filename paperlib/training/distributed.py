"""Multi-process training through ``torchrun``: process group, DDP wrapping, rank-0 I/O.

``torchrun --nproc_per_node N -m paperlib train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the
rendezvous variables) for every process; :func:`init_distributed` reads them and joins the process group with
NCCL on CUDA and gloo on CPU. Each rank trains on its shard of every global batch (the loader of
:func:`paperlib.data.make_loader` with ``rank``/``world_size``), the penalty is computed on each rank's own
batch, :class:`~torch.nn.parallel.DistributedDataParallel` averages the parameter gradients, and only rank 0
writes to the run store. For a BatchNorm-free model this is the same computation as one process on the
global batch (tested with 2 gloo processes on CPU). With BatchNorm each rank normalizes its own shard
(plain DDP, as in the authors' 4-GPU ImageNet code).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from paperlib.config import check_device

__all__ = ["DistEnv", "init_distributed", "wrap_model", "unwrap_model", "barrier", "all_reduce_mean",
           "all_reduce_sum", "destroy_distributed"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device`` and ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str | torch.device | None = None) -> DistEnv:
    """Join the process group described by torchrun's environment, or return a single-process env.

    Args:
        device: force a device (``'cpu'``, ``'cuda'``, ``'cuda:1'``); by default CUDA ``LOCAL_RANK`` if present.
            An unknown device, or one this machine does not have, is a :class:`~paperlib.config.ConfigError`
            (:func:`paperlib.config.check_device`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        dev = _default_device(local_rank)
    else:
        dev = check_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return DistEnv(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def destroy_distributed() -> None:
    """Leave the process group, if joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap ``model`` when running on several processes (parameters are broadcast from rank 0)."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself unchanged)."""
    t = t.detach().clone()
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``t`` over ranks."""
    return all_reduce_sum(t, env) / env.world_size

"""Data-parallel training across processes started by ``torchrun`` (DistributedDataParallel).

``torchrun --nproc-per-node N script.py ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each process
then trains on its shard of every global batch. The backend is NCCL on CUDA and gloo on the CPU. In-batch
negatives are gathered from all processes with gradients (``torch.distributed.nn.functional.all_gather``),
so N processes with batch B train like one process with batch N x B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from msmarco_search.core.errors import PipelineError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def context_from_environment() -> DistributedContext:
    """The process's place in a ``torchrun`` job (a one-process context when not started by torchrun)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise PipelineError(f"RANK/WORLD_SIZE/LOCAL_RANK are not whole numbers ({error})") from error
    return DistributedContext(rank, world_size, local_rank)


def init_distributed(context: DistributedContext, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo otherwise); return this process's device."""
    if not context.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """All processes' ``tensor`` concatenated in rank order; gradients flow back to each owner."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()

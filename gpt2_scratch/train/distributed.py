"""Processes and devices of a training run: the process group, rank 0's jobs, autocast.

Entry point: ``init_distributed("auto") -> (dist_ctx, device, created)``. A run is one process, or
one of those ``torchrun`` starts (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); each gets a
``DistContext``. With one process every collective is a no-op, so the loop reads the same either
way. Files are written by rank 0 alone (``@rank_zero``); ``dist_ctx.main_first()`` lets rank 0
download first while the others then read its cache.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from gpt2_scratch.inference import resolve_device

PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError("--precision bf16 needs a CUDA device (bf16 autocast is only used on CUDA); use fp32")
    if not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ValueError("--precision bf16: this GPU does not support bfloat16; use fp32")
        return None
    return torch.bfloat16


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on rank 0 first (downloads, folder repairs), then on the other ranks."""
        if self.distributed and not self.is_main:
            dist.barrier()
        yield
        if self.distributed and self.is_main:
            dist.barrier()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the processes, in place."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, value)
        return everyone

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_rank() -> int:
    """This process's rank as ``torchrun`` launched it (0 without torchrun): who prints a script's last line."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_name: str) -> tuple[DistContext, torch.device, bool]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns (this process's DistContext, its device, whether we created the process group).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return DistContext(), device, False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size), device, created

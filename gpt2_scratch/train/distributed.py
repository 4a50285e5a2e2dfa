"""Processes and devices of a training run: the process group, rank 0's jobs, the precision (autocast).

Entry point: ``init_distributed("auto") -> (dist_ctx, device, created)``. A run is one process, or
one of those ``torchrun`` starts (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); each gets a
``DistContext``. With one process every collective is a no-op, so the loop reads the same either
way. Files are written by rank 0 alone (``@rank_zero``); ``dist_ctx.main_first()`` lets rank 0
download first while the others then read its cache. ``resolve_precision`` makes ``--precision``
fp32 or bf16 (``auto`` measures bfloat16 on a CPU that computes it natively).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gpt2_scratch.devices import native_bfloat16, resolve_device

PRECISIONS = ("auto", "fp32", "bf16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # a resolved precision's autocast dtype (None: none)
# auto takes bf16 on a native-bfloat16 CPU only if its products measure this much faster than fp32's:
# the rest of a step (casts, attention, AdamW, element-wise work) gains less, and a tie keeps fp32.
AUTO_MIN_SPEEDUP = 1.15


def check_precision(precision: str, device: torch.device) -> None:
    """A one-line error where ``device`` cannot train in ``precision`` (bf16 on a GPU without bfloat16)."""
    if precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16: this GPU does not support bfloat16; use fp32")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--precision bf16 is for CUDA and CPU devices, not {device.type}; use fp32")


def resolve_precision(precision: str, device: torch.device, width: int) -> tuple[str, str | None]:
    """``precision`` made fp32 or bf16 for a model ``width`` wide on ``device``, and a line to show (or None).

    bf16 is autocast to bfloat16 with float32 master weights, optimizer state and loss. ``auto``:
    bf16 on CUDA where supported; on a CPU, bf16 where it computes bfloat16 natively (AVX512-BF16,
    AMX) and ``bf16_speedup`` measures it faster, else fp32 (emulated bfloat16 is slower). An
    explicit bf16 on a CPU without native bfloat16 runs, with a warning.
    """
    check_precision(precision, device)
    if precision == "bf16":
        if device.type == "cpu" and not native_bfloat16(device):
            return "bf16", (
                "warning: --precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), "
                "so bfloat16 is emulated here and slower than fp32"
            )
        return "bf16", None
    if precision == "fp32":
        return "fp32", None
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), None
    if device.type != "cpu" or not native_bfloat16(device):
        return "fp32", None
    speedup = bf16_speedup(width)
    chosen = "bf16" if speedup >= AUTO_MIN_SPEEDUP else "fp32"
    return chosen, f"--precision auto: {chosen} (bfloat16 products measured {speedup:.2f}x as fast as fp32 here)"


@functools.lru_cache(maxsize=None)
def bf16_speedup(width: int, rows: int = 512, rounds: int = 3) -> float:
    """fp32 time / bf16 autocast time of a training product on this CPU: best of ``rounds`` each, interleaved.

    The product is an MLP layer's (``width`` -> 4 ``width``, ``rows`` tokens) forward and backward:
    the bulk of a step. The bf16 side pays the weight's cast, as a step does. Own generator: the
    run's RNG streams are untouched. Cached per width, so the runs of one process agree.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen, requires_grad=True)
    w = torch.randn(4 * width, width, generator=gen, requires_grad=True)

    def once(amp: torch.dtype | None) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            y = F.linear(x, w)
        y.backward(torch.ones_like(y))
        x.grad = w.grad = None
        return time.perf_counter() - start

    once(None), once(torch.bfloat16)  # warm-up: first calls pick kernels and allocate
    fp32 = bf16 = math.inf
    for _ in range(rounds):
        fp32, bf16 = min(fp32, once(None)), min(bf16, once(torch.bfloat16))
    return fp32 / bf16


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

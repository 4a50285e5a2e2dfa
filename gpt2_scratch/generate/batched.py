"""Generation over a list of prompts, batch by batch: the evaluation's and the preference builder's.

Entry points: ``plan_batches`` (prompt indices in batches of similar length, longest first),
``generate_batches`` (fixed batches through ``sampling.generate``) and ``generate_refilled`` (one
``engine.Engine`` whose rows refill), both reporting each finished batch with ``on_batch`` so that the
caller can save it (``generate.progress``) and resume. Invariant: a prompt's tokens do not depend on
its batch.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.generate.stops import StopIds
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID

# Fastest batch size on a 2-core CPU for the 110 test prompts with GPT-2 124M
# (python -m benchmarks.bench_eval --sweep; docs/performance.md); larger batches help more on a GPU.
DEFAULT_BATCH_SIZE = 32


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    Longest first, so that running out of memory happens in the first batch
    and the progress bar's estimate errs on the slow side. Ties keep index
    order, so the plan is a pure function of ``lengths`` and ``batch_size``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate_batches(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    batches: Sequence[Sequence[int]],
    on_batch: Callable[[int, list[int], list[list[int]], float], None],
    skip: set[int] = frozenset(),
    stop_ids: StopIds = (EOS_ID,),
) -> None:
    """Generate each batch of prompt indices not in ``skip``; report it with ``on_batch(b, indices, outputs, seconds)``.

    ``stop_ids``: what ends an answer (the prompt style's ``stop_ids()``)."""
    for b, indices in enumerate(batches):
        if b in skip:
            continue
        t0 = time.perf_counter()
        outputs = generate(model, [prompts[i] for i in indices], settings, stop_ids)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        on_batch(b, list(indices), outputs, time.perf_counter() - t0)


def generate_refilled(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    batches: Sequence[Sequence[int]],
    on_batch: Callable[[int, list[int], list[list[int]], float], None],
    skip: set[int] = frozenset(),
    stop_ids: StopIds = (EOS_ID,),
) -> None:
    """Like ``generate_batches``, but every prompt goes through one ``engine.Engine`` whose rows refill.

    The engine decodes up to one batch's worth of rows at once; a row that
    stops early (``<|endoftext|>``) is replaced by the next prompt at the next
    step instead of leaving its place empty until the batch's longest row ends.
    Progress is still reported (and saved) batch by batch, in plan order: a
    batch is reported once all its prompts are done, its seconds are the wall
    time since the previous report. Each prompt gets exactly the tokens it gets
    alone (greedy; a seeded prompt gets its own generator).
    """
    todo = [b for b in range(len(batches)) if b not in skip]
    if not todo:
        return
    n = sum(len(batches[b]) for b in todo)
    with Engine(model, max_rows=max(len(batch) for batch in batches), max_waiting=n, stop_ids=stop_ids) as engine:
        requests = {b: [engine.submit(prompts[i], settings) for i in batches[b]] for b in todo}
        try:
            t0 = time.perf_counter()
            for b in todo:
                outputs = [r.result() for r in requests[b]]
                t = time.perf_counter()
                on_batch(b, list(batches[b]), outputs, t - t0)
                t0 = t
        finally:  # after an error or a Ctrl-C, no row keeps decoding for nobody
            for reqs in requests.values():
                for r in reqs:
                    r.cancel()

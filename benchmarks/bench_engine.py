"""Batch generation speed: the continuous-batching engine vs fixed batches (evaluate.py's way).

The same prompts, greedy, same weights, each with its own response length between
``--min-new-tokens`` and ``--max-new-tokens``: fixed batches (``batched.plan_batches`` and
``sampling.generate``, EOS forced after each row's length) against ``engine.Engine.generate_all``,
whose rows refill as soon as one finishes. Equal min and max time the engine's per-step cost alone.
CPU with ``--threads`` threads, or ``--device cuda``. Method and figures: docs/performance.md.

    python -m benchmarks.bench_engine                                   # 124M shape, 64 prompts
    python -m benchmarks.bench_engine --model random:tiny --prompts 8 --max-new-tokens 16 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from gpt2_scratch.generate.batched import plan_batches
from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import EOS_ID


class StopAfter(torch.nn.Module):
    """``model`` for ``sampling.generate``, with row i's sampled token number ``lengths[i] + 1`` forced to EOS.

    Mirrors ``generate_steps``: the first call holds every row; a row that got
    EOS is gone from the next call. EOS is forbidden to the other rows, so the
    bookkeeping cannot drift.
    """

    def __init__(self, inner, lengths):
        super().__init__()
        self.inner, self.config, self.lengths = inner, inner.config, list(lengths)
        self.alive: list[list[int]] = []  # [row, tokens sampled so far] of each row in the next call

    @property
    def device(self):
        return self.inner.device

    def new_cache(self, *args):
        self.alive = [[i, 0] for i in range(len(self.lengths))]  # a new generate call
        return self.inner.new_cache(*args)

    def forward(self, idx, **kw):
        logits = self.inner(idx, **kw)
        assert logits.shape[0] == len(self.alive), "the wrapper lost track of the rows"
        for j, row in enumerate(self.alive):
            stop = row[1] == self.lengths[row[0]]
            logits[j, -1, EOS_ID] = float("inf") if stop else float("-inf")
            row[1] += 1
        self.alive = [row for row in self.alive if row[1] <= self.lengths[row[0]]]
        return logits


def run_fixed(model, prompts, lengths, batch_size) -> int:
    """Generate every prompt in fixed batches; returns the number of tokens made."""
    made = 0
    for batch in plan_batches([len(p) for p in prompts], batch_size):
        wrapped = StopAfter(model, [lengths[i] for i in batch])
        settings = SamplingSettings(max_new_tokens=max(lengths[i] for i in batch) + 1)
        outs = generate(wrapped, [prompts[i] for i in batch], settings)
        assert [len(o) for o in outs] == [lengths[i] for i in batch]
        made += sum(len(o) for o in outs)
    return made


def run_engine(model, prompts, lengths, batch_size) -> int:
    """Generate every prompt with the engine; returns the number of tokens made."""
    with Engine(model, max_rows=batch_size, max_waiting=len(prompts), stop_ids=None) as engine:
        outs = engine.generate_all(prompts, [SamplingSettings(max_new_tokens=n + 1) for n in lengths])
    assert [len(o) for o in outs] == [n + 1 for n in lengths]
    return sum(len(o) - 1 for o in outs)  # the last one stands for EOS, which fixed batches do not return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2", help="any load_model string (default: 124M shape, random)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, nargs=2, default=[20, 120], metavar=("MIN", "MAX"))
    ap.add_argument("--min-new-tokens", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per fixed batch, and the engine's max rows")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each (alternating); the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.min_new_tokens <= args.max_new_tokens:
        ap.error("--min-new-tokens must be between 1 and --max-new-tokens")
    torch.set_num_threads(args.threads)

    model, _ = load_model(args.model, device=args.device)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(EOS_ID) for _ in range(rng.randint(*args.prompt_tokens))] for _ in range(args.prompts)]
    lengths = [rng.randint(args.min_new_tokens, args.max_new_tokens) for _ in prompts]
    print(
        f"{args.model} on {args.device} ({args.threads} threads), {args.prompts} prompts of "
        f"{args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, {args.min_new_tokens}-{args.max_new_tokens} "
        f"new tokens each ({sum(lengths)} in all), batch {args.batch_size}",
        flush=True,
    )

    run_fixed(model, prompts[:2], [2, 2], 2)  # warm up (oneDNN packs the weights on first use)
    best = {"fixed batches": float("inf"), "engine": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("fixed batches", run_fixed), ("engine", run_engine)):
            t = time.perf_counter()
            made = fn(model, prompts, lengths, args.batch_size)
            best[name] = min(best[name], time.perf_counter() - t)
            assert made == sum(lengths)
    base = sum(lengths) / best["fixed batches"]
    for name, seconds in best.items():
        rate = sum(lengths) / seconds
        print(f"{name:>14}: {rate:8.1f} tokens/s  ({seconds:.1f} s, {rate / base:.2f}x fixed batches)")


if __name__ == "__main__":
    main()

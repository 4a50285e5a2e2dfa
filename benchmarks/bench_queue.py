"""What one row of the app's batch costs: time per decoding step and memory per row, to size the queue cap.

The app's engine decodes up to ``--max-batch`` rows at once and lets ``--max-waiting``
more wait (beyond that a visitor is told how long to wait). A waiting request gets a
row when one ends, so the k-th in line waits about ceil(k / rows) answers; how long an
answer takes is its tokens times the step time at that many rows, measured here.
Memory: each row's KV cache is allocated when it joins (prompt + max new tokens, every
layer's keys and values); waiting requests hold only their prompt ids.

    python -m benchmarks.bench_queue                       # 124M shape, float32, 2 threads
    python -m benchmarks.bench_queue --model random:tiny --rows 1 2 --new-tokens 8   # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import encode

PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def step_seconds(model, rows: int, new_tokens: int, repeats: int) -> float:
    """Median seconds per engine step with ``rows`` requests of ``new_tokens`` tokens decoding together."""
    prompt = encode(PROMPT)
    settings = SamplingSettings(max_new_tokens=new_tokens)
    times = []
    with Engine(model, max_rows=rows, max_waiting=rows, stop_ids=None) as engine:
        engine.generate_all([prompt], settings)  # warm-up
        for _ in range(repeats):
            steps, t0 = engine.steps, time.perf_counter()
            engine.generate_all([prompt] * rows, settings)
            times.append((time.perf_counter() - t0) / (engine.steps - steps))
    return statistics.median(times)


def kv_bytes_per_row(model, tokens: int) -> int:
    """Bytes of one row's KV cache for ``tokens`` positions (what ``model.new_cache(1, tokens)`` allocates)."""
    cache = model.new_cache(1, tokens)
    return sum(t.numel() * t.element_size() for t in vars(cache).values() if torch.is_tensor(t))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:gpt2")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"CPU: {cpu_name()}, torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    model, _ = load_model(args.model, dtype=args.dtype)
    context = model.config.block_size
    print(
        f"{args.model} {args.dtype}: KV cache per row {kv_bytes_per_row(model, context) / 2**20:.1f} MB "
        f"at the full {context}-token context, {kv_bytes_per_row(model, 256) / 2**20:.1f} MB at 256 tokens"
    )
    print("rows  step ms  tokens/s  seconds per 128-token answer")
    for rows in args.rows:
        s = step_seconds(model, rows, args.new_tokens, args.repeats)
        print(f"{rows:>4}  {s * 1000:7.1f}  {rows / s:8.1f}  {128 * s:6.1f}")


if __name__ == "__main__":
    main()

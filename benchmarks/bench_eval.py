"""Evaluation generation speed: ours (the evaluate.py code path) vs transformers, side by side.

Greedy responses to the real test instructions (Alpaca prompts), GPT-2 124M shape with the same
random weights in both, on CPU with ``--threads`` threads: ours through ``evaluation.plan_batches``
and ``evaluation.generate_batches`` (``sampling.generate``), transformers through
``GPT2LMHeadModel.generate`` on the same left-padded batches; outputs compared token by token.
``--sweep`` first times ours alone at several batch sizes (how evaluate.py's default was chosen);
then the two alternate ``--repeats`` times. Method and figures: docs/performance.md.

    python -m benchmarks.bench_eval                                  # 32 prompts, 64 new tokens
    python -m benchmarks.bench_eval --num-prompts 110 --max-new-tokens 256 --repeats 1
    python -m benchmarks.bench_eval --sweep 8 16 32 64 --no-hf
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

from benchmarks.common import INSTRUCTION_DATA, twin_models
from gpt2_scratch.data.records import load_records, split_records
from gpt2_scratch.eval.evaluation import DEFAULT_BATCH_SIZE, generate_batches, plan_batches
from gpt2_scratch.generate.sampling import SamplingSettings, generate_steps
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, encode

DATASET = str(INSTRUCTION_DATA)
print = functools.partial(print, flush=True)  # progress shows up even when piped


def test_prompts(dataset: str, n: int) -> list[list[int]]:
    """Token ids of the first ``n`` test prompts (Alpaca style), as evaluate.py builds them."""
    style = get_prompt_style("alpaca")
    test = split_records(load_records(dataset)).test[:n]
    return [encode(style.format(r.instruction, r.input)) for r in test]


def run_ours(model, prompts, settings, batch_size) -> tuple[float, list[list[int]]]:
    outputs: list[list[int] | None] = [None] * len(prompts)

    def on_batch(b, indices, outs, secs):
        for i, o in zip(indices, outs):
            outputs[i] = o

    t = time.perf_counter()
    generate_batches(model, prompts, settings, plan_batches([len(p) for p in prompts], batch_size), on_batch)
    return time.perf_counter() - t, outputs


@torch.inference_mode()
def run_hf(hf, prompts, settings, batch_size) -> tuple[float, list[list[int]]]:
    outputs: list[list[int] | None] = [None] * len(prompts)
    t = time.perf_counter()
    for indices in plan_batches([len(p) for p in prompts], batch_size):
        rows = [prompts[i] for i in indices]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), EOS_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, T - len(r) :] = torch.tensor(r)
            mask[j, T - len(r) :] = 1
        out = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            pad_token_id=EOS_ID,
            eos_token_id=EOS_ID,
        )
        for j, i in enumerate(indices):
            new = out[j, T:].tolist()
            outputs[i] = new[: new.index(EOS_ID)] if EOS_ID in new else new
    return time.perf_counter() - t, outputs


def breakdown(model, prompts, settings, batch_size) -> tuple[float, float]:
    """(seconds in prefill, seconds in decode steps) of ours over all batches."""
    prefill = steps = 0.0
    for indices in plan_batches([len(p) for p in prompts], batch_size):
        t = time.perf_counter()
        it = generate_steps(model, [prompts[i] for i in indices], settings)
        next(it)  # the first token comes right after the prefill forward pass
        t1 = time.perf_counter()
        for _ in it:
            pass
        prefill += t1 - t
        steps += time.perf_counter() - t1
    return prefill, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=DATASET)
    ap.add_argument("--num-prompts", type=int, default=32, help="first N test instructions (110 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="batch size of the comparison")
    ap.add_argument("--sweep", type=int, nargs="*", default=[], help="batch sizes to time ours at first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true", help="time ours only")
    ap.add_argument("--breakdown", action="store_true", help="also time ours' prefill and decode steps apart")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    hf, ours = twin_models()  # 124M shape, random weights
    prompts = test_prompts(args.dataset, args.num_prompts)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    lengths = sorted(len(p) for p in prompts)
    print(
        f"{len(prompts)} test prompts ({lengths[0]}-{lengths[-1]} tokens, mean {sum(lengths) / len(lengths):.1f}), "
        f"greedy, {args.max_new_tokens} new tokens, CPU {args.threads} threads, torch {torch.__version__}, "
        f"load average {os.getloadavg()}"
    )

    run_ours(ours, prompts[:2], SamplingSettings(max_new_tokens=4), 2)  # warm-up
    for bs in args.sweep:
        secs, outs = run_ours(ours, prompts, settings, bs)
        n = sum(len(o) for o in outs)
        print(f"  ours  batch {bs:3d}: {secs:7.2f} s  {n / secs:7.1f} tok/s")

    bs = args.batch_size
    best_ours = best_hf = float("inf")
    outs_ours = outs_hf = None
    for _ in range(args.repeats):
        secs, outs_ours = run_ours(ours, prompts, settings, bs)
        best_ours = min(best_ours, secs)
        if not args.no_hf:
            secs, outs_hf = run_hf(hf, prompts, settings, bs)
            best_hf = min(best_hf, secs)
    n = sum(len(o) for o in outs_ours)
    lens = sorted(len(o) for o in outs_ours)
    print(
        f"batch {bs}, best of {args.repeats} (response lengths: min {lens[0]}, median {lens[len(lens) // 2]}, "
        f"max {lens[-1]}):"
    )
    print(f"  ours:         {best_ours:7.2f} s  {n / best_ours:7.1f} tok/s  ({n} tokens)")
    if not args.no_hf:
        n_hf = sum(len(o) for o in outs_hf)
        same = sum(a == b for a, b in zip(outs_ours, outs_hf))
        print(f"  transformers: {best_hf:7.2f} s  {n_hf / best_hf:7.1f} tok/s  ({n_hf} tokens)")
        print(f"  speed-up ours/transformers: {best_hf / best_ours:.2f}x; identical outputs: {same}/{len(prompts)}")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    if not args.breakdown:
        return
    prefill, steps = breakdown(ours, prompts, settings, bs)
    print(
        f"  ours breakdown: prefill {prefill:.2f} s, decode steps {steps:.2f} s "
        f"({steps / max(1, args.max_new_tokens - 1) / len(plan_batches(lengths, bs)) * 1000:.1f} ms/step/batch)"
    )


if __name__ == "__main__":
    main()

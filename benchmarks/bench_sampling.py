"""Sampled decoding against greedy decoding in the library, interleaved in rounds.

124M shape (random weights), CPU, ``generate`` at one batch size (16 by default), a
50-token prompt, 64 new tokens with no early stop. The sides run in turn every
round (greedy, sampled, ...): the sampled one with temperature 0.7, top-k 40,
top-p 0.95 and a seed, as the app's visitors ask. Prints tokens/s per side
(median and min-max over the rounds) and the median per-round ratio sampled /
greedy with its min-max. ``--engine`` measures the serving engine's
``generate_all`` instead (each row with its own seeded generator).

    python -m benchmarks.bench_sampling [--batch 16] [--rounds 5] [--engine]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import interleaved, machine_line, ratio_text, spread
from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import EOS_ID


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=50)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, int8 or auto (as load_model takes)")
    ap.add_argument("--model", default="random:gpt2", help="what load_model takes (default: the 124M shape, random)")
    ap.add_argument("--engine", action="store_true", help="measure Engine.generate_all instead of generate")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    model, _ = load_model(args.model, dtype=args.dtype)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, EOS_ID, (args.batch, args.prompt_len), generator=g).tolist()
    greedy = SamplingSettings(max_new_tokens=args.new_tokens)
    sampled = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0.7, top_k=40, top_p=0.95, seed=0)
    engine = Engine(model, max_rows=args.batch) if args.engine else None

    def rate(settings: SamplingSettings) -> float:
        t = time.perf_counter()
        if engine is not None:
            per_row = [SamplingSettings(**{**settings.__dict__, "seed": i}) for i in range(args.batch)]
            out = engine.generate_all(prompts, per_row if settings.temperature else settings)
        else:
            out = generate(model, prompts, settings, stop_ids=None)
        elapsed = time.perf_counter() - t
        n = sum(len(o) for o in out)
        if engine is None:
            assert n == args.batch * args.new_tokens
        return n / elapsed

    rate(greedy), rate(sampled)  # warm up
    results = interleaved({"greedy": lambda: rate(greedy), "sampled": lambda: rate(sampled)}, args.rounds)
    if engine is not None:
        engine.close()
    where = "Engine.generate_all" if args.engine else "generate"
    print(f"{where}, batch {args.batch}, {args.dtype}, {args.new_tokens} new tokens, {args.rounds} rounds")
    print(f"{'side':>8} {'tok/s median (min-max)':>24}")
    for name, values in results.items():
        print(f"{name:>8} {spread(values):>24}")
    print(f"sampled / greedy: {ratio_text(results['sampled'], results['greedy'])}")


if __name__ == "__main__":
    main()

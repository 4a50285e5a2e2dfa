"""Decode speed: ours vs transformers' ``generate`` with its cache, side by side in one run.

124M shape (random weights, identical in both models), CPU, 2 threads, a 50-token
prompt, 100 new tokens (no early stop), batch 1 and batch 8. Prints tokens/s,
the ratio to transformers, and at batch 1 the fraction of the memory-bandwidth
ceiling (every new token reads all fp32 weights once).

    python -m benchmarks.bench_decode [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import twin_models
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.tokenizer import EOS_ID


def read_bandwidth_gbs(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Memory read bandwidth: best time to sum a 1 GiB float32 tensor."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(repeats))
    return n_bytes / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=50)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    hf, ours = twin_models()  # 124M shape, random weights
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bandwidth = read_bandwidth_gbs()
    ceiling = bandwidth * 1e9 / weight_bytes
    print(
        f"torch {torch.__version__}, {args.threads} threads; weights {weight_bytes / 1e6:.0f} MB; "
        f"read bandwidth {bandwidth:.1f} GB/s -> batch-1 ceiling {ceiling:.1f} tokens/s"
    )

    g = torch.Generator().manual_seed(1)
    settings = SamplingSettings(max_new_tokens=args.new_tokens)
    print(f"{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6}")
    for bs in args.batch_sizes:
        prompts = torch.randint(0, EOS_ID, (bs, args.prompt_len), generator=g)

        def run_ours(prompts=prompts):
            out = generate(ours, prompts.tolist(), settings, stop_ids=None)
            assert all(len(o) == args.new_tokens for o in out)

        def run_hf(prompts=prompts):
            with torch.inference_mode():
                out = hf.generate(
                    prompts,
                    attention_mask=torch.ones_like(prompts),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=EOS_ID,
                )
            assert out.shape[1] == args.prompt_len + args.new_tokens

        run_ours(), run_hf()  # warm up
        t_ours = min(_timed(run_ours) for _ in range(args.repeats))
        t_hf = min(_timed(run_hf) for _ in range(args.repeats))
        tps_ours, tps_hf = bs * args.new_tokens / t_ours, bs * args.new_tokens / t_hf
        line = f"{bs:>5} {tps_ours:>11.1f} {tps_hf:>9.1f} {tps_ours / tps_hf:>5.2f}x"
        if bs == 1:
            line += f"   ours at {tps_ours / ceiling:.0%} of the bandwidth ceiling"
        print(line, flush=True)


if __name__ == "__main__":
    main()

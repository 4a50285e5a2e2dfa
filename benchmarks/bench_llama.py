"""Batch-1 decode: ours against llama.cpp (through llama-cpp-python) on the same random GPT-2 weights.

``random:<preset>`` (default ``gpt2``, the 124M shape) is loaded once in float32 and written as a GGUF
of each llama.cpp type by our exporter (``gpt2_scratch.publish.gguf``, what ``publish.py --gguf``
writes), so both sides run the same numbers. Per precision pair (ours ``float32`` / llama.cpp ``f32``,
``bfloat16`` / ``bf16``, ``int8`` / ``q8_0``, ``int4`` / ``q4_0``): batch 1, a ``--prompt-len``-token random prompt,
``--new-tokens`` greedy tokens (no early stop), both on torch's thread count; ``--rounds``
interleaved rounds (ours, llama.cpp, ours, ...) after one warm-up each. Prints tokens/s (new tokens
over the wall time, prompt included) as median (min-max), the per-round ratio ours / llama.cpp,
and how many greedy ids agree (the length of the common prefix of the two answers).

llama-cpp-python is a benchmark-only dependency (never in requirements): ``pip install
llama-cpp-python`` compiles llama.cpp (30-45 min on two cores).

    python -m benchmarks.bench_llama                           # 124M, three pairs, 3 rounds
    python -m benchmarks.bench_llama --pairs int8:q8_0 --rounds 1 --new-tokens 20   # a short check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine_line, ratio_text, spread
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.publish.export import official_bpe_files
from gpt2_scratch.publish.gguf import GGUF_TYPES, write_gguf
from gpt2_scratch.tokenizer import EOS_ID

PAIRS = ("float32:f32", "bfloat16:bf16", "int8:q8_0", "int4:q4_0")
INSTALL = (
    "llama-cpp-python is not installed; this benchmark needs it (it is not in requirements): "
    "pip install llama-cpp-python (compiles llama.cpp, 30-45 min on two cores), then rerun "
    "python -m benchmarks.bench_llama"
)


def parse_pair(text: str) -> tuple[str, str]:
    ours, _, theirs = text.partition(":")
    if not theirs or theirs not in GGUF_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not OURS:GGUF with GGUF one of {', '.join(GGUF_TYPES)}")
    return ours, theirs


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def timed(fn) -> tuple[float, list[int]]:
    """(seconds, token ids) of one call."""
    started = time.perf_counter()
    ids = fn()
    return time.perf_counter() - started, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2", help="model shape, random weights (default: gpt2, 124M)")
    parser.add_argument("--pairs", nargs="+", type=parse_pair, default=[parse_pair(p) for p in PAIRS])
    parser.add_argument("--threads", type=int, help="threads for both (default: torch's)")
    parser.add_argument("--prompt-len", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(machine_line(threads))
    print(f"llama-cpp-python {llama_cpp.__version__}, random:{args.preset} weights, GGUF by gpt2_scratch.publish.gguf")
    print(
        f"batch 1, a {args.prompt_len}-token prompt, {args.new_tokens} greedy tokens, "
        f"{args.rounds} interleaved rounds; tok/s median (min-max)"
    )

    source = f"random:{args.preset}"
    prompt = torch.randint(0, EOS_ID, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    settings = SamplingSettings(max_new_tokens=args.new_tokens)  # temperature 0: greedy
    vocab_bpe, encoder_json = official_bpe_files()
    header = f"{'ours / llama.cpp':<18} {'ours tok/s':>20} {'llama.cpp tok/s':>20} {'ratio':>19}  greedy ids agree"
    with tempfile.TemporaryDirectory() as tmp:
        float_model, _ = load_model(source)
        files = {}
        for _, gguf_type in args.pairs:
            files[gguf_type] = write_gguf(
                Path(tmp) / f"model-{gguf_type}.gguf",
                float_model,
                gguf_type,
                vocab_json=encoder_json,
                merges_txt=vocab_bpe,
                prompt_style="alpaca",
                name=source,
            )
        del float_model
        print(header, flush=True)
        for dtype, gguf_type in args.pairs:
            ours, _ = load_model(source, dtype=dtype)
            llm = llama_cpp.Llama(
                str(files[gguf_type]),
                n_ctx=args.prompt_len + args.new_tokens + 8,
                n_batch=max(args.prompt_len, 8),
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )

            def run_ours(ours=ours) -> list[int]:
                [ids] = generate(ours, [prompt], settings, stop_ids=None)
                return ids

            def run_llama(llm=llm) -> list[int]:
                llm.reset()  # no prompt reuse from the last round: every round decodes the prompt again
                ids = []
                for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
                    ids.append(token)
                    if len(ids) == args.new_tokens:
                        break
                return ids

            run_ours(), run_llama()  # warm-up: first allocations, packing, llama.cpp's repacking
            tps: dict[str, list[float]] = {"ours": [], "llama.cpp": []}
            answers = {}
            for _ in range(args.rounds):
                for name, fn in (("ours", run_ours), ("llama.cpp", run_llama)):
                    seconds, ids = timed(fn)
                    assert len(ids) == args.new_tokens, (name, len(ids))
                    tps[name].append(args.new_tokens / seconds)
                    answers[name] = ids
            agree = common_prefix(answers["ours"], answers["llama.cpp"])
            print(
                f"{f'{dtype} / {gguf_type}':<18} {spread(tps['ours']):>20} {spread(tps['llama.cpp']):>20} "
                f"{ratio_text(tps['ours'], tps['llama.cpp']):>19}  {agree} of {args.new_tokens}",
                flush=True,
            )
            del ours, llm
    return 0


if __name__ == "__main__":
    sys.exit(main())

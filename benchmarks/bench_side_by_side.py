"""Side by side on a LoRA run: one engine for both models against one engine per model.

The app's side-by-side tab asks the base and the finetuned model the same question. On a LoRA run
of the served base, ``backends.Batched`` sends the base's request to the finetuned model's engine
with the adapter off (``Engine.submit(adapter=False)``): both rows decode in one forward pass per
token, reading the base weights once. Before, each model had its own engine (the finetuned model
and its ``lora.base_view``), two forward passes per token that compete for the same cores.

Each round times one pair of requests (greedy, ``--tokens`` new tokens each, the same instruction
prompt) both ways, in turns (two engines, one engine, ...); the figure is the pair's wall time, the
ratio two engines / one engine per round, median (min-max). The model has GPT-2 124M's shape
(random weights) with a rank-8 adapter on all four targets, kept apart, in ``--dtype``.

    python -m benchmarks.bench_side_by_side                      # bfloat16 and float32, 124M
    python -m benchmarks.bench_side_by_side --preset tiny --rounds 2   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import machine_line, ratio_text, spread
from gpt2_scratch import lora
from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.inference import to_inference
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import encode

PROMPT = get_prompt_style("alpaca").format("Rewrite the sentence in the passive voice.", "The chef cooked the meal.")


def lora_model(preset: str, dtype: str, rank: int = 8):
    """``random:<preset>`` with a rank-``rank`` adapter (B nudged), kept apart, in ``dtype``; and its base view."""
    model, _ = load_gpt(f"random:{preset}")
    lora.inject(model, lora.LoRAConfig(rank=rank), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.02)
    model = to_inference(model.eval(), dtype)
    return model, lora.base_view(model)


def pair_seconds(submit_base, submit_finetuned, prompt: list[int], settings: SamplingSettings) -> float:
    """Wall time until both requests of one side-by-side pair have finished."""
    started = time.perf_counter()
    requests = [submit_base(prompt, settings), submit_finetuned(prompt, settings)]
    for r in requests:
        r.result()
    return time.perf_counter() - started


def run(preset: str, dtype: str, tokens: int, rounds: int) -> None:
    model, base = lora_model(preset, dtype)
    prompt, settings = encode(PROMPT), SamplingSettings(max_new_tokens=tokens)
    # stop_ids None: every request makes exactly ``tokens`` tokens, whatever the random weights say.
    with Engine(model, stop_ids=None) as one, Engine(model, stop_ids=None) as fine, Engine(base, stop_ids=None) as own:
        sides = {
            "two engines": lambda: pair_seconds(own.submit, fine.submit, prompt, settings),
            "one engine": lambda: pair_seconds(
                lambda p, s: one.submit(p, s, adapter=False), one.submit, prompt, settings
            ),
        }
        for measure in sides.values():  # warmup: packing, first allocations
            measure()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, measure in sides.items():
                times[name].append(measure())
    two, one_ = times["two engines"], times["one engine"]
    print(
        f"{dtype:9s} pair of {tokens}-token answers: two engines {spread(two)} s, one engine {spread(one_)} s; "
        f"one engine is {ratio_text(two, one_)} faster (median {statistics.median(one_) / tokens * 1e3:.0f} ms/token)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2", help="model shape (default: gpt2, 124M)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer (default: 64)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    args = parser.parse_args()
    print(machine_line())
    for dtype in args.dtypes:
        run(args.preset, dtype, args.tokens, args.rounds)


if __name__ == "__main__":
    main()

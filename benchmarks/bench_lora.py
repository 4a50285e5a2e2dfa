"""LoRA against the full finetune: parameters, checkpoint size, step time, tokens/s, finetune.py's peak RSS.

1. Steps, in this process: two GPT-2 124M-shape models with the same random weights
   (``random:gpt2``), one full, one with rank-``--rank`` adapters on all four targets, each with
   its AdamW (``train.step.configure_optimizer``), take turns (full, LoRA, full, LoRA, ...) on
   identical batches of the real data's training split (length-grouped as finetune.py batches,
   prompts masked). Timed: forward + backward, and the optimizer step, separately; tokens/s
   counts non-padding input tokens. Ratios are full / LoRA time per step: median (min-max).
2. Memory: ``python finetune.py`` as a child process, full and ``--lora-rank R`` in turns,
   ``--rss-runs`` times each, a few steps on the real data; its peak RSS (``VmHWM``) is polled
   from /proc until it exits. Its final/ gives the checkpoint sizes.
3. ``--xl``: ``finetune.py --base random:gpt2-xl --lora-rank R --max-steps 2`` (micro-batches of one
   example, one evaluation batch): peak RSS and step time; the full finetune's need is computed.

    python -m benchmarks.bench_lora                       # 1 and 2
    python -m benchmarks.bench_lora --xl --skip-steps --rss-runs 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import INSTRUCTION_DATA, ROOT, machine_line, ratio_text
from gpt2_scratch import lora
from gpt2_scratch.data.batches import LengthGroupedBatchSampler, collate, encode_record
from gpt2_scratch.data.records import load_records, split_records
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.inference import load_model
from gpt2_scratch.loss import response_loss
from gpt2_scratch.train.step import configure_optimizer


def step(model, opt, x, y) -> tuple[float, float]:
    """One optimizer step: (forward + backward seconds, optimizer seconds)."""
    t0 = time.perf_counter()
    response_loss(model, x, y).backward()
    t1 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return t1 - t0, time.perf_counter() - t1


def bench_steps(args) -> None:
    examples = [encode_record(r, "alpaca") for r in split_records(load_records(args.dataset)).train]
    sampler = LengthGroupedBatchSampler([len(e.ids) for e in examples], args.batch_size, seed=123, drop_last=True)
    batches = [[examples[i] for i in b] for b in list(sampler)[: args.warmup + args.steps]]
    full, _ = load_model("random:gpt2")
    low, _ = load_model("random:gpt2")
    lora.inject(low, lora.LoRAConfig(rank=args.rank), torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    sides = {"full": (full.train(), configure_optimizer(full, 5e-5, 0.1, cpu))}
    sides["lora"] = (low.train(), configure_optimizer(low, 2e-4, 0.1, cpu))
    times = {name: [] for name in sides}  # per timed step: (forward+backward, optimizer)
    tokens = 0
    for i, batch in enumerate(batches):
        x, y = collate(batch, max_length=1024, mask_prompt=True)
        for name, (model, opt) in sides.items():
            t = step(model, opt, x, y)
            if i >= args.warmup:
                times[name].append(t)
        if i >= args.warmup:
            tokens += sum(len(e.ids) for e in batch)
        print(f"step {i + 1}/{len(batches)} done", file=sys.stderr, flush=True)
    n_full, n_lora = full.num_params(), lora.trainable_parameters(low)
    print(f"trainable parameters: full {n_full:,}, LoRA r={args.rank} {n_lora:,} ({100 * n_lora / n_full:.2f}%)")
    total = {k: [a + b for a, b in v] for k, v in times.items()}
    for label, pick in (("forward+backward", 0), ("optimizer step", 1)):
        full_s, lora_s = ([t[pick] for t in times[k]] for k in ("full", "lora"))
        means = {k: statistics.mean(t[pick] for t in v) for k, v in times.items()}
        print(
            f"{label:<17} full {means['full']:.3f} s, LoRA {means['lora']:.4f} s: full/LoRA {ratio_text(full_s, lora_s)}"
        )
    tps = {k: tokens / sum(v) for k, v in total.items()}
    print(
        f"whole step        full {tps['full']:.0f} tokens/s, LoRA {tps['lora']:.0f} tokens/s: "
        f"{ratio_text(total['full'], total['lora'])}"
    )


def peak_rss_of(command: list[str], threads: int) -> tuple[float, int, str]:
    """(peak RSS in MB polled from /proc until the process exits, its exit code, its output's tail)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0.0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) / 1024)
            except (OSError, IndexError):
                pass
            time.sleep(0.05)
        out.seek(0)
        return peak, proc.returncode, out.read().decode(errors="replace")[-2000:]


def finetune(out: Path, name: str, dataset: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "finetune.py",
        "--dataset",
        dataset,
        "--out-dir",
        str(out),
        "--name",
        name,
        "--eval-every",
        "1000",
        "--eval-batches",
        "1",
        "--sample-tokens",
        "4",
        "--save-every",
        "0",
        *extra,
    ]


def bench_rss(args) -> None:
    peaks = {"full": [], "lora": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.rss_runs):
            for kind in ("full", "lora"):
                extra = ["--base", "random:gpt2", "--max-steps", str(args.rss_steps)]
                extra += ["--lora-rank", str(args.rank)] if kind == "lora" else []
                peak, code, tail = peak_rss_of(finetune(Path(d), f"{kind}{i}", args.dataset, extra), args.threads)
                if code != 0:
                    raise SystemExit(f"finetune.py ({kind}) failed:\n{tail}")
                peaks[kind].append(peak)
                final = Path(d) / f"{kind}{i}" / "final"
                sizes[kind] = sum(f.stat().st_size for f in final.iterdir())
                print(f"finetune.py {kind}: peak RSS {peak:.0f} MB", file=sys.stderr, flush=True)
    print(f"finetune.py peak RSS ({args.rss_steps} steps, {args.rss_runs} runs each, interleaved):")
    for kind, values in peaks.items():
        print(f"  {kind:<5} median {statistics.median(values):.0f} MB (runs: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"  LoRA / full: {ratio_text(peaks['lora'], peaks['full'])}")
    print(
        f"final/ size: full {sizes['full'] / 1e6:.1f} MB, LoRA {sizes['lora'] / 1e6:.2f} MB "
        f"({100 * sizes['lora'] / sizes['full']:.2f}% of the full checkpoint)"
    )


def bench_xl(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        extra = ["--base", "random:gpt2-xl", "--lora-rank", str(args.rank), "--max-steps", "2"]
        extra += ["--batch-size", "8", "--grad-accum", "8"]
        command = finetune(Path(d), "xl", args.dataset, extra)
        started = time.perf_counter()
        peak, code, tail = peak_rss_of(command, args.threads)
        wall = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"finetune.py gpt2-xl failed (peak RSS {peak:.0f} MB):\n{tail}")
        steps = [r for r in read_jsonl(Path(d) / "xl" / "metrics.jsonl") if r["event"] == "train"]
        size = (Path(d) / "xl" / "final" / "adapter.safetensors").stat().st_size
    print(f"gpt2-xl LoRA r={args.rank}: {' '.join(command[1:])}")
    print(f"  completed in {wall:.0f} s, peak RSS {peak / 1024:.1f} GB, adapter {size / 1e6:.1f} MB")
    prev = 0
    for r in steps:
        secs = (r["tokens_seen"] - prev) / r["tokens_per_second"]
        print(f"  step {r['step']}: {r['tokens_per_second']:.1f} tokens/s ({secs:.0f} s), loss {r['loss']:.3f}")
        prev = r["tokens_seen"]
    n = 1_557_611_200  # gpt2-xl's parameters (GPT.num_params, tied head once)
    print(
        f"  the full finetune needs {n * 16 / 1e9:.1f} GB before any activation "
        "(float32 weights 4 + gradients 4 + AdamW moments 8 bytes per parameter)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each side")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rss-runs", type=int, default=2, help="finetune.py runs of each kind (0: none)")
    ap.add_argument("--rss-steps", type=int, default=3)
    ap.add_argument("--skip-steps", action="store_true", help="no in-process step timing")
    ap.add_argument("--xl", action="store_true", help="also the gpt2-xl LoRA run")
    ap.add_argument("--dataset", default=str(INSTRUCTION_DATA))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine_line(args.threads)}; load average {os.getloadavg()[0]:.1f} at the start")
    if not args.skip_steps:
        bench_steps(args)
    if args.rss_runs:
        bench_rss(args)
    if args.xl:
        bench_xl(args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

"""DPO: the step with precomputed reference log-probabilities against the reference run every step, and the
whole chain SFT -> preferences -> DPO -> evaluate on the real data at the 124M shape, timed part by part.

Step (``--part step``): GPT-2 124M (``random:gpt2``), the book's preference data (alpaca prompts), the
first ``--steps`` length-grouped batches of 8 pairs (seed 123), each run by both sides in turn (A B, then
B A, ...) on the same model and optimizer kinds: ``precomputed`` (train/dpo.py's step, the reference
looked up) and ``live`` (the same step, the reference model run on the batch first, as without
precomputing). The precompute itself is timed too. Peak memory: each side in a process of its own
(``--worker``) running two steps; the live side holds the second model, the precomputed side none
(its reference values come from the policy before its first step, as in a run).

Chain (``--part chain``): the four commands as a user types them, each timed end to end (process start
and model loading included), in a temporary folder, on the first ``--chain-limit`` records in every part
(so the three splits agree and the test records stay unseen).

    python -m benchmarks.bench_dpo [--part step|chain|both] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import INSTRUCTION_DATA, PREFERENCE_DATA, ROOT, rss_mb
from gpt2_scratch.data.batches import LengthGroupedBatchSampler
from gpt2_scratch.data.preferences import encode_pair, load_preferences, split_preferences
from gpt2_scratch.inference import load_model
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.distributed import DistContext
from gpt2_scratch.train.dpo import DPOStepRunner, LiveReference
from gpt2_scratch.train.step import configure_optimizer

SIDES = ("precomputed", "live")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def batches(n: int, batch_size: int = 8) -> list:
    """The first ``n`` training batches of a DPO run on the book's preference data (alpaca, seed 123)."""
    split = split_preferences(load_preferences(str(PREFERENCE_DATA)))
    pairs = [encode_pair(r, "alpaca") for r in split.train]
    sampler = LengthGroupedBatchSampler([len(p) for p in pairs], batch_size, seed=123, drop_last=True)
    return [[pairs[i] for i in b] for b in list(sampler)[:n]]


def runner(model) -> DPOStepRunner:
    cfg = TrainConfig(method="dpo", base="random:gpt2", dataset=str(PREFERENCE_DATA))
    opt = configure_optimizer(model, cfg.lr, cfg.weight_decay, torch.device("cpu"))
    return DPOStepRunner(model, opt, cfg, DistContext(), torch.device("cpu"), max_length=1024, amp_dtype=None)


def make_sides(work: list) -> tuple[dict, float]:
    """{side: runner} on two policies of the same weights, and the seconds the precompute of ``work`` took."""
    policies = {side: load_model("random:gpt2")[0].train() for side in SIDES}
    runners = {side: runner(policies[side]) for side in SIDES}
    t = time.perf_counter()
    runners["precomputed"].reference = runners["precomputed"].compute_reference(policies["precomputed"], [work], "")
    seconds = time.perf_counter() - t
    runners["live"].reference = LiveReference(load_model("random:gpt2")[0], average=False)  # the second model
    return runners, seconds


def worker(side: str, steps: int) -> None:
    """Two DPO steps of one side; prints its peak RSS (the policy, AdamW, the reference if live)."""
    work = batches(steps)
    model = load_model("random:gpt2")[0].train()
    r = runner(model)
    if side == "live":
        r.reference = LiveReference(load_model("random:gpt2")[0], average=False)
    else:
        r.reference = r.compute_reference(model, [[p for b in work for p in b]], "")
    for b in work:
        r.step(b, 5e-6)
    print(json.dumps({"side": side, "peak_rss_mb": rss_mb()[0]}))


def step_part(args) -> None:
    work = batches(args.warmup + args.steps)
    pairs = [p for b in work for p in b]
    runners, precompute_s = make_sides(pairs)
    times = {side: [] for side in (*SIDES, "reference forward")}
    live = runners["live"]
    for i, b in enumerate(work):
        order = (*SIDES, "reference forward") if i % 2 == 0 else ("reference forward", *SIDES[::-1])  # A B C, C B A
        for side in order:
            t = time.perf_counter()
            if side == "reference forward":  # what the live side adds: the reference on the batch's rows
                live.reference.lookup(b, *live._tensors(b))
            else:
                runners[side].step(b, 5e-6)
            if i >= args.warmup:
                times[side].append(time.perf_counter() - t)
        print(f"round {i + 1}/{len(work)} done", file=sys.stderr, flush=True)
    ratios = [live / pre for pre, live in zip(times["precomputed"], times["live"])]
    tokens = sum(len(p.chosen.ids) + len(p.rejected.ids) for p in pairs)
    print(f"DPO step, GPT-2 124M shape, {cpu_name()}, {args.threads} threads, batch 8 pairs, fp32")
    for side, t in times.items():
        print(f"  {side:17s} median {statistics.median(t):.2f} s (min {min(t):.2f}, max {max(t):.2f})")
    print(
        f"  speed-up of precomputing: median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} identical batches; "
        f"best times {min(times['live']) / min(times['precomputed']):.2f}x"
    )
    shares = [f / p for f, p in zip(times["reference forward"], times["precomputed"])]
    print(f"  the reference forward is a median {statistics.median(shares):.0%} of the precomputed step")
    print(f"  the precompute: {len(pairs)} pairs ({tokens} tokens) in {precompute_s:.1f} s")
    for side in SIDES:
        cmd = [sys.executable, "-m", "benchmarks.bench_dpo", "--worker", side, "--steps", "2"]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        print(f"  peak RSS, {side:12s} {json.loads(out.splitlines()[-1])['peak_rss_mb']:.0f} MB (2 steps)")


def timed(name: str, cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    print(f"  {name:12s} {seconds:7.1f} s   python {' '.join(cmd)}", flush=True)
    return seconds


def chain_part(args) -> None:
    print(f"The chain at the GPT-2 124M shape (random:gpt2), {cpu_name()}, {args.threads} threads, real data")
    scripts = {name: str(ROOT / f"{name}.py") for name in ("finetune", "make_preferences", "evaluate")}
    small = ["--sample-tokens", "8", "--eval-batches", "2", "--device", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        limit = ["--limit", str(args.chain_limit)]  # the same first records in every part: the same split
        sft = ["--base", "random:gpt2", "--dataset", str(INSTRUCTION_DATA), "--name", "sft", *limit]
        total = timed("SFT", [scripts["finetune"], *sft, "--max-steps", str(args.chain_steps), *small], tmp)
        prefs = ["--model", "runs/sft", "--dataset", str(INSTRUCTION_DATA), "--out", "prefs.json", *limit]
        prefs += ["--max-new-tokens", str(args.chain_tokens), "--no-progress", "--device", "cpu"]
        total += timed("preferences", [scripts["make_preferences"], *prefs], tmp)
        dpo = ["--method", "dpo", "--base", "runs/sft", "--dataset", "prefs.json", "--name", "dpo"]
        total += timed("DPO", [scripts["finetune"], *dpo, "--max-steps", str(args.chain_steps), *small], tmp)
        ev = ["--run", "runs/dpo", "--max-new-tokens", str(args.chain_tokens)]
        total += timed("evaluate", [scripts["evaluate"], *ev, "--no-progress", "--device", "cpu"], tmp)
        summary = json.loads((tmp / "runs/dpo/eval/summary.json").read_text())
        metrics = [json.loads(line) for line in (tmp / "runs/dpo/metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if m["event"] == "eval"][-1]
        print(f"  total        {total:7.1f} s")
        print(
            f"  DPO after {last['step']} steps: val loss {last['val_loss']:.3f}, reward accuracy "
            f"{last['val_reward_accuracy']:.2f}, margin {last['val_reward_margin']:.3f}; evaluated against "
            f"{summary['base_model']} on {summary['num_records']} test records"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("step", "chain", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed rounds (each side once per round)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--chain-steps", type=int, default=10, help="--max-steps of the chain's SFT and DPO runs")
    ap.add_argument("--chain-tokens", type=int, default=32, help="max new tokens of its preferences and evaluation")
    ap.add_argument(
        "--chain-limit", type=int, default=200, help="records of the chain (the first N: 85/10/5 of them in every part)"
    )
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.steps)
    else:
        if args.part in ("step", "both"):
            step_part(args)
        if args.part in ("chain", "both"):
            chain_part(args)


if __name__ == "__main__":
    main()

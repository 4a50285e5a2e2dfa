"""Reduced-precision inference: quality against float32, decode speed and memory, per dtype.

Quality on the 110 real test prompts, each dtype against float32 in one process: mean KL of the
next-token distributions, the teacher-forced reference loss, greedy agreement. Speed (decode
tokens/s per ``--batch-sizes``) and memory (RSS after decoding, peak RSS), each dtype in a fresh
process, ``--rounds`` times with the dtypes in turn (best speed, highest memory kept). Random 124M
weights by default (``random:gpt2``: real speed and memory, understated quality changes);
``--model`` takes a run folder, a checkpoint folder or a Hub id. Method, figures: docs/performance.md.

    python -m benchmarks.bench_precision                                   # everything, 124M random
    python -m benchmarks.bench_precision --model runs/<name>               # a finetuned run
    python -m benchmarks.bench_precision --model random:tiny --num-prompts 4 --decode-tokens 8   # smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import INSTRUCTION_DATA, rss_mb
from gpt2_scratch.data.batches import EncodedExample, collate, encode_record
from gpt2_scratch.data.records import load_records, split_records
from gpt2_scratch.eval.evaluation import plan_batches
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import DTYPES, load_model, model_dtype
from gpt2_scratch.loss import IGNORE_INDEX, lm_loss
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE
from gpt2_scratch.runs import RunPaths
from gpt2_scratch.tokenizer import EOS_ID

DATASET = str(INSTRUCTION_DATA)
print = functools.partial(print, flush=True)  # progress shows up even when piped


def model_source(model: str) -> str:
    """A run folder means its ``final/`` checkpoint; anything else goes to ``load_model`` as is."""
    run = RunPaths(Path(model).expanduser())
    return str(run.final) if run.run_json.is_file() and run.final.is_dir() else model


def load_test_examples(dataset: str, n: int | None, style: str) -> list[EncodedExample]:
    """Prompt + reference token ids of the first ``n`` test records, in ``style``."""
    test = split_records(load_records(dataset)).test
    return [encode_record(r, style) for r in test[:n]]


# --- quality ---------------------------------------------------------------------------------


@torch.inference_mode()
def teacher_forced(models: dict, examples: list[EncodedExample], batch_size: int) -> dict[str, dict]:
    """Per dtype: mean KL against ``models["float32"]`` and the reference loss, teacher-forced."""
    sums = {name: {"kl": 0.0, "loss": 0.0} for name in models}
    n_kl = n_loss = 0
    max_length = models["float32"].config.block_size
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        inputs, all_targets = collate(batch, max_length=max_length, mask_prompt=False)
        _, response_targets = collate(batch, max_length=max_length, mask_prompt=True)
        scored = all_targets != IGNORE_INDEX  # every position of prompt + reference (+ EOS)
        n_kl, n_loss = n_kl + int(scored.sum()), n_loss + int((response_targets != IGNORE_INDEX).sum())
        reference = None
        for name, model in models.items():  # float32 first
            logits = model(inputs.to(model.device)).float().cpu()
            sums[name]["loss"] += float(lm_loss(logits, response_targets, reduction="sum"))
            if reference is None:
                reference = logits[scored]
            else:
                sums[name]["kl"] += kl_sum(reference, logits[scored])
            del logits
    return {name: {"kl": s["kl"] / n_kl, "loss": s["loss"] / n_loss} for name, s in sums.items()}


def kl_sum(reference: torch.Tensor, logits: torch.Tensor, chunk: int = 256) -> float:
    """Sum over rows of KL(softmax(reference) || softmax(logits)) for ``(N, V)`` logits.

    In float64, a chunk of rows at a time: the KL of close distributions is a sum
    of tiny differences, which float32 rounding can even turn negative.
    """
    total = 0.0
    for i in range(0, reference.shape[0], chunk):
        p = reference[i : i + chunk].double().log_softmax(-1)
        q = logits[i : i + chunk].double().log_softmax(-1)
        total += float(F.kl_div(q, p, log_target=True, reduction="sum"))
    return total


def greedy_outputs(model, examples: list[EncodedExample], n_tokens: int) -> list[list[int]]:
    """The first ``n_tokens`` greedy tokens for each prompt (fewer if it emits EOS), in batches of 8."""
    prompts = [ex.ids[: ex.prompt_len] for ex in examples]
    outputs: list[list[int]] = [[] for _ in prompts]
    settings = SamplingSettings(max_new_tokens=n_tokens)
    for indices in plan_batches([len(p) for p in prompts], 8):
        for i, out in zip(indices, generate(model, [prompts[i] for i in indices], settings)):
            outputs[i] = out
    return outputs


# --- speed and memory (one dtype per process) -----------------------------------------------------


def memory_mb() -> dict[str, float]:
    """This process's current and peak RSS in MB."""
    peak, current = rss_mb()
    return {"rss_mb": current, "peak_rss_mb": peak}


def speed_worker(args: argparse.Namespace) -> dict:
    """Load the model in ``args.worker`` dtype, time decoding at each batch size, report memory."""
    torch.set_num_threads(args.threads)
    model, _ = load_model(model_source(args.model), device=args.device, dtype=args.worker)
    g = torch.Generator().manual_seed(1)
    settings = SamplingSettings(max_new_tokens=args.decode_tokens)
    tokens_per_s = {}
    for bs in args.batch_sizes:
        prompts = torch.randint(0, EOS_ID, (bs, args.prompt_len), generator=g).tolist()
        generate(model, prompts, settings, stop_ids=None)  # warm up (oneDNN primitives, packing, allocator)
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = generate(model, prompts, settings, stop_ids=None)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
            assert all(len(o) == args.decode_tokens for o in out)
        tokens_per_s[bs] = bs * args.decode_tokens / best
    return {"dtype": model_dtype(model), "tokens_per_s": tokens_per_s, **memory_mb()}


def run_worker(args: argparse.Namespace, dtype: str) -> dict:
    """``speed_worker`` for ``dtype`` in a fresh Python process; its JSON result."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_precision",
        "--worker",
        dtype,
        "--model",
        args.model,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--prompt-len",
        str(args.prompt_len),
        "--decode-tokens",
        str(args.decode_tokens),
        "--repeats",
        str(args.repeats),
        "--batch-sizes",
        *map(str, args.batch_sizes),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {dtype} speed run failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(worker_results: list[dict]) -> dict:
    """One dtype's rounds in one: the best tokens/s at each batch size, the highest RSS and peak RSS."""
    out = dict(worker_results[0])
    out["tokens_per_s"] = {bs: max(r["tokens_per_s"][bs] for r in worker_results) for bs in out["tokens_per_s"]}
    for key in ("rss_mb", "peak_rss_mb"):
        if key in out:
            out[key] = max(r[key] for r in worker_results)
    return out


# --- main ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2", help="run folder, checkpoint folder, Hub id or random:<preset>")
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=["bfloat16", "int8", "int4"],
        choices=DTYPES[1:],
        help="dtypes to compare with float32 (default: bfloat16 int8 int4)",
    )
    ap.add_argument("--dataset", default=DATASET, help="instruction data (.json/.jsonl, URL or Hub id)")
    ap.add_argument("--num-prompts", type=int, default=None, help="first N test prompts (default: all)")
    ap.add_argument("--prompt-style", default=None, help="prompt style (default: the checkpoint's, else alpaca)")
    ap.add_argument("--loss-batch-size", type=int, default=4, help="examples per teacher-forced batch")
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="decode batch sizes to time")
    ap.add_argument("--prompt-len", type=int, default=50)
    ap.add_argument("--decode-tokens", type=int, default=100, help="new tokens per timed decode")
    ap.add_argument("--repeats", type=int, default=3, help="timed decodes per batch size in each worker (best kept)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="speed workers per dtype, run in turn with the other dtypes (best kept)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-quality", action="store_true", help="only speed and memory")
    ap.add_argument("--skip-speed", action="store_true", help="only quality")
    ap.add_argument("--worker", choices=DTYPES[1:], help=argparse.SUPPRESS)  # internal: one speed run
    return ap.parse_args(argv)


def quality(args: argparse.Namespace, dtypes: list[str]) -> dict[str, dict]:
    """KL, reference loss and greedy agreement of each dtype against float32."""
    source = model_source(args.model)
    models, info = {}, None
    for dtype in dtypes:
        models[dtype], info = load_model(source, device=args.device, dtype=dtype)
    style = args.prompt_style or (info.prompt_style if info and info.prompt_style else DEFAULT_PROMPT_STYLE)
    examples = load_test_examples(args.dataset, args.num_prompts, style)
    print(
        f"quality on {len(examples)} test prompts ({style} style), teacher-forced and {args.greedy_tokens} greedy tokens"
    )
    results = teacher_forced(models, examples, args.loss_batch_size)
    reference = greedy_outputs(models["float32"], examples, args.greedy_tokens)
    for dtype in dtypes:
        outputs = reference if dtype == "float32" else greedy_outputs(models[dtype], examples, args.greedy_tokens)
        results[dtype]["greedy"] = sum(a == b for a, b in zip(outputs, reference)) / len(examples)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(speed_worker(args)))
        return
    torch.set_num_threads(args.threads)
    dtypes = ["float32", *(d for d in args.dtypes if d != "float32")]
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, model {args.model}")
    results = {d: {} for d in dtypes}
    if not args.skip_quality:
        for dtype, r in quality(args, dtypes).items():
            results[dtype].update(r)
    if not args.skip_speed:
        runs: dict[str, list[dict]] = {d: [] for d in dtypes}
        for _ in range(args.rounds):  # interleaved, so that a slow spell of a shared machine hits every dtype
            for dtype in dtypes:
                runs[dtype].append(run_worker(args, dtype))
        for dtype, worker_results in runs.items():
            results[dtype].update(best_of(worker_results))
    print_table(results, args)


def print_table(results: dict[str, dict], args: argparse.Namespace) -> None:
    """One row per dtype; quality columns against float32, speed ratios to float32."""
    base = results["float32"]
    head = f"{'dtype':<9}"
    if not args.skip_quality:
        head += f" {'KL':>9} {'ref loss':>9} {'change':>8} {'greedy':>7}"
    if not args.skip_speed:
        head += "".join(f" {f'tok/s b{bs}':>10} {'ratio':>6}" for bs in args.batch_sizes)
        head += f" {'RSS MB':>7} {'peak RSS MB':>11}"
    print(head)
    for dtype, r in results.items():
        line = f"{dtype:<9}"
        if not args.skip_quality:
            change = (r["loss"] - base["loss"]) / base["loss"]
            line += f" {r['kl']:>9.2e} {r['loss']:>9.4f} {change:>+8.3%} {r['greedy']:>7.0%}"
        if not args.skip_speed:
            for bs in args.batch_sizes:
                tps = r["tokens_per_s"][str(bs)]
                line += f" {tps:>10.1f} {tps / base['tokens_per_s'][str(bs)]:>5.2f}x"
            line += f" {r.get('rss_mb', float('nan')):>7.0f} {r.get('peak_rss_mb', float('nan')):>11.0f}"
        print(line)


if __name__ == "__main__":
    main()

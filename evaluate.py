"""Evaluate a finetuned run against its base model on the run's held-out test records
(for a DPO run, the base is the SFT model it started from).

    python evaluate.py                      # the newest run under runs/, both models
    python evaluate.py --run runs/my-run --models finetuned --limit 20
    python evaluate.py --judge-url http://localhost:11434/v1 --judge-model llama3

Writes runs/<name>/eval/predictions.jsonl and eval/summary.json and prints the
aggregates side by side. An interrupted evaluation continues where it stopped
when rerun with the same settings. All the work is in gpt2_scratch.eval.evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpt2_scratch.eval.evaluation import DEFAULT_BATCH_SIZE, EvalSettings, evaluate_run
from gpt2_scratch.eval.judge import DEFAULT_JUDGE_SEED, JUDGE_API_KEY_ENV, JudgeConfig, JudgeUnreachable
from gpt2_scratch.eval.summary import MODEL_NAMES, format_table
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.inference import DTYPES, resolve_device
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, RunPaths, latest_run


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        # One line, no usage block: the project's convention for bad input.
        self.exit(2, f"error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help=f"run folder to evaluate (default: the newest run under {DEFAULT_RUNS_DIR}/ with a final checkpoint)",
    )
    p.add_argument(
        "--models",
        choices=[*MODEL_NAMES, "both"],
        default="both",
        help="which models to evaluate: the run's base model, its finetuned checkpoint, or both (default)",
    )
    g = p.add_argument_group("generation (greedy by default)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="most new tokens per response (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= p")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (each batch restarts from it)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"prompts generated together (default {DEFAULT_BATCH_SIZE}, fastest on CPU)",
    )
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N test records")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument(
        "--refill",
        action="store_true",
        help="one engine whose rows refill as others finish (serving.Engine) instead of fixed batches: "
        "faster when many answers end early (1.19x measured), slower when all run to the limit (0.75x)",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="inference format: float32 (default; exact), bfloat16, int8 (weight-only, opt-in), or auto "
        "(bfloat16 on CUDA and on CPUs with native bfloat16, else float32). Results record it",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="delete saved partial results in eval/ and start over (needed after changing settings)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    j = p.add_argument_group("LLM judge (off unless --judge-url is given)")
    j.add_argument(
        "--judge-url",
        default=None,
        help="OpenAI-compatible API base, e.g. http://localhost:11434/v1 (Ollama); "
        "requests go to {url}/chat/completions",
    )
    j.add_argument("--judge-model", default=None, help="judge model name, e.g. llama3 (required with --judge-url)")
    j.add_argument(
        "--judge-api-key", default=None, help=f"bearer token for the judge (default: ${JUDGE_API_KEY_ENV} if set)"
    )
    j.add_argument(
        "--judge-seed",
        type=int,
        default=DEFAULT_JUDGE_SEED,
        help=f"seed sent with every judge request (default {DEFAULT_JUDGE_SEED}; temperature is always 0)",
    )
    j.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default 120)")
    j.add_argument(
        "--judge-retries",
        type=int,
        default=3,
        help="extra attempts after a server error or timeout, with exponential backoff (default 3)",
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[RunPaths, EvalSettings]:
    """The run folder and settings named by ``args``; bad values raise one-line ValueErrors."""
    if args.run is not None:
        if not args.run.is_dir():
            raise ValueError(f"--run {args.run}: no such run folder")
        run = RunPaths(args.run)
    else:
        run = latest_run(DEFAULT_RUNS_DIR)
    sampling = SamplingSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    judge = None
    if args.judge_model and not args.judge_url:
        raise ValueError("--judge-model needs --judge-url")
    if args.judge_url:
        if not args.judge_model:
            raise ValueError("--judge-url needs --judge-model (the model name the server knows, e.g. llama3)")
        judge = JudgeConfig(
            url=args.judge_url,
            model=args.judge_model,
            api_key=args.judge_api_key or os.environ.get(JUDGE_API_KEY_ENV),
            seed=args.judge_seed,
            timeout=args.judge_timeout,
            retries=args.judge_retries,
        )
    device = str(resolve_device(args.device or "auto"))
    settings = EvalSettings(
        models=MODEL_NAMES if args.models == "both" else (args.models,),
        sampling=sampling,
        batch_size=args.batch_size,
        limit=args.limit,
        device=device,
        dtype=args.dtype,
        refill=args.refill,
        judge=judge,
        restart=args.restart,
        progress=not args.no_progress,
    )
    return run, settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run, settings = build(args)
        summary = evaluate_run(run, settings)
    except (ValueError, OSError, JudgeUnreachable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. the base model cannot be downloaded
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if summary.get("method") == "dpo":  # its base is the SFT model the preference tuning started from
        print(f"DPO run: base = {summary['base_model']} (the SFT model), finetuned = the DPO model")
    print(format_table(summary))
    print(f"\nwrote {run.predictions} and {run.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

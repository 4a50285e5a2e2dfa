"""Build a preference file (chosen/rejected) from an instruction dataset and a model, without a labeller.

    python make_preferences.py --model runs/my-sft --out prefs.json     # the book's instruction data
    python make_preferences.py --model runs/my-sft --dataset data.jsonl --out prefs.jsonl --limit 100
    python finetune.py --method dpo --base runs/my-sft --dataset prefs.json

chosen is the dataset's answer, rejected the model's own greedy answer (self-play, as in SPIN). One
entry per record, in the dataset's order, so the file splits like its source. An interrupted build
continues where it stopped when rerun with the same settings (its answers are kept in
<out>.progress.jsonl until the file is written); --restart starts it over, --replace replaces an
existing --out. The work is in gpt2_scratch.generate.preferences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2_scratch.data.records import DEFAULT_DATASET_URL, load_records
from gpt2_scratch.devices import resolve_device
from gpt2_scratch.eval.evaluation import DEFAULT_BATCH_SIZE
from gpt2_scratch.generate.preferences import build_preferences
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.hub import check_local_model
from gpt2_scratch.inference import DTYPES, load_model
from gpt2_scratch.options import ArgumentParser, check_range
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, get_prompt_style

PREFERENCE_SUFFIXES = (".json", ".jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="make_preferences.py", description=__doc__)
    p.add_argument(
        "--model", required=True, help="the model that answers: a run folder, a checkpoint, any model string"
    )
    p.add_argument("--out", type=Path, required=True, help="the preference file to write (.json or .jsonl)")
    p.add_argument("--dataset", default=DEFAULT_DATASET_URL, help="instruction data: URL, .json/.jsonl file, Hub id")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (default: all)")
    p.add_argument(
        "--prompt-style",
        choices=tuple(PROMPT_STYLES),
        default=None,
        help=f"prompt template (default: the model's own, else {DEFAULT_PROMPT_STYLE})",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="most new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (each batch restarts from it)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts generated together")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="inference format of the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the answers an interrupted build kept (<out>.progress.jsonl) and start over "
        "(needed after changing settings)",
    )
    p.add_argument("--replace", action="store_true", help="replace --out if it exists (without it, that is refused)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Build the file ``args`` ask for; returns the line to print."""
    check_range("--limit", args.limit, "positive integer", none_ok=True)
    for option in ("--batch-size", "--max-new-tokens"):
        check_range(option, getattr(args, option[2:].replace("-", "_")), "positive integer")
    check_range("--temperature", args.temperature, "non-negative number")
    if args.out.suffix.lower() not in PREFERENCE_SUFFIXES:  # before any answer is generated
        raise ValueError(f"--out {args.out} must end in .json or .jsonl (the preference file's two formats)")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; name the preference file to write")
    if args.out.exists() and not args.replace:
        raise ValueError(f"--out {args.out} exists; choose another path, or pass --replace to replace it")
    check_local_model(args.model, "--model")
    records = load_records(args.dataset)[: args.limit]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    model, info = load_model(args.model, device=resolve_device(args.device), dtype=args.dtype)
    style = get_prompt_style(args.prompt_style or (info and info.prompt_style) or DEFAULT_PROMPT_STYLE)
    model_id = {"source": args.model, "sha256": info.sha256 if info else None, "dtype": args.dtype}
    stats = build_preferences(
        model,
        records,
        style,
        args.out,
        settings,
        batch_size=args.batch_size,
        model_id=model_id,
        progress_bar=not args.no_progress,
        restart=args.restart,
        replace=args.replace,
    )
    return stats.summary(args.out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

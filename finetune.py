"""Instruction-finetune GPT-2 and write a run folder (runs/<name>/).

    python finetune.py                                   # gpt2 (124M) on the reference dataset
    python finetune.py --base gpt2-medium --epochs 1
    python finetune.py --base random:tiny --limit 100    # offline smoke run, tiny random model
    python finetune.py --lora-rank 8                     # LoRA: adapters on a frozen base (final/ = adapter)
    python finetune.py --resume runs/20250101-120000     # continue an interrupted run
    python finetune.py --method dpo --base runs/my-sft   # DPO of an SFT run on the book's preference data
    torchrun --nproc_per_node 4 finetune.py ...          # DistributedDataParallel

The training itself lives in gpt2_scratch/train/loop.py; this script only turns
the command line into a TrainConfig (gpt2_scratch/train/config.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2_scratch.options import ArgumentParser, add_dataclass_options, option_name
from gpt2_scratch.train.config import RESUME_OVERRIDES, TrainConfig
from gpt2_scratch.train.distributed import launched_rank
from gpt2_scratch.train.loop import train


def build_parser() -> argparse.ArgumentParser:
    """One option per TrainConfig field (help, group, choices and default from the field)."""
    parser = ArgumentParser(
        prog="finetune.py",
        description="Instruction-finetune GPT-2 (Alpaca-style data) and write runs/<name>/.",
    )
    add_dataclass_options(parser, TrainConfig)
    return parser


def _explicit_options(argv: list[str] | None) -> list[str]:
    """The options written on the command line (whatever their value), in order."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # options not given then leave no attribute
    return list(vars(parser.parse_args(argv)))


def _stored_rank(run_folder: str) -> str:
    """How run.json's LoRA rank reads in an error message ("8", "0, full finetuning", or why it is unknown)."""
    from gpt2_scratch.runs import RunPaths

    try:
        rank = RunPaths(Path(run_folder)).read_info().training.get("lora_rank", 0)
    except (OSError, ValueError) as e:
        return f"unknown, {e}"
    return f"{rank}" if rank else "0, full finetuning"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        given = [k for k in _explicit_options(argv) if k not in RESUME_OVERRIDES]
        if given:
            names = ", ".join(option_name(k) for k in given)
            if "lora_rank" in given:
                names += f" (a run keeps its LoRA rank: {_stored_rank(args.resume)})"
            parser.error(f"--resume continues a run with the settings in its run.json; drop {names}")
    try:
        config = TrainConfig(**vars(args))
        paths = train(config)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # train() raises TrainingInterrupted, which names the run folder
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    if launched_rank() == 0:  # under torchrun every process returns here; one line is enough
        print(f"run folder: {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

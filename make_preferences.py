"""Build a preference file (chosen/rejected) from an instruction dataset and a model, without a labeller.

    python make_preferences.py --model runs/my-sft --out prefs.json     # the book's instruction data
    python make_preferences.py --model runs/my-sft --dataset data.jsonl --out prefs.jsonl --limit 100
    python finetune.py --method dpo --base runs/my-sft --dataset prefs.json

chosen is the dataset's answer, rejected the model's own answer (self-play, as in SPIN; greedy unless
--temperature says otherwise). One entry per record, in the dataset's order, so the file splits like its
source. An interrupted build continues where it stopped when rerun with the same settings (its answers
are kept in <out>.progress.jsonl until the file is written); --restart starts it over, --replace replaces
an existing --out. The options are gpt2_scratch.generate.config.PreferencesConfig's fields; the work is in
gpt2_scratch.generate.preferences.
"""

from __future__ import annotations

import argparse
import sys

from gpt2_scratch.data.records import load_records
from gpt2_scratch.devices import resolve_device
from gpt2_scratch.generate.config import PreferencesConfig
from gpt2_scratch.generate.preferences import build_preferences
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.hub import check_local_model
from gpt2_scratch.inference import load_model
from gpt2_scratch.options import ArgumentParser, add_dataclass_options, included
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, get_prompt_style

PREFERENCE_SUFFIXES = (".json", ".jsonl")


def build_parser() -> argparse.ArgumentParser:
    """One option per PreferencesConfig field (help, group, choices and default from the field)."""
    parser = ArgumentParser(prog="make_preferences.py", description=__doc__)
    add_dataclass_options(parser, PreferencesConfig)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(config: PreferencesConfig) -> str:
    """Build the file ``config`` asks for (its ranges already checked); returns the line to print."""
    if config.out.suffix.lower() not in PREFERENCE_SUFFIXES:  # before any answer is generated
        raise ValueError(f"--out {config.out} must end in .json or .jsonl (the preference file's two formats)")
    if config.out.is_dir():
        raise ValueError(f"--out {config.out} is a folder; name the preference file to write")
    if config.out.exists() and not config.replace:
        raise ValueError(f"--out {config.out} exists; choose another path, or pass --replace to replace it")
    check_local_model(config.model, "--model")
    records = load_records(config.dataset)[: config.limit]
    settings = included(SamplingSettings, config)
    model, info = load_model(config.model, device=resolve_device(config.device), dtype=config.dtype)
    style = get_prompt_style(config.prompt_style or (info and info.prompt_style) or DEFAULT_PROMPT_STYLE)
    model_id = {"source": config.model, "sha256": info.sha256 if info else None, "dtype": config.dtype}
    stats = build_preferences(
        model,
        records,
        style,
        config.out,
        settings,
        batch_size=config.batch_size,
        model_id=model_id,
        progress_bar=config.progress,
        restart=config.restart,
        replace=config.replace,
    )
    return stats.summary(config.out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(PreferencesConfig(**vars(args))))  # a value out of range: one line naming the option
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

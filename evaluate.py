"""Evaluate a finetuned run against its base model on the run's held-out test records
(for a DPO run, the base is the SFT model it started from).

    python evaluate.py                      # the newest run under runs/, both models
    python evaluate.py --run runs/my-run --models finetuned --limit 20
    python evaluate.py --judge-url http://localhost:11434/v1 --judge-model llama3

Writes runs/<name>/eval/predictions.jsonl and eval/summary.json and prints the
aggregates side by side. An interrupted evaluation continues where it stopped
when rerun with the same settings; a finished one is replaced by one with other settings only
with --replace. The options are gpt2_scratch.eval.config.EvalConfig's fields; all the work is in
gpt2_scratch.eval.evaluation.
"""

from __future__ import annotations

import argparse
import sys

from gpt2_scratch.eval.config import EvalConfig
from gpt2_scratch.eval.evaluation import evaluate_run
from gpt2_scratch.eval.judge import JudgeUnreachable
from gpt2_scratch.eval.summary import format_table
from gpt2_scratch.generate.progress import interrupted_message
from gpt2_scratch.options import ArgumentParser, add_dataclass_options


def build_parser() -> argparse.ArgumentParser:
    """One option per EvalConfig field (help, group, choices and default from the field)."""
    parser = ArgumentParser(prog="evaluate.py", description=__doc__)
    add_dataclass_options(parser, EvalConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = None
    try:
        config = EvalConfig(**vars(args))  # a value out of range: one line naming the option, as finetune.py
        run, settings = config.resolve()
        summary = evaluate_run(run, settings)
    except KeyboardInterrupt:  # one line, like finetune.py: what was kept and how to go on
        print(f"\n{interrupted_message(run.eval_dir if run is not None else None)}", file=sys.stderr)
        return 130
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

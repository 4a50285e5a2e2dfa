"""Instruction-finetune GPT-2 and write a run folder (runs/<name>/).

    python finetune.py                                   # gpt2 (124M) on the reference dataset
    python finetune.py --base gpt2-medium --epochs 1
    python finetune.py --base random:tiny --limit 100    # offline smoke run, tiny random model
    python finetune.py --resume runs/20250101-120000     # continue an interrupted run
    python finetune.py --method dpo --base runs/my-sft   # DPO on the book's preference data
    torchrun --nproc_per_node 4 finetune.py ...          # DistributedDataParallel

The training itself lives in gpt2_scratch/train/loop.py; this script only turns
the command line into a TrainConfig (gpt2_scratch/train/config.py).
"""

from __future__ import annotations

import argparse
import sys

from gpt2_scratch.prompts import PROMPT_STYLES
from gpt2_scratch.train.config import DPO_LOGPS, METHODS, RESUME_OVERRIDES, SCHEDULES, TrainConfig
from gpt2_scratch.train.distributed import PRECISIONS
from gpt2_scratch.train.loop import train


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, no usage dump: "error: ..." and exit status 2, like every script here.
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        # "(default: None)" says nothing; those options explain their absence in their help.
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()  # the defaults have one home: the dataclass
    p = _Parser(
        prog="finetune.py",
        description="Instruction-finetune GPT-2 (Alpaca-style data) and write runs/<name>/.",
        formatter_class=_Formatter,
    )
    model = p.add_argument_group("model and data")
    model.add_argument(
        "--base",
        default=d.base,
        help="base model: Hub id, short name (gpt2, gpt2-medium, ...), "
        "local weights, a run's checkpoint folder, or random:<preset> (e.g. random:tiny, offline)",
    )
    model.add_argument(
        "--dataset",
        default=None,
        help="dataset: URL, local .json/.jsonl file or Hugging Face dataset id; default: the book's instruction "
        "data (sft) or its preference data with chosen/rejected answers (dpo)",
    )
    model.add_argument(
        "--limit",
        type=int,
        default=d.limit,
        metavar="N",
        help="use only the first N records (before splitting); default: all",
    )
    model.add_argument(
        "--shuffle-split",
        action=argparse.BooleanOptionalAction,
        default=d.shuffle_split,
        help="shuffle the records before the 85/10/5 train/test/validation split",
    )
    model.add_argument("--prompt-style", choices=tuple(PROMPT_STYLES), default=d.prompt_style, help="prompt template")
    model.add_argument("--max-length", type=int, default=d.max_length, help="tokens per example; longer ones are cut")
    model.add_argument(
        "--mask-prompt",
        action=argparse.BooleanOptionalAction,
        default=d.mask_prompt,
        help="compute the loss on the responses only; --no-mask-prompt also learns the prompts, "
        "as the LLMs-from-scratch reference run does",
    )

    out = p.add_argument_group("output")
    out.add_argument("--out-dir", default=d.out_dir, help="folder holding the run folders")
    out.add_argument(
        "--name", default=d.name, help="run folder name (default: the time, e.g. 20250101-120000; -2, ... if taken)"
    )
    out.add_argument(
        "--resume",
        default=d.resume,
        metavar="RUN_FOLDER",
        help="continue an interrupted run (e.g. runs/<name>) with its own settings from its last saved state "
        "(or from the start if it has none); only --device, --precision and --compile may be given with it",
    )
    out.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        metavar="STEPS",
        help="steps between resume states in <run>/train_state/ (0: never)",
    )

    opt = p.add_argument_group("optimization")
    opt.add_argument(
        "--epochs", type=int, default=None, help="passes over the training split; default: 2 (sft), 1 (dpo)"
    )
    opt.add_argument(
        "--max-steps",
        type=int,
        default=d.max_steps,
        metavar="N",
        help="stop after N optimizer steps, and finish the run as usual (final checkpoint, ...); default: no limit",
    )
    opt.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (AdamW); default: 5e-5 (sft), 5e-6 (dpo)"
    )
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="on matrices and embeddings only")
    opt.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="examples per optimizer step, over all processes and accumulation steps",
    )
    opt.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="split each batch into this many micro-batches (less memory, same result)",
    )
    opt.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning rate after warmup: constant, or cosine decay to 10%% of --lr",
    )
    opt.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup steps")
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: no clipping)")
    opt.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=d.group_by_length,
        help="batch examples of similar length together (less padding)",
    )
    opt.add_argument("--seed", type=int, default=d.seed, help="seed of the batch order, the shuffled split and dropout")

    ev = p.add_argument_group("evaluation during training")
    ev.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        metavar="STEPS",
        help="steps between train/validation loss evaluations",
    )
    ev.add_argument("--eval-batches", type=int, default=d.eval_batches, help="batches of each split per evaluation")
    ev.add_argument(
        "--sample-tokens",
        type=int,
        default=d.sample_tokens,
        help="max new tokens of the baseline and per-epoch sample responses (greedy)",
    )

    run = p.add_argument_group("hardware")
    run.add_argument("--device", default=d.device, help="auto (CUDA if available), cpu, cuda, cuda:N")
    run.add_argument(
        "--precision", choices=PRECISIONS, default=d.precision, help="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    run.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=d.compile, help="torch.compile the model"
    )

    # DPO options -- a block of its own until the parser is generated from TrainConfig's field metadata.
    dpo = p.add_argument_group(
        "DPO",
        "--method dpo tunes --base (the SFT model: a run folder, a checkpoint or any model string) on preference "
        "pairs with the sigmoid DPO loss. The base is also the frozen reference; its log-probabilities are "
        "computed once before training and saved in the run folder. Log-probabilities are summed over each "
        "response (as the DPO paper and TRL; --dpo-logps mean averages them, as the book). Logged rewards are "
        "beta * (log pi - log pi_ref), beta included. Defaults follow the book's DPO run: lr 5e-6, 1 epoch, batch 8",
    )
    dpo.add_argument("--method", choices=METHODS, default=d.method, help="sft: instruction finetuning; dpo: DPO")
    dpo.add_argument(
        "--beta", type=float, default=d.beta, help="DPO's beta: how far the policy may stray from the reference"
    )
    dpo.add_argument(
        "--dpo-logps",
        choices=DPO_LOGPS,
        default=d.dpo_logps,
        help="a response's log-probability: sum over its tokens (paper, TRL) or mean (the book)",
    )
    # end of DPO options
    return p


def _explicit_options(argv: list[str] | None) -> list[str]:
    """The options written on the command line (whatever their value), in order."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # options not given then leave no attribute
    return list(vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        given = [k for k in _explicit_options(argv) if k not in RESUME_OVERRIDES]
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
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
    print(f"run folder: {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

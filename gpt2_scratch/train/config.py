"""The options of a finetuning run: ``TrainConfig``, one field per option of ``finetune.py``.

Each field's metadata (help, group, choices) is its option: finetune.py's
parser is generated from it (``gpt2_scratch.options``). ``RESUME_OVERRIDES``
are the options ``--resume`` may change.

The defaults are those of the LLMs-from-scratch reference run (ch07), except
``mask_prompt`` (the reference learns the prompts too; ``--no-mask-prompt``);
``dataset``, ``epochs`` and ``lr`` default to None, meaning ``METHOD_DEFAULTS``
of ``method`` (``--method dpo`` follows the book's DPO run), filled in at creation.
A run saves its config in run.json's "training" (``to_dict``); ``--resume``
reads it back (``from_dict``). Every bad value is a one-line ``ValueError``
that names the command-line option. ``lora_rank`` > 0 trains LoRA adapters
(``lora.py``) instead of every weight.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2_scratch import lora
from gpt2_scratch.config import from_known_fields
from gpt2_scratch.data.preferences import DEFAULT_PREFERENCE_URL
from gpt2_scratch.data.records import DEFAULT_DATASET_URL
from gpt2_scratch.options import check_range, option_name
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, RunInfo, RunPaths
from gpt2_scratch.train.distributed import PRECISIONS

SCHEDULES = ("constant", "cosine")
METHODS = ("sft", "dpo")
DPO_LOGPS = ("sum", "mean")
DPO_ONLY = {"beta": 0.1, "dpo_logps": "sum"}  # DPO's options and their defaults: other methods take none
# The defaults that depend on --method: the LLMs-from-scratch runs (ch07 SFT; ch07/04 DPO: lr 5e-6, 1 epoch).
METHOD_DEFAULTS = {
    "sft": {"dataset": DEFAULT_DATASET_URL, "epochs": 2, "lr": 5e-5},
    "dpo": {"dataset": DEFAULT_PREFERENCE_URL, "epochs": 1, "lr": 5e-6},
}
# What --resume may change: how the run is executed, not what it computes (finetune.py and train/loop.py).
RESUME_OVERRIDES = ("resume", "device", "precision", "compile", "save_every_minutes")
_MAY_CHANGE = [option_name(n) for n in RESUME_OVERRIDES if n != "resume"]
_RESUME_HELP = (
    "continue an interrupted run (e.g. runs/<name>) with its own settings from its last saved state "
    f"(or from the start if it has none); only {', '.join(_MAY_CHANGE[:-1])} and {_MAY_CHANGE[-1]} "
    "may be given with it"
)


@dataclass
class TrainConfig:
    """Everything that defines a finetuning run: the options of ``finetune.py``, one to one.

    Each field's metadata is its command-line option (``gpt2_scratch.options``):
    its help, its group in ``--help``, and its choices, metavar and default text.
    """

    # --- model and data
    base: str = field(
        default="gpt2",
        metadata={
            "help": "base model: Hub id, short name (gpt2, gpt2-medium, ...), local weights, "
            "a run's checkpoint folder, or random:<preset> (e.g. random:tiny, offline)",
            "group": "model and data",
        },
    )
    dataset: str | None = field(
        default=None,  # METHOD_DEFAULTS
        metadata={
            "help": "dataset: URL, local .json/.jsonl file or Hugging Face dataset id",
            "group": "model and data",
            "default_text": "the book's instruction data (sft) or its preference data with chosen/rejected (dpo)",
        },
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "use only the first N records of the dataset, before the split (for quick runs)",
            "group": "model and data",
            "metavar": "N",
            "default_text": "all",
        },
    )
    shuffle_split: bool = field(
        default=False,  # the reference splits in file order
        metadata={
            "help": "shuffle the records before the 85/10/5 train/test/validation split",
            "group": "model and data",
        },
    )
    prompt_style: str = field(
        default=DEFAULT_PROMPT_STYLE,
        metadata={"help": "prompt template", "group": "model and data", "choices": tuple(PROMPT_STYLES)},
    )
    max_length: int = field(
        default=1024,
        metadata={
            "help": "tokens per example; longer ones are cut (capped at the model's context)",
            "group": "model and data",
            "metavar": "TOKENS",
        },
    )
    mask_prompt: bool = field(
        default=True,
        metadata={
            "help": "compute the loss on the responses only; --no-mask-prompt also learns the prompts, "
            "as the LLMs-from-scratch reference run does",
            "group": "model and data",
        },
    )

    # --- output
    out_dir: str = field(
        default=str(DEFAULT_RUNS_DIR),
        metadata={"help": "folder holding the run folders", "group": "output", "metavar": "DIR"},
    )
    name: str | None = field(
        default=None,
        metadata={
            "help": "run folder name",
            "group": "output",
            "default_text": "the start time, e.g. 20250101-120000; -2, -3, ... if taken",
        },
    )
    resume: str | None = field(
        default=None,
        metadata={"help": _RESUME_HELP, "group": "output", "metavar": "RUN_FOLDER", "default_text": "a new run"},
    )
    save_every: int = field(
        default=100,
        metadata={
            "help": "steps between resume states in <run>/train_state/ (0: never by steps)",
            "group": "output",
            "metavar": "STEPS",
        },
    )
    save_every_minutes: float = field(
        default=10.0,
        metadata={
            "help": "also save a resume state when this many minutes passed since the last one (0: never by time): "
            "an interruption loses at most that much work, however slow the steps",
            "group": "output",
            "metavar": "MINUTES",
        },
    )

    # --- optimization
    epochs: int | None = field(
        default=None,  # METHOD_DEFAULTS
        metadata={
            "help": "passes over the training split",
            "group": "optimization",
            "default_text": "2 (sft), 1 (dpo)",
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "stop after N optimizer steps, and finish the run as usual (final checkpoint, ...)",
            "group": "optimization",
            "metavar": "N",
            "default_text": "no limit",
        },
    )
    lr: float | None = field(
        default=None,  # METHOD_DEFAULTS
        metadata={
            "help": "peak learning rate (AdamW)",
            "group": "optimization",
            "default_text": "5e-5 (sft), 5e-6 (dpo)",
        },
    )
    weight_decay: float = field(
        default=0.1,
        metadata={"help": "AdamW weight decay, on matrices and embeddings only", "group": "optimization"},
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "examples per optimizer step, over all processes and accumulation steps",
            "group": "optimization",
        },
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "help": "split each batch into this many micro-batches (less memory, same result)",
            "group": "optimization",
            "metavar": "N",
        },
    )
    schedule: str = field(
        default="constant",
        metadata={
            "help": "learning rate after warmup: constant, or cosine decay to 10% of --lr",
            "group": "optimization",
            "choices": SCHEDULES,
        },
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "linear warmup steps", "group": "optimization", "metavar": "STEPS"}
    )
    grad_clip: float = field(
        default=0.0,  # the reference does not clip
        metadata={"help": "max gradient norm (0: no clipping)", "group": "optimization", "metavar": "NORM"},
    )
    group_by_length: bool = field(
        default=True,
        metadata={"help": "batch examples of similar length together (less padding)", "group": "optimization"},
    )
    seed: int = field(
        default=123,
        metadata={"help": "seed of the batch order, the shuffled split and dropout", "group": "optimization"},
    )

    # --- evaluation during training
    eval_every: int = field(
        default=5,
        metadata={
            "help": "steps between train/validation loss evaluations",
            "group": "evaluation during training",
            "metavar": "STEPS",
        },
    )
    eval_batches: int = field(
        default=5,  # the reference's eval_iter
        metadata={
            "help": "batches of each split per evaluation",
            "group": "evaluation during training",
            "metavar": "N",
        },
    )
    sample_tokens: int = field(
        default=50,
        metadata={
            "help": "max new tokens of the baseline and per-epoch sample responses (greedy)",
            "group": "evaluation during training",
            "metavar": "TOKENS",
        },
    )

    # --- hardware
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda, cuda:N", "group": "hardware"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "bf16: products autocast to bfloat16, float32 weights, optimizer state and loss (on a CPU "
            "without native bfloat16 it is emulated and slower); auto: bf16 on CUDA, and on a CPU with AVX512-BF16 "
            "or AMX where it measures faster, else fp32; with --resume, auto keeps the run's own",
            "group": "hardware",
            "choices": PRECISIONS,
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model", "group": "hardware"})

    # --- LoRA
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train LoRA adapters of rank R on a frozen base instead of every weight "
            "(0: full finetuning); final/ and best/ then hold the adapter only",
            "group": "LoRA",
            "metavar": "R",
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "LoRA alpha: the adapter's update is scaled by alpha / R",
            "group": "LoRA",
            "default_text": "2 x R",
        },
    )
    lora_dropout: float = field(
        default=0.05, metadata={"help": "dropout on the adapters' input (training only)", "group": "LoRA"}
    )
    lora_targets: tuple[str, ...] = field(
        default=lora.TARGETS,
        metadata={
            "help": "the linear layers of every block that get an adapter (any of them)",
            "group": "LoRA",
            "metavar": "LAYER",
            "choices": lora.TARGETS,
        },
    )

    # --- DPO (gpt2_scratch/train/dpo.py)
    method: str = field(
        default="sft",
        metadata={
            "help": "sft: instruction finetuning; dpo: preference tuning of --base (the SFT model: a run folder, "
            "a checkpoint or any model string), which is also the frozen reference: its log-probabilities are "
            "computed once before training and saved in the run folder",
            "group": "DPO",
            "choices": METHODS,
        },
    )
    beta: float = field(
        default=DPO_ONLY["beta"],
        metadata={"help": "DPO's beta: how far the policy may move from the reference (dpo only)", "group": "DPO"},
    )
    dpo_logps: str = field(
        default=DPO_ONLY["dpo_logps"],
        metadata={
            "help": "a response's log-probability: the sum over its tokens (as the DPO paper and TRL), or their "
            "mean (as the LLMs-from-scratch book). Logged rewards are beta * (log pi - log pi_ref): beta included",
            "group": "DPO",
            "choices": DPO_LOGPS,
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_dpo()
        positive = ("epochs", "batch_size", "grad_accum", "max_length", "eval_every", "eval_batches", "sample_tokens")
        for name in positive:
            check_range(option_name(name), getattr(self, name), "positive integer")
        for name in ("warmup_steps", "save_every", "seed"):
            check_range(option_name(name), getattr(self, name), "non-negative integer")
        for name in ("limit", "max_steps"):
            check_range(option_name(name), getattr(self, name), "positive integer", none_ok=True)
        check_range("--lr", self.lr, "positive number")
        for name in ("weight_decay", "grad_clip", "save_every_minutes"):
            check_range(option_name(name), getattr(self, name), "non-negative number")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size ({self.batch_size}) must be divisible by --grad-accum ({self.grad_accum})")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        for f in dataclasses.fields(self):  # the choices of the options (--schedule, --precision, ...)
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if choices is not None and v is not None and v not in choices:
                    raise ValueError(f"{option_name(f.name)} must be one of {', '.join(choices)}, got {v!r}")
        if self.name is not None and (
            not self.name or self.name in (".", "..") or "/" in self.name or os.sep in self.name
        ):
            raise ValueError(f"--name must be a plain folder name, got {self.name!r}")
        self._check_lora()

    def _check_lora(self) -> None:
        """--lora-rank 0 (full finetuning) takes no other LoRA option; a positive rank validates them all."""
        if isinstance(self.lora_targets, (list, tuple)):
            self.lora_targets = tuple(self.lora_targets)  # run.json gives a list back
        rank = self.lora_rank
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"--lora-rank must be a positive integer (0: full finetuning), got {rank!r}")
        if rank == 0:
            defaults = {"lora_alpha": None, "lora_dropout": 0.05, "lora_targets": lora.TARGETS}
            for name, default in defaults.items():
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{option_name(name)} needs --lora-rank (a positive rank); without it nothing uses it"
                    )
            return
        self.lora_config()  # one-line errors naming the option

    def lora_config(self) -> lora.LoRAConfig | None:
        """The adapters' config, or None for a full finetune."""
        if not self.lora_rank:
            return None
        return lora.LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def _check_dpo(self) -> None:
        """DPO's options: checked for --method dpo, and refused with sft (which would ignore them silently)."""
        check_range("--beta", self.beta, "positive number")
        if self.method != "dpo":
            for name in DPO_ONLY:
                if getattr(self, name) != DPO_ONLY[name]:
                    raise ValueError(f"{option_name(name)} is for --method dpo; --method {self.method} does not use it")
        if self.method == "dpo" and not self.mask_prompt:
            raise ValueError("--no-mask-prompt is for --method sft: DPO scores the responses only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. run.json's "training"), rejecting unknown keys."""
        return from_known_fields(cls, d, "training option(s)")


def resume_config(config: TrainConfig) -> tuple[TrainConfig, RunInfo]:
    """The run's own config from run.json, keeping only the how-to-run options (RESUME_OVERRIDES) from ``config``."""
    run_info = RunPaths(Path(config.resume)).read_info()
    if not run_info.training:
        raise ValueError(f'{config.resume}/run.json has no "training" settings to resume with')
    if run_info.status == "finished":
        raise ValueError(f"{config.resume} has already finished; there is nothing to resume")
    stored = TrainConfig.from_dict(run_info.training)
    overrides = {name: getattr(config, name) for name in RESUME_OVERRIDES}
    if overrides["precision"] == "auto":  # the precision auto chose when the run started (run.json)
        del overrides["precision"]
    return dataclasses.replace(stored, **overrides), run_info

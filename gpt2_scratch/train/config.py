"""The options of a finetuning run: ``TrainConfig``, one field per option of ``finetune.py``.

The defaults are those of the LLMs-from-scratch reference run (ch07), except
``mask_prompt`` (the reference learns the prompts too; ``--no-mask-prompt``);
``dataset``, ``epochs`` and ``lr`` default to None, meaning ``METHOD_DEFAULTS``
of ``method`` (``--method dpo`` follows the book's DPO run), filled in at creation.
A run saves its config in run.json's "training" (``to_dict``); ``--resume``
reads it back (``from_dict``). Every bad value is a one-line ``ValueError``
that names the command-line option.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from gpt2_scratch.config import from_known_fields
from gpt2_scratch.data.preferences import DEFAULT_PREFERENCE_URL
from gpt2_scratch.data.records import DEFAULT_DATASET_URL
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from gpt2_scratch.runs import DEFAULT_RUNS_DIR
from gpt2_scratch.train.distributed import PRECISIONS

SCHEDULES = ("constant", "cosine")
# What --resume may change: how the run is executed, not what it computes.
RESUME_OVERRIDES = ("resume", "device", "precision", "compile")
METHODS = ("sft", "dpo")
DPO_LOGPS = ("sum", "mean")
# The defaults that depend on --method: the LLMs-from-scratch runs (ch07 SFT; ch07/04 DPO: lr 5e-6, 1 epoch).
METHOD_DEFAULTS = {
    "sft": {"dataset": DEFAULT_DATASET_URL, "epochs": 2, "lr": 5e-5},
    "dpo": {"dataset": DEFAULT_PREFERENCE_URL, "epochs": 1, "lr": 5e-6},
}


@dataclass
class TrainConfig:
    """Everything that defines a finetuning run: the options of ``finetune.py``, one to one."""

    base: str = "gpt2"  # model string for checkpoint.load_model: Hub id, short name, folder, random:<preset>
    # URL, local .json/.jsonl file or Hub dataset id; None: the method's default (METHOD_DEFAULTS)
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "dataset: URL, local .json/.jsonl file or Hugging Face dataset id; default: the book's "
            "instruction data (sft) or its preference data (dpo, records with chosen/rejected)",
            "group": "model and data",
        },
    )
    out_dir: str = str(DEFAULT_RUNS_DIR)
    name: str | None = None  # run folder name; default: the start time, e.g. 20250101-120000 (-2, -3, ... if taken)
    prompt_style: str = DEFAULT_PROMPT_STYLE
    limit: int | None = None  # use only the first N records (before splitting), for quick runs
    shuffle_split: bool = False  # the reference splits in file order
    epochs: int | None = field(
        default=None,
        metadata={"help": "passes over the training split; default: 2 (sft), 1 (dpo)", "group": "optimization"},
    )
    max_steps: int | None = None  # stop after this many optimizer steps (and finish the run normally)
    lr: float | None = field(
        default=None,
        metadata={"help": "peak learning rate (AdamW); default: 5e-5 (sft), 5e-6 (dpo)", "group": "optimization"},
    )
    weight_decay: float = 0.1  # applied to matrices and embeddings only, not to biases and LayerNorms
    batch_size: int = 8  # examples per optimizer step, over all processes and accumulation micro-steps
    grad_accum: int = 1  # micro-batches per step (batch_size / grad_accum examples each): saves memory
    max_length: int = 1024  # tokens per example, longer ones are cut (capped at the model's context)
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping (the reference does not clip)
    mask_prompt: bool = True  # learn only the responses (False: prompts too, as the reference run)
    group_by_length: bool = True
    seed: int = 123
    eval_every: int = 5  # steps between train/validation loss evaluations
    eval_batches: int = 5  # batches of each split per evaluation (the reference's eval_iter)
    sample_tokens: int = 50  # max new tokens of the baseline and per-epoch sample responses (greedy)
    save_every: int = 100  # steps between resume states; 0 = never
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    device: str = "auto"
    resume: str | None = None  # run folder to continue; its run.json supplies the other settings
    # DPO options (gpt2_scratch/train/dpo.py)
    method: str = field(
        default="sft",
        metadata={
            "help": "sft: instruction finetuning; dpo: preference tuning of --base (the SFT model, also the "
            "frozen reference, whose log-probabilities are computed once before training)",
            "group": "DPO",
            "choices": METHODS,
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "DPO's beta: how far the policy may move from the reference (dpo only)", "group": "DPO"},
    )
    dpo_logps: str = field(
        default="sum",
        metadata={
            "help": "a response's log-probability: the sum over its tokens (as the DPO paper and TRL), or their "
            "mean (as the LLMs-from-scratch book). Logged rewards are beta * (log pi - log pi_ref), beta included",
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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{_option(name)} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "save_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{_option(name)} must be a non-negative integer, got {value!r}")
        for name in ("limit", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{_option(name)} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{_option(name)} must be a non-negative number, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size ({self.batch_size}) must be divisible by --grad-accum ({self.grad_accum})")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        for name, choices in (
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("prompt_style", tuple(PROMPT_STYLES)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{_option(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.name is not None and (
            not self.name or self.name in (".", "..") or "/" in self.name or os.sep in self.name
        ):
            raise ValueError(f"--name must be a plain folder name, got {self.name!r}")

    def _check_dpo(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"--beta must be a positive number, got {self.beta!r}")
        if self.dpo_logps not in DPO_LOGPS:
            raise ValueError(f"--dpo-logps must be one of {', '.join(DPO_LOGPS)}, got {self.dpo_logps!r}")
        if self.method == "dpo" and not self.mask_prompt:
            raise ValueError("--no-mask-prompt is for --method sft: DPO scores the responses only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. run.json's "training"), rejecting unknown keys."""
        return from_known_fields(cls, d, "training option(s)")


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")

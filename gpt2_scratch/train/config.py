"""The options of a finetuning run: ``TrainConfig``, one field per option of ``finetune.py``.

The defaults are those of the LLMs-from-scratch reference run (ch07), except
``mask_prompt`` (the reference learns the prompts too; ``--no-mask-prompt``).
A run saves its config in run.json's "training" (``to_dict``); ``--resume``
reads it back (``from_dict``). Every bad value is a one-line ``ValueError``
that names the command-line option. ``lora_rank`` > 0 trains LoRA adapters
(``lora.py``) instead of every weight.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from gpt2_scratch import lora
from gpt2_scratch.config import from_known_fields
from gpt2_scratch.data.records import DEFAULT_DATASET_URL
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from gpt2_scratch.runs import DEFAULT_RUNS_DIR
from gpt2_scratch.train.distributed import PRECISIONS

SCHEDULES = ("constant", "cosine")
# What --resume may change: how the run is executed, not what it computes (finetune.py and train/loop.py).
RESUME_OVERRIDES = ("resume", "device", "precision", "compile")


@dataclass
class TrainConfig:
    """Everything that defines a finetuning run: the options of ``finetune.py``, one to one."""

    base: str = "gpt2"  # model string for checkpoint.load_model: Hub id, short name, folder, random:<preset>
    dataset: str = DEFAULT_DATASET_URL  # URL, local .json/.jsonl file or Hub dataset id
    out_dir: str = str(DEFAULT_RUNS_DIR)
    name: str | None = None  # run folder name; default: the start time, e.g. 20250101-120000 (-2, -3, ... if taken)
    prompt_style: str = DEFAULT_PROMPT_STYLE
    limit: int | None = None  # use only the first N records (before splitting), for quick runs
    shuffle_split: bool = False  # the reference splits in file order
    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (and finish the run normally)
    lr: float = 5e-5
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
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train LoRA adapters of this rank on a frozen base instead of every weight "
            "(0: full finetuning); final/ then holds the adapter only",
            "group": "LoRA",
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "LoRA alpha: the adapter's update is scaled by alpha / rank; default 2 x rank",
            "group": "LoRA",
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
            "choices": lora.TARGETS,
        },
    )

    def __post_init__(self) -> None:
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
                    raise ValueError(f"{_option(name)} needs --lora-rank (a positive rank); without it nothing uses it")
            return
        self.lora_config()  # one-line errors naming the option

    def lora_config(self) -> lora.LoRAConfig | None:
        """The adapters' config, or None for a full finetune."""
        if not self.lora_rank:
            return None
        return lora.LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. run.json's "training"), rejecting unknown keys."""
        return from_known_fields(cls, d, "training option(s)")


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")

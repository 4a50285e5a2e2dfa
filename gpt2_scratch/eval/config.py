"""The options of ``evaluate.py``: ``EvalConfig``, one field per option, resolved into ``EvalSettings``.

    config = EvalConfig(run="runs/my-run", limit=20)
    run, settings = config.resolve()      # the run folder and evaluation.EvalSettings

Each field's metadata (help, group, choices) is its option: evaluate.py's
parser is generated from it (``gpt2_scratch.options``). The sampling options are
SamplingSettings' own fields (``options.include_fields``); the judge's defaults are
JudgeConfig's. Values out of range are one-line ``ValueError``s naming the option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt2_scratch.devices import resolve_device
from gpt2_scratch.eval.evaluation import EvalSettings
from gpt2_scratch.eval.judge import JUDGE_API_KEY_ENV, JudgeConfig
from gpt2_scratch.eval.summary import MODEL_NAMES
from gpt2_scratch.generate.batched import DEFAULT_BATCH_SIZE
from gpt2_scratch.generate.settings import SamplingSettings
from gpt2_scratch.hub import check_local_model
from gpt2_scratch.inference import DTYPES
from gpt2_scratch.kernels import KERNEL_DEFAULT_TEXT, KERNEL_HELP
from gpt2_scratch.options import check_range, check_ranges, include_fields, included
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, RunPaths, latest_run

WHAT = "what to evaluate"
GENERATION = "generation (greedy by default)"
JUDGE = "LLM judge (off unless --judge-url is given)"
# A dataclass keeps a field's plain default as a class attribute: JudgeConfig.seed is its default.
_J = JudgeConfig


@dataclass
@include_fields(SamplingSettings, group=GENERATION, after="limit")  # --max-new-tokens ... --repetition-penalty
class EvalConfig:
    """Everything ``evaluate.py`` is told: its options, one to one."""

    run: str | None = field(
        default=None,
        metadata={
            "help": "run folder to evaluate",
            "group": WHAT,
            "metavar": "RUN_FOLDER",
            "default_text": f"the newest run under {DEFAULT_RUNS_DIR}/ with a final checkpoint",
        },
    )
    base: str | None = field(
        default=None,
        metadata={
            "help": "the base model to compare with (and a LoRA run's base), instead of the one the run records: "
            "a Hub id, a local path (e.g. after moving it), random:<preset>",
            "group": WHAT,
            "metavar": "MODEL",
            "default_text": "the run's own, from run.json",
        },
    )
    models: str = field(
        default="both",
        metadata={
            "help": "which models to evaluate: the run's base model, its finetuned checkpoint, or both",
            "group": WHAT,
            "choices": (*MODEL_NAMES, "both"),
        },
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "evaluate only the first N test records",
            "group": WHAT,
            "metavar": "N",
            "default_text": "all",
        },
    )
    batch_size: int = field(
        default=DEFAULT_BATCH_SIZE,
        metadata={"help": "prompts generated together (the default is the fastest on CPU)", "group": GENERATION},
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "torch device: cpu, cuda, cuda:N",
            "group": GENERATION,
            "default_text": "cuda if available, else cpu",
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "inference format: float32 (exact), bfloat16, int8 or int4 (weight-only, opt-in), or auto "
            "(bfloat16 on CUDA and on CPUs with native bfloat16, else float32); the results record it",
            "group": GENERATION,
            "choices": DTYPES,
        },
    )
    kernel: str | None = field(
        default=None,
        metadata={
            "help": KERNEL_HELP,
            "group": GENERATION,
            "default_text": KERNEL_DEFAULT_TEXT,
        },
    )
    refill: bool = field(
        default=False,
        metadata={
            "help": "one engine whose rows refill as others finish (generate.engine.Engine) instead of fixed "
            "batches: faster when many answers end early (1.19x measured), slower when all run to the limit (0.75x)",
            "group": GENERATION,
        },
    )
    restart: bool = field(
        default=False,
        metadata={
            "help": "delete saved partial results in eval/ and start over (needed after changing settings)",
            "group": GENERATION,
        },
    )
    replace: bool = field(
        default=False,
        metadata={
            "help": "replace a finished evaluation in eval/ made with other settings (without it, that is refused)",
            "group": GENERATION,
        },
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars", "group": GENERATION})
    judge_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible API base, e.g. http://localhost:11434/v1 (Ollama); "
            "requests go to {url}/chat/completions",
            "group": JUDGE,
            "metavar": "URL",
            "default_text": "no judge",
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "judge model name, e.g. llama3 (required with --judge-url)",
            "group": JUDGE,
            "metavar": "NAME",
            "default_text": "none",
        },
    )
    judge_api_key: str | None = field(
        default=None,
        metadata={
            "help": "bearer token for the judge",
            "group": JUDGE,
            "metavar": "KEY",
            "default_text": f"${JUDGE_API_KEY_ENV} if set",
        },
    )
    judge_seed: int = field(
        default=_J.seed,
        metadata={"help": "seed sent with every judge request (temperature is always 0)", "group": JUDGE},
    )
    judge_timeout: float = field(
        default=_J.timeout, metadata={"help": "seconds per judge request", "group": JUDGE, "metavar": "SECONDS"}
    )
    judge_retries: int = field(
        default=_J.retries,
        metadata={
            "help": "extra attempts after a server error or timeout, with exponential backoff",
            "group": JUDGE,
            "metavar": "N",
        },
    )

    def __post_init__(self) -> None:
        """Range errors name the option as typed, worded as finetune.py's (``options.check_range``)."""
        check_ranges(self)  # the sampling options
        check_range("--batch-size", self.batch_size, "positive integer")
        check_range("--limit", self.limit, "positive integer", none_ok=True)
        check_range("--judge-timeout", self.judge_timeout, "positive number")
        check_range("--judge-retries", self.judge_retries, "non-negative integer")

    def resolve(self) -> tuple[RunPaths, EvalSettings]:
        """The run folder and the settings these options name; bad values raise one-line ValueErrors."""
        if self.base is not None:
            check_local_model(self.base, "--base")  # a missing path: now, not after loading the run's model
        if self.run is not None:
            if not Path(self.run).is_dir():
                raise ValueError(f"--run {self.run}: no such run folder")
            run = RunPaths(Path(self.run))
        else:
            run = latest_run(DEFAULT_RUNS_DIR)
        settings = EvalSettings(
            models=MODEL_NAMES if self.models == "both" else (self.models,),
            sampling=included(SamplingSettings, self),
            batch_size=self.batch_size,
            limit=self.limit,
            device=str(resolve_device(self.device or "auto")),
            dtype=self.dtype,
            kernel=self.kernel,
            refill=self.refill,
            judge=self.judge(),
            base=self.base,
            restart=self.restart,
            replace=self.replace,
            progress=self.progress,
        )
        return run, settings

    def judge(self) -> JudgeConfig | None:
        """The judge's settings, None without --judge-url; --judge-url and --judge-model go together."""
        if self.judge_model and not self.judge_url:
            raise ValueError("--judge-model needs --judge-url")
        if not self.judge_url:
            return None
        if not self.judge_model:
            raise ValueError("--judge-url needs --judge-model (the model name the server knows, e.g. llama3)")
        return JudgeConfig(
            url=self.judge_url,
            model=self.judge_model,
            api_key=self.judge_api_key or os.environ.get(JUDGE_API_KEY_ENV),
            seed=self.judge_seed,
            timeout=self.judge_timeout,
            retries=self.judge_retries,
        )

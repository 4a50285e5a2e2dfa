"""The options of ``make_preferences.py``: ``PreferencesConfig``, one field per option (its parser is generated
from them).

    config = PreferencesConfig(**vars(make_preferences.build_parser().parse_args()))   # ranges checked here

The generation options are SamplingSettings' fields (``options.include_fields``; the script gets them back
with ``options.included``); --out and --model are checked by the script,
before any answer is generated (``generate.preferences.build_preferences`` does the work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpt2_scratch.data.records import DEFAULT_DATASET_URL
from gpt2_scratch.generate.batched import DEFAULT_BATCH_SIZE
from gpt2_scratch.generate.settings import SamplingSettings
from gpt2_scratch.inference import DTYPES
from gpt2_scratch.options import check_range, check_ranges, include_fields
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES

WHAT = "what to build"
GENERATION = "generation (greedy by default)"


@dataclass
@include_fields(SamplingSettings, group=GENERATION, after="prompt_style")  # --max-new-tokens ... --repetition-penalty
class PreferencesConfig:
    """Everything ``make_preferences.py`` is told: its options, one to one."""

    model: str = field(
        metadata={
            "help": "the model that answers: a run folder, a checkpoint, any model string",
            "group": WHAT,
            "metavar": "MODEL",
        }
    )
    out: Path = field(
        metadata={"help": "the preference file to write (.json or .jsonl)", "group": WHAT, "metavar": "OUT"}
    )
    dataset: str = field(
        default=DEFAULT_DATASET_URL,
        metadata={
            "help": "instruction data: URL, .json/.jsonl file, Hub id",
            "group": WHAT,
            "default_text": "the book's instruction data",
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "only the first N records", "group": WHAT, "metavar": "N", "default_text": "all"},
    )
    prompt_style: str | None = field(
        default=None,
        metadata={
            "help": "prompt template",
            "group": WHAT,
            "choices": tuple(PROMPT_STYLES),
            "default_text": f"the model's own, else {DEFAULT_PROMPT_STYLE}",
        },
    )
    batch_size: int = field(
        default=DEFAULT_BATCH_SIZE, metadata={"help": "prompts generated together", "group": GENERATION}
    )
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda, cuda:N", "group": GENERATION}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "inference format of the model", "group": GENERATION, "choices": DTYPES},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar", "group": GENERATION})
    restart: bool = field(
        default=False,
        metadata={
            "help": "discard the answers an interrupted build kept (<out>.progress.jsonl) and start over "
            "(needed after changing settings)",
            "group": GENERATION,
        },
    )
    replace: bool = field(
        default=False,
        metadata={"help": "replace --out if it exists (without it, that is refused)", "group": GENERATION},
    )

    def __post_init__(self) -> None:
        """Range errors name the option as typed, worded as evaluate.py's (``options.check_range``)."""
        check_range("--limit", self.limit, "positive integer", none_ok=True)
        check_range("--batch-size", self.batch_size, "positive integer")
        check_ranges(self)  # the sampling options

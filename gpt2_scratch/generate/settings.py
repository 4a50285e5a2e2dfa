"""How the next token is chosen: ``SamplingSettings``, the one home of the generation options.

Each field's metadata is its option in evaluate.py and make_preferences.py (``options.include_fields``:
help, metavar, range...), its control and API parameter in the app (``CONTROL``: a ``Control``, read by
``demo.inputs``), and ``record`` is how progress files and summary.json record it. A new option is a
field here plus its use in the samplers (``sampling``; ``engine.Engine`` when it acts per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from gpt2_scratch.options import DEFAULT_TEXT, HELP, METAVAR, RANGE

# What a SamplingSettings field's metadata holds besides its option's (options.HELP, RANGE...): the app's
# control (a ``Control``), and whether the field came after files recorded settings (see ``record``).
CONTROL, ADDED_LATER = "control", "added_later"


@dataclass(frozen=True)
class Control:
    """How the app shows a sampling setting and reads its value back (``demo.inputs``): a slider from ``low``
    to ``high`` by ``step`` (a number box when ``box``), starting at ``value`` (None: the field's default).

    ``off``: the value that means None (top-k 0); a field whose default is None without one reads a blank as
    None (the seed). A value from ``low`` that the field's range refuses is left out of the slider (top-p 0).
    The label's part before " (" names the setting in messages ("top-k").
    """

    label: str
    low: float
    high: float
    step: float = 1
    value: float | None = None
    off: float | None = None
    box: bool = False


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen. ``temperature == 0`` is greedy decoding.

    ``repetition_penalty`` (transformers' and llama.cpp's): the logits of the tokens already in the prompt or
    the answer are divided by it when positive, multiplied by it when negative, before any other rule; 1 is off.

    Each field's metadata is its option, its control in the app and its record (see the module docstring).
    """

    max_new_tokens: int = field(
        default=256,
        metadata={
            HELP: "most new tokens per answer",
            METAVAR: "TOKENS",
            RANGE: "positive integer",
            CONTROL: Control("Max new tokens", 1, 512, value=128),  # the app also keeps it below the context
        },
    )
    temperature: float = field(
        default=0.0,
        metadata={
            HELP: "sampling temperature; 0 = greedy",
            RANGE: "non-negative number",
            CONTROL: Control("Temperature (0 = greedy)", 0.0, 2.0, step=0.05),
        },
    )
    top_k: int | None = field(
        default=None,
        metadata={
            HELP: "sample among the k most likely tokens",
            METAVAR: "K",
            DEFAULT_TEXT: "off",
            RANGE: "positive integer",
            CONTROL: Control("Top-k (0 = off)", 0, 50257, off=0),  # up to the vocabulary
        },
    )
    top_p: float | None = field(
        default=None,
        metadata={
            HELP: "nucleus sampling: among the smallest set of tokens with probability >= p",
            METAVAR: "P",
            DEFAULT_TEXT: "off",
            RANGE: "number in (0, 1]",
            CONTROL: Control("Top-p (1 = off)", 0.0, 1.0, step=0.01, off=1.0),
        },
    )
    seed: int | None = field(
        default=None,
        metadata={
            HELP: "sampling seed (each batch restarts from it)",
            DEFAULT_TEXT: "none, torch's global generator",
            # A fixed default in the app: sampled answers are reproducible until the user changes it.
            CONTROL: Control("Seed (used when sampling)", 0, 2**32 - 1, value=123, box=True),
        },
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            HELP: "divide the logits of tokens already in the prompt or answer by this (multiply negative ones); "
            "1 = off",
            METAVAR: "PENALTY",
            RANGE: "positive number",
            CONTROL: Control("Repetition penalty (1 = off)", 0.5, 2.0, step=0.05),
            ADDED_LATER: True,
        },
    )

    def record(self) -> dict:
        """The settings as progress headers and summary.json record (and compare) them: every field, but one
        marked ``ADDED_LATER`` only when not at its default, so files written before it existed still match."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get(ADDED_LATER) and getattr(self, f.name) == f.default)
        }

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        penalty = self.repetition_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0 < penalty < math.inf:
            raise ValueError(f"repetition_penalty must be a number > 0 (1 = off), got {penalty!r}")

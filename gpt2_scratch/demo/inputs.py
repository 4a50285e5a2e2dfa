"""Checks of what users type or send through the API: text, generation settings, score bounds, run names.

The generation settings are SamplingSettings' fields (``SETTINGS``: each one's control, from its metadata);
``parse_settings`` reads the controls' values back into a SamplingSettings.

Every check raises ``UserError`` with a one-line message that says what was
expected; the handlers show it in the tab's status line and as a toast.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import unicodedata
from dataclasses import dataclass
from typing import Any

from gpt2_scratch.eval.metrics import record_metric
from gpt2_scratch.generate.settings import CONTROL, Control, SamplingSettings
from gpt2_scratch.options import RANGE, RANGES, strip_none

# Longer text is refused before tokenizing: the model would only see its last ~4,000 characters anyway.
MAX_PROMPT_CHARS = 20_000


class UserError(ValueError):
    """Bad input or a missing piece: its message is shown to the user as is."""


def clean_text(text: Any, what: str) -> tuple[str, int]:
    """(text without control characters, how many were removed); newlines and tabs stay.

    Control characters are invisible in the textbox but reach the tokenizer; lone
    surrogates (possible through the API) cannot be encoded at all.
    """
    if text is None:
        return "", 0
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"{what} is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    return kept, len(text) - len(kept)


def blank(value: Any) -> bool:
    """True for a value that means "not set": None or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"  # 4294967295, not 4.29497e+09


def parse_number(name: str, value: Any, lo: float, hi: float, *, integer: bool, hint: str = "") -> float | int:
    """``value`` as an int/float within [lo, hi], or a UserError that says what was expected."""
    kind = "a whole number" if integer else "a number"
    within = f"from {_plain(lo)} to {_plain(hi)}" if math.isfinite(hi) else f"of at least {_plain(lo)}"
    expected = f"{name} must be {kind} {within}{hint}, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise UserError(expected)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise UserError(expected) from None
    if not math.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        raise UserError(expected)
    return int(number) if integer else number


@dataclass(frozen=True)
class Setting:
    """A SamplingSettings field as the app shows and reads it: the field, its ``sampling.Control``, the
    message name ("top-k": the label up to " ("), whole numbers only or not (the field's type)."""

    field: dataclasses.Field
    control: Control
    name: str
    integer: bool

    def bounds(self, block_size: int) -> tuple[float, float, str]:
        """(low, high, hint for messages): max new tokens also stays below the model's context."""
        c = self.control
        if self.field.name == "max_new_tokens":
            return c.low, min(c.high, block_size - 1), f" (the context is {block_size} tokens)"
        return c.low, c.high, ""

    @property
    def start(self) -> float:
        """The control's starting value: its own, else the field's default (None: the control's "off")."""
        c, default = self.control, self.field.default
        return c.value if c.value is not None else c.off if default is None and c.off is not None else default

    @property
    def slider_low(self) -> float:
        """The slider's lowest value: ``low``, unless the field refuses it (top-p 0): then one step above."""
        c, kind = self.control, self.field.metadata.get(RANGE)
        return c.low if c.low == c.off or kind is None or RANGES[kind](c.low) else c.low + c.step

    def parse(self, value: Any, block_size: int) -> float | int | None:
        """``value`` as the UI or the API sends it -> the field's value, or a UserError saying what was expected."""
        c = self.control
        if c.off is None and self.field.default is None and blank(value):
            return None
        low, high, hint = self.bounds(block_size)
        number = parse_number(self.name, value, low, high, integer=self.integer, hint=hint)
        if c.off is not None and number == c.off:
            return None
        kind = self.field.metadata.get(RANGE)
        if kind is not None and not RANGES[kind](number):  # a low end the field refuses (top-p 0)
            off = f" ({_plain(c.off)} turns it off)" if c.off is not None else ""
            raise UserError(f"{self.name} must be greater than {_plain(low)}{off}, got {value!r}")
        return number


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(SamplingSettings)
    out = []
    for f in dataclasses.fields(SamplingSettings):
        control = f.metadata.get(CONTROL)
        if control is None:
            raise TypeError(f"SamplingSettings.{f.name} needs a {CONTROL!r} in its metadata (the app's control)")
        name = control.label.split(" (")[0].lower()
        out.append(Setting(f, control, name, integer=strip_none(hints[f.name]) is int))
    return tuple(out)


# The app's generation controls and its API's parameters, in SamplingSettings' field order.
SETTINGS = _settings()
MAX_TOP_K = next(s.control.high for s in SETTINGS if s.field.name == "top_k")  # the vocabulary: 50257


def parse_settings(*values: Any, block_size: int) -> SamplingSettings:
    """Generation settings from UI/API values, one per ``SETTINGS`` in order: a control's "off" (top-k 0,
    top-p 1) and a blank seed mean None; values not sent (an older caller's) are the controls' starting ones."""
    if len(values) > len(SETTINGS):
        names = ", ".join(s.name for s in SETTINGS)
        raise UserError(f"expected at most {len(SETTINGS)} generation settings ({names}), got {len(values)}")
    values = values + tuple(s.start for s in SETTINGS[len(values) :])
    return SamplingSettings(**{s.field.name: s.parse(v, block_size) for s, v in zip(SETTINGS, values)})


def parse_score_bounds(metric: str, min_score: Any, max_score: Any) -> tuple[float | None, float | None]:
    """(low, high) bounds of the per-record score ``metric`` (a ``metrics.record_metrics`` key); blank: no bound.

    The bounds must lie in the score's own range: 0 to 1 for ROUGE-L, 0 to 100
    for the judge, at least 0 for a response length.
    """
    try:
        m = record_metric(metric)
    except ValueError as e:
        raise UserError(str(e)) from None
    lo_limit, hi_limit = m.range or (0.0, math.inf)
    hint = f" for {m.label}"
    lo = (
        None if blank(min_score) else parse_number("min score", min_score, lo_limit, hi_limit, integer=False, hint=hint)
    )
    hi = (
        None if blank(max_score) else parse_number("max score", max_score, lo_limit, hi_limit, integer=False, hint=hint)
    )
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"min score ({lo:g}) is above max score ({hi:g})")
    return lo, hi


def parse_runs(value: Any, offered: list[str], limit: int) -> tuple[str, ...]:
    """The run names chosen in the picker (or sent through the API): each one offered, at most ``limit``."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"the runs must be a list of run names, got {value!r}")
    for name in names:
        if name not in offered:
            raise UserError(f"unknown run {name!r}; choose from: {', '.join(offered) or 'none (no runs found)'}")
    names = tuple(dict.fromkeys(names))
    if len(names) > limit:
        raise UserError(f"choose at most {limit} runs at once, got {len(names)}")
    return names

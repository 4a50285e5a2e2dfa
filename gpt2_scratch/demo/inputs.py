"""Checks of what users type or send through the API: text, generation settings, score bounds, run names.

Every check raises ``UserError`` with a one-line message that says what was
expected; the handlers show it in the tab's status line and as a toast.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from gpt2_scratch.eval.metrics import record_metric
from gpt2_scratch.generate.sampling import SamplingSettings

# Bounds of the generation settings; max new tokens is also kept below the model's context.
MAX_NEW_TOKENS = 512
DEFAULT_NEW_TOKENS = 128
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 50257
MAX_SEED = 2**32 - 1
DEFAULT_SEED = 123
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


def parse_settings(
    max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any, *, block_size: int
) -> SamplingSettings:
    """Generation settings from UI/API values: top-k 0 and top-p 1 mean off, a blank seed means random."""
    limit = min(MAX_NEW_TOKENS, block_size - 1)
    n = parse_number(
        "max new tokens", max_new_tokens, 1, limit, integer=True, hint=f" (the context is {block_size} tokens)"
    )
    t = parse_number("temperature", temperature, 0.0, MAX_TEMPERATURE, integer=False)
    k = parse_number("top-k", top_k, 0, MAX_TOP_K, integer=True)
    p = parse_number("top-p", top_p, 0.0, 1.0, integer=False)
    if p == 0:
        raise UserError("top-p must be greater than 0 (1 turns it off), got 0")
    s = None if blank(seed) else parse_number("seed", seed, 0, MAX_SEED, integer=True)
    return SamplingSettings(max_new_tokens=n, temperature=t, top_k=k or None, top_p=None if p == 1 else p, seed=s)


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

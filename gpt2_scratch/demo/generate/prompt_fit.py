"""How a visitor's prompt and max new tokens fit the model's context: ``fit_prompt``.

As in evaluate.py (``sampling.new_token_cap``, one rule for both), the new tokens
are capped so that the prompt fits whole; only a prompt that alone takes half the
context or more is cut, and then from its start: its end, the prompt template's
response header after which the model answers, always stays.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from gpt2_scratch.generate.sampling import SamplingSettings, new_token_cap


def fit_prompt(
    ids: Sequence[int], block_size: int, settings: SamplingSettings
) -> tuple[list[int], SamplingSettings, str | None]:
    """(prompt ids, settings, notice or None) so that the prompt and its new tokens fit ``block_size``."""
    ids = list(ids)
    asked = settings.max_new_tokens
    n_new = min(asked, new_token_cap(block_size, len(ids)))
    if n_new < asked:
        settings = replace(settings, max_new_tokens=n_new)
    cut = max(0, len(ids) - (block_size - n_new))
    if cut:
        notice = (
            f"The prompt is {len(ids)} tokens, half the {block_size}-token context or more: max new tokens is "
            f"{n_new}, and the prompt's first {cut} tokens were dropped (its end, where the answer starts, is kept)."
        )
    elif n_new < asked:
        notice = (
            f"Max new tokens capped at {n_new} so that the whole prompt ({len(ids)} tokens) and the answer fit "
            f"the {block_size}-token context."
        )
    else:
        notice = None
    return ids[cut:], settings, notice

"""Text generation with a KV cache: greedy or sampled, batched, streaming.

Entry points: ``generate`` (new token ids for a batch of prompts) and ``stream`` (text as it
comes), both over one decoding loop, ``generate_steps``. Prompts of different lengths are
left-padded, the padding masked out and positions counted from each row's first real token; a row
that emits ``<|endoftext|>`` leaves the batch and the cache. The per-row pieces
(``make_generator``, ``sample_rows``, ``stream_text``) are shared with ``engine.Engine``, whose
rows join and leave a running batch. Design: docs/design.md.
"""

from __future__ import annotations

import codecs
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def crop_prompt(ids: Sequence[int], block_size: int, max_new_tokens: int) -> tuple[list[int], int]:
    """Keep the last tokens of ``ids`` so that prompt + ``max_new_tokens`` fit the context.

    Returns (kept ids, number of tokens cropped from the left).
    """
    if max_new_tokens >= block_size:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be smaller than the context length ({block_size})")
    keep = block_size - max_new_tokens
    ids = list(ids)
    if not ids:
        raise ValueError("the prompt is empty")
    cropped = max(0, len(ids) - keep)
    return ids[cropped:], cropped


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids ``(B,)`` from last-position logits ``(B, V)``."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= settings.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def make_generator(settings: SamplingSettings, device: torch.device | str) -> torch.Generator | None:
    """The random generator a run with ``settings`` samples with: seeded when a seed is set, else None (torch's global one)."""
    if settings.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(settings.seed)


def sample_rows(
    logits: torch.Tensor, settings: Sequence[SamplingSettings], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Next token ids ``(B,)`` from logits ``(B, V)``, each row with its own settings and generator.

    Row i draws exactly what ``sample_next(logits[i:i+1], settings[i], generators[i])``
    draws, which is what that row draws in a batch of its own: a seeded row gives
    the same tokens whatever shares its batch.
    """
    tokens = logits.argmax(dim=-1)  # greedy rows need nothing more (one argmax for all of them)
    for i, (s, g) in enumerate(zip(settings, generators)):
        if s.temperature != 0:
            tokens[i] = sample_next(logits[i : i + 1], s, g)[0]
    return tokens


@torch.inference_mode()
def generate_steps(
    model: GPT, prompts: Sequence[Sequence[int]], settings: SamplingSettings, eos_id: int | None = EOS_ID
) -> Iterator[tuple[list[int], list[int]]]:
    """Yield, at each step, (row indices still running, their new token ids).

    A row whose new token is ``eos_id`` yields it and then stops. Prompts longer
    than the context allows are cropped from the left with a warning.
    """
    block_size = model.config.block_size
    cropped_prompts = []
    for i, p in enumerate(prompts):
        ids, n_cropped = crop_prompt(p, block_size, settings.max_new_tokens)
        if n_cropped:
            warnings.warn(f"prompt {i} is {len(p)} tokens; kept its last {len(ids)} to fit the context", stacklevel=2)
        cropped_prompts.append(ids)

    device = model.device
    B = len(cropped_prompts)
    lengths = torch.tensor([len(p) for p in cropped_prompts], device=device)
    T = int(lengths.max())
    idx = torch.full((B, T), EOS_ID, dtype=torch.long, device=device)
    for i, p in enumerate(cropped_prompts):
        idx[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)

    cache = model.new_cache(B, T + settings.max_new_tokens)
    padded = bool((lengths < T).any())
    if padded:
        # key_valid covers the whole cache: prompt columns per row, every generated column valid.
        cache.key_valid = torch.ones(B, cache.max_len, dtype=torch.bool, device=device)
        cache.key_valid[:, :T] = torch.arange(T, device=device)[None, :] >= (T - lengths)[:, None]
        positions = (cache.key_valid[:, :T].long().cumsum(1) - 1).clamp(min=0)  # (B, T)
    else:
        positions = None
    mask = cache.key_valid[:, :T] if padded else None
    logits = model(idx, cache=cache, position_ids=positions, attention_mask=mask, last_only=True)

    generator = make_generator(settings, device)
    rows = torch.arange(B, device=device)  # original index of each running row
    next_pos = lengths.clone()  # position of the token each row feeds next
    for step in range(settings.max_new_tokens):
        tokens = sample_next(logits[:, -1, :], settings, generator)  # (b,)
        yield rows.tolist(), tokens.tolist()
        if step == settings.max_new_tokens - 1:
            break
        if eos_id is not None:
            running = tokens != eos_id
            if not bool(running.all()):
                keep = running.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
                cache.keep_rows(keep)
        mask = cache.key_valid[:, : cache.length + 1] if cache.key_valid is not None else None
        logits = model(
            tokens[:, None], cache=cache, position_ids=next_pos[:, None], attention_mask=mask, last_only=True
        )
        next_pos += 1


def generate(
    model: GPT, prompts: Sequence[Sequence[int]], settings: SamplingSettings, eos_id: int | None = EOS_ID
) -> list[list[int]]:
    """New token ids for each prompt (without the prompt, without the final ``<|endoftext|>``)."""
    out: list[list[int]] = [[] for _ in prompts]
    for rows, tokens in generate_steps(model, prompts, settings, eos_id):
        for r, t in zip(rows, tokens):
            if t != eos_id:
                out[r].append(t)
    return out


def stream_text(tokens: Iterable[int]) -> Iterator[tuple[list[int], str]]:
    """Yield (token ids so far, their text so far) after every token of ``tokens``.

    The text is decoded incrementally from bytes, so a multi-byte character split
    over several tokens appears only once it is complete.
    """
    enc = get_tokenizer()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ids: list[int] = []
    text = ""
    for token in tokens:
        ids.append(token)
        text += utf8.decode(enc.decode_single_token_bytes(token))
        yield list(ids), text
    tail = utf8.decode(b"", final=True)  # a character left incomplete at the end
    if tail:
        yield list(ids), text + tail


def stream(
    model: GPT, prompt: Sequence[int], settings: SamplingSettings, eos_id: int | None = EOS_ID
) -> Iterator[tuple[list[int], str]]:
    """Yield (new token ids so far, their text so far) after every token of one prompt (see ``stream_text``)."""

    def tokens() -> Iterator[int]:
        for _, (token,) in generate_steps(model, [prompt], settings, eos_id):
            if token == eos_id:
                return
            yield token

    yield from stream_text(tokens())

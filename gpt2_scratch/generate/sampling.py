"""Text generation with a KV cache: greedy or sampled, batched, streaming.

Entry points: ``generate`` (new token ids for a batch of prompts) and ``stream`` (text as it
comes), both over one decoding loop, ``generate_steps``. Prompts of different lengths are
left-padded, the padding masked out and positions counted from each row's first real token; a row
whose new tokens end with a stop sequence (``stop_ids``: a prompt style's ``stop_ids()``, by default
``<|endoftext|>``) leaves the batch and the cache. Two samplers draw the same tokens: ``sample``, the
plain one (one row), and ``sample_rows``, exact and fast for a batch whose rows have their own
settings and generators. The per-row pieces (``make_generator``, ``penalize_repeats``,
``sample_rows``, ``stream_text``) are shared with ``engine.Engine``, whose rows join and leave a
running batch. The settings are ``settings.SamplingSettings``. Invariant: a row's tokens depend on its
prompt, settings and generator only, not on the batch. Design: docs/design.md.
"""

from __future__ import annotations

import codecs
import itertools
import warnings
from typing import Iterable, Iterator, Sequence

import torch

from gpt2_scratch.generate.settings import SamplingSettings
from gpt2_scratch.generate.stops import StopFilter, StopIds, StopSequences
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer


def new_token_cap(block_size: int, prompt_len: int) -> int:
    """The most new tokens to generate after a prompt of ``prompt_len`` tokens (evaluate.py's and the app's rule).

    The rest of the context while the prompt takes less than half of it (the prompt
    fits whole); else half the context, and the prompt is cropped to the other half.
    """
    return block_size - prompt_len if prompt_len < block_size // 2 else block_size // 2


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


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Each row's largest logit's token id ``(B,)`` from logits ``(B, V)``, the first one on ties (``argmax``).

    On CPU through numpy: torch's ``argmax`` over GPT-2's 50,257 float32 logits takes 120-140 us
    there, numpy's 6-7 (docs/performance.md), on every greedy token."""
    if logits.is_cpu and logits.dtype == torch.float32:
        return torch.from_numpy(logits.detach().numpy().argmax(axis=-1)).long()
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids ``(B,)`` from logits ``(B, V)``: the sampler written plainly (``generate`` uses it for one row).

    Temperature scales the logits; top-k keeps the k largest (and those tied with the k-th); top-p keeps
    the most likely tokens until the ones above reach ``top_p`` (the first always stays); then softmax and
    ``torch.multinomial``. ``sample_rows`` draws the same tokens from the same generators, faster.
    """
    if settings.temperature == 0:
        return greedy(logits)
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # ties: by token id
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= settings.top_p  # the tokens ranked above already reach top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """``logits`` ``(B, V)`` in float32, those of the ``seen`` tokens (bool ``(B, V)``) divided by ``penalty``
    when positive and multiplied when negative (transformers' ``RepetitionPenaltyLogitsProcessor``).

    ``penalty``: a number, or ``(B, 1)`` per row. Element by element: a row's result is its own in any batch.
    """
    logits = logits.float()
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids ``(B,)`` from last-position logits ``(B, V)``, every row with ``settings`` and ``generator``.

    The rows draw from ``generator`` one after the other, as ``torch.multinomial``
    of the whole batch does (see ``sample_rows``).
    """
    if settings.temperature == 0:
        return greedy(logits)
    B = logits.shape[0]
    return sample_rows(logits, [settings] * B, [generator] * B)


def make_generator(settings: SamplingSettings, device: torch.device | str) -> torch.Generator | None:
    """The random generator a run with ``settings`` samples with: seeded when a seed is set, else None (torch's global one)."""
    if settings.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(settings.seed)


# Candidates first taken for a top-p row without top-k; multiplied by 8 until its nucleus fits.
TOP_P_CANDIDATES = 256
_MANTISSA = (1 << 53) - 1  # the bits of a random 64-bit integer that make a double in [0, 1)


def sample_rows(
    logits: torch.Tensor, settings: Sequence[SamplingSettings], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Next token ids ``(B,)`` from logits ``(B, V)``, each row with its own settings and generator.

    Each sampled row draws the token that temperature, top-k (ties with the k-th
    kept), top-p, softmax and ``torch.multinomial`` over all ``V`` logits draw
    from the same generator, but only the top-k survivors are sorted and
    normalised: ``multinomial`` picks ``argmax(p / E)`` with one ``E ~ Exp(1)``
    per token, and here the same random numbers are drawn (``_random_bits``) and
    turned into ``E`` for the survivors only. The settings are per-row tensors,
    so one call does every row; only the random draws go row by row (each row
    has its own generator). A row's result depends on its logits and its
    generator alone, bit for bit: a seeded row gets its solo tokens in any batch.
    """
    B = logits.shape[0]
    sampled = [i for i, s in enumerate(settings) if s.temperature != 0]
    if not sampled:
        return greedy(logits)
    bits = _random_bits(len(sampled), logits.shape[-1], [generators[i] for i in sampled], logits.device)
    picked = _draw(_rows(logits, sampled, B).float(), [settings[i] for i in sampled], bits)
    if len(sampled) == B:
        return picked
    tokens = greedy(logits)  # the greedy rows' tokens
    tokens[sampled] = picked
    return tokens


def _rows(t: torch.Tensor, rows: list[int], n: int) -> torch.Tensor:
    """``t[rows]``, without a copy when ``rows`` is all ``n`` rows in order."""
    return t if len(rows) == n else t[rows]


def _random_bits(
    n: int, vocab: int, generators: Sequence[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    """``(n, vocab)`` random 64-bit integers, row i from ``generators[i]`` (None: torch's global generator).

    ``torch.multinomial`` makes its ``E ~ Exp(1)`` from one random 64-bit number
    per token of a row; drawing the same numbers leaves each generator where
    ``multinomial`` would. Consecutive rows with the same generator draw in one
    call (the same numbers as row by row).
    """
    bits = torch.empty(n, vocab, dtype=torch.int64, device=device)
    start = 0
    for _, group in itertools.groupby(generators, key=id):
        size = len(list(group))
        bits[start : start + size].random_(generator=generators[start])
        start += size
    return bits


def _exponentials(bits: torch.Tensor) -> torch.Tensor:
    """``E ~ Exp(1)`` in float32 from random 64-bit integers, as torch's ``exponential_`` makes them."""
    uniform = (bits & _MANTISSA).double() * 2.0**-53
    return (-torch.log1p(-uniform)).float()


def _draw(logits: torch.Tensor, settings: Sequence[SamplingSettings], bits: torch.Tensor) -> torch.Tensor:
    """Token ids ``(n,)`` from float32 logits ``(n, V)``, each row with its temperature and filters."""
    n, V = logits.shape
    temperature = torch.tensor([[s.temperature] for s in settings], device=logits.device)  # (n, 1)
    top_k = [s.top_k if s.top_k is not None and s.top_k < V else None for s in settings]
    top_p = [s.top_p if s.top_p is not None and s.top_p < 1.0 else None for s in settings]
    cut = [i for i in range(n) if top_k[i] is not None or top_p[i] is not None]
    whole = [i for i in range(n) if top_k[i] is None and top_p[i] is None]
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    if whole:  # no filter: every token is a candidate, as in multinomial itself
        probs = torch.softmax(_rows(logits, whole, n) / _rows(temperature, whole, n), dim=-1)
        tokens[whole] = greedy(probs / _exponentials(_rows(bits, whole, n)))
    if cut:
        probs, ids = _filtered(
            _rows(logits, cut, n), _rows(temperature, cut, n), [top_k[i] for i in cut], [top_p[i] for i in cut]
        )
        e = _exponentials(_rows(bits, cut, n).gather(-1, ids))
        tokens[cut] = ids.gather(-1, (probs / e).argmax(dim=-1, keepdim=True)).squeeze(1)
    return tokens


def _top(logits: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``c`` largest values of each row and their token ids, largest first and ties by token id.

    The fixed order of ties makes a row's first candidates the same whatever ``c``
    is (and so whatever the other rows need).
    """
    values, ids = torch.topk(logits, c, dim=-1)
    ids, order = ids.sort(dim=-1)
    values, order = values.gather(-1, order).sort(dim=-1, descending=True, stable=True)
    return values, ids.gather(-1, order)


def _filtered(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: Sequence[int | None], top_p: Sequence[float | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities ``(n, c)``, token ids ``(n, c)``) of each row's candidates after top-k then top-p.

    Top-k keeps the tokens at least as large as the k-th (ties included); top-p
    then drops a token when the ones ranked above it already reach ``top_p``
    (the first always stays), with probabilities over the top-k survivors, or
    over all tokens in a row without top-k. Rows without top-k start from
    ``TOP_P_CANDIDATES`` candidates, more until the nucleus fits.
    """
    n, V = logits.shape
    device = logits.device
    has_k = torch.tensor([k is not None for k in top_k], device=device)
    p_limit = torch.tensor([[p if p is not None else float("inf")] for p in top_p], device=device)
    c = min(V, max(k + 1 if k is not None else TOP_P_CANDIDATES for k in top_k))  # one past the k-th: ties
    values, ids = _top(logits, c)
    kth = values.gather(-1, torch.tensor([[(k or 1) - 1] for k in top_k], device=device))  # (n, 1)
    n_keep = torch.where(has_k, (values >= kth).sum(dim=-1), V)
    if c < V and bool((has_k & (n_keep == c)).any()):  # ties with the k-th may go on past the candidates
        n_keep = torch.where(has_k, (logits >= kth).sum(dim=-1), V)
    everything = None  # softmax over all tokens, for the rows without top-k
    while True:
        c = max([c] + [int(n) for n in n_keep[has_k]])
        if c > values.shape[-1]:
            values, ids = _top(logits, c)
        scaled = values / temperature  # as scaling every logit first: the same values in the same order
        kept = torch.arange(c, device=device) < n_keep[:, None]  # (n, c)
        e = torch.exp(scaled - scaled[:, :1]) * kept
        probs = e / e.cumsum(dim=-1)[:, -1:]  # cumsum: one sequential sum per row, whatever the batch
        if not bool(has_k.all()):
            if everything is None:
                everything = torch.softmax(logits / temperature, dim=-1)
            probs = torch.where(has_k[:, None], probs, everything.gather(-1, ids))
        drop = probs.cumsum(dim=-1) - probs >= p_limit
        if bool((has_k | drop[:, -1]).all()) or c == V:  # a top-p-only row is complete once its last is dropped
            break
        c = min(c * 8, V)
    e = e.masked_fill(drop, 0.0)
    return e / e.cumsum(dim=-1)[:, -1:], ids


def _prefill(model: GPT, prompts: list[list[int]], max_new_tokens: int):
    """(last-position logits ``(B, 1, V)``, the cache, prompt lengths ``(B,)``) after the left-padded prompts.

    The padding is masked out and positions count from each row's first real token.
    """
    device = model.device
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    T = int(lengths.max())
    idx = torch.full((B, T), EOS_ID, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
    cache = model.new_cache(B, T + max_new_tokens)
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
    return logits, cache, lengths


@torch.inference_mode()
def generate_steps(
    model: GPT, prompts: Sequence[Sequence[int]], settings: SamplingSettings, stop_ids: StopIds = (EOS_ID,)
) -> Iterator[tuple[list[int], list[int]]]:
    """Yield, at each step, (row indices still running, their new token ids).

    A row whose new tokens end with one of the stop sequences ``stop_ids`` (``stops.StopSequences``;
    None: none) yields its last token and then stops: the stop is among the tokens yielded (``generate``
    and ``stream`` drop it). Prompts longer than the context allows are cropped from the left with a
    warning. A repetition penalty counts each row's own prompt and new tokens (not the padding).
    """
    stops = StopSequences(stop_ids)
    block_size = model.config.block_size
    cropped_prompts = []
    for i, p in enumerate(prompts):
        ids, n_cropped = crop_prompt(p, block_size, settings.max_new_tokens)
        if n_cropped:
            warnings.warn(f"prompt {i} is {len(p)} tokens; kept its last {len(ids)} to fit the context", stacklevel=2)
        cropped_prompts.append(ids)

    device = model.device
    B = len(cropped_prompts)
    logits, cache, lengths = _prefill(model, cropped_prompts, settings.max_new_tokens)
    seen = None  # (b, V): the tokens each row has in its prompt or answer, with a repetition penalty
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros(B, logits.shape[-1], dtype=torch.bool, device=device)
        for i, p in enumerate(cropped_prompts):
            seen[i, p] = True
    generator = make_generator(settings, device)
    rows = torch.arange(B, device=device)  # original index of each running row
    new: list[list[int]] = [[] for _ in range(B)]  # each row's new tokens, matched against the stops
    next_pos = lengths.clone()  # position of the token each row feeds next
    for step in range(settings.max_new_tokens):
        last = logits[:, -1, :]
        if seen is not None:
            last = penalize_repeats(last, seen, settings.repetition_penalty)
        # One row: the plain sampler; a batch: the exact batched one. Both draw the same tokens.
        tokens = (sample if last.shape[0] == 1 else sample_next)(last, settings, generator)  # (b,)
        running_rows, new_tokens = rows.tolist(), tokens.tolist()
        yield running_rows, new_tokens
        if step == settings.max_new_tokens - 1:
            break
        if seen is not None:
            seen[torch.arange(len(new_tokens), device=device), tokens] = True
        if stops:
            keep_list = []
            for j, (r, t) in enumerate(zip(running_rows, new_tokens)):
                new[r].append(t)
                if not stops.matched(new[r]):
                    keep_list.append(j)
            if len(keep_list) < len(new_tokens):
                if not keep_list:
                    break
                keep = torch.tensor(keep_list, dtype=torch.long, device=device)
                rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
                cache.keep_rows(keep)
                if seen is not None:
                    seen = seen[keep]
        mask = cache.key_valid[:, : cache.length + 1] if cache.key_valid is not None else None
        logits = model(
            tokens[:, None], cache=cache, position_ids=next_pos[:, None], attention_mask=mask, last_only=True
        )
        next_pos += 1


def generate(
    model: GPT, prompts: Sequence[Sequence[int]], settings: SamplingSettings, stop_ids: StopIds = (EOS_ID,)
) -> list[list[int]]:
    """New token ids for each prompt (without the prompt, without the stop sequence that ended it)."""
    out: list[list[int]] = [[] for _ in prompts]
    for rows, tokens in generate_steps(model, prompts, settings, stop_ids):
        for r, t in zip(rows, tokens):
            out[r].append(t)
    stops = StopSequences(stop_ids)
    return [stops.strip(o) for o in out]


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
    model: GPT, prompt: Sequence[int], settings: SamplingSettings, stop_ids: StopIds = (EOS_ID,)
) -> Iterator[tuple[list[int], str]]:
    """Yield (new token ids so far, their text so far) after every token of one prompt (see ``stream_text``).

    Tokens that may begin a stop sequence of several tokens are held back until the next ones decide.
    """

    def tokens() -> Iterator[int]:
        held = StopFilter(StopSequences(stop_ids))
        for _, (token,) in generate_steps(model, [prompt], settings, stop_ids):
            yield from held.push(token)
            if held.stopped:
                return
        yield from held.flush()

    yield from stream_text(tokens())

"""Evaluation metrics: ROUGE-L F1, normalized exact match, reference loss and perplexity.

Entry points: ``rouge_l_f1`` (LCS F1 over lowercased ``\\w+`` word tokens: ``rouge-score``'s
tokenizer without stemming, extended to Unicode), ``exact_match`` (after SQuAD's
``normalize_answer``), ``reference_loss`` (teacher-forced: batches from ``data.batches.collate``
scored with ``loss.response_loss``, as in training) and ``perplexity`` (its ``exp``).
Invariant: ``reference_loss`` is the token-weighted mean over every target of all records, so it
does not depend on the batching. The definitions in full: docs/design.md.
"""

from __future__ import annotations

import math
import re
import string
from typing import Sequence

import torch

from gpt2_scratch.data.batches import EncodedExample, collate
from gpt2_scratch.loss import IGNORE_INDEX, response_loss
from gpt2_scratch.model import GPT

_WORD_RE = re.compile(r"\w+")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def words(text: str) -> list[str]:
    """ROUGE tokens of ``text``: lowercased runs of word characters (see module docstring)."""
    return _WORD_RE.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a  # keep the DP row as short as possible
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference``: 2PR/(P+R) with P = LCS/|pred|, R = LCS/|ref|."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lowercase, remove punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> int:
    """1 when ``prediction`` and ``reference`` are equal after ``normalize_answer``, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(reference))


@torch.inference_mode()
def reference_loss(
    model: GPT,
    examples: Sequence[EncodedExample],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    mask_prompt: bool = True,
) -> tuple[float, int]:
    """(token-weighted mean loss, number of target tokens) of ``examples`` under ``model``.

    Batches come from ``data.batches.collate`` (``max_length`` defaults to the model's
    context length) and are scored with ``response_loss(reduction="sum")``; the sum
    over all batches is divided by the number of targets that are not
    ``IGNORE_INDEX``. With ``mask_prompt`` (the default) only the response and
    its closing ``<|endoftext|>`` count: the loss of the reference responses
    given their prompts. Examples are batched in order of length so that
    little padding is computed; the result does not depend on the batching.
    """
    if not examples:
        raise ValueError("reference_loss needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = max_length or model.config.block_size
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        inputs, targets = collate(batch, max_length=max_length, mask_prompt=mask_prompt)
        inputs, targets = inputs.to(model.device), targets.to(model.device)
        total += response_loss(model, inputs, targets, reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("reference_loss: every target is ignored (empty responses with mask_prompt?)")
    return total / count, count


def perplexity(loss: float) -> float:
    """``exp(loss)``; ``inf`` instead of an overflow error for a huge loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf

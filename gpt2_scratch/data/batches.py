"""From records to batches: tokenization with the prompt masked, collate, length-grouped batches.

examples = [encode_record(r, style) for r in split.train]     # records.split_records
sampler = LengthGroupedBatchSampler([len(e.ids) for e in examples], batch_size=8)
for indices in sampler:
    inputs, targets = collate([examples[i] for i in indices])
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from gpt2_scratch.data.records import Record
from gpt2_scratch.loss import IGNORE_INDEX
from gpt2_scratch.prompts import PromptStyle, get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, encode


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response; the first ``prompt_len`` ids are the prompt.

    ``end``: the prompt style's end marker (``PromptStyle.stop_ids()[0]``), which ``collate`` appends.
    """

    ids: list[int]
    prompt_len: int
    end: tuple[int, ...] = (EOS_ID,)

    def __post_init__(self):
        if not self.ids:
            raise ValueError("an encoded example needs at least one token")
        if not 0 <= self.prompt_len <= len(self.ids):
            raise ValueError(f"prompt_len {self.prompt_len} is outside 0..{len(self.ids)}")
        if not self.end:
            raise ValueError("an encoded example needs an end marker (at least one token)")


# ---------------------------------------------------------------------------------------------
# Loading


def encode_record(record: Record, style: PromptStyle | str) -> EncodedExample:
    """Tokenize the prompt and response of ``record`` in ``style``, without the end marker (``collate`` adds it).

    The full text is tokenized in one go, as in the reference, so the ids are
    exactly what the model sees at inference time after the prompt. ``prompt_len``
    is the number of leading ids shared with ``encode(prompt)``. That is all of the
    prompt's ids whenever the prompt's tokens are a prefix of the full ids, which
    holds for every entry of the reference data in both styles (their prompts end
    with a newline and no output starts with whitespace). If a response starting
    with whitespace merges with the prompt's last token, that merged token counts
    as response, so ``mask_prompt`` never hides a token that carries response text.
    The end marker is the style's first stop text encoded alone, the very ids generation stops on (encoded
    with the response, a marker written as text could merge with the response's last characters).
    """
    if isinstance(style, str):
        style = get_prompt_style(style)
    prompt, response = style.format_example(record.instruction, record.input, record.output)
    ids = encode(prompt + response)
    prompt_ids = encode(prompt)
    prompt_len = 0
    for a, b in zip(prompt_ids, ids):
        if a != b:
            break
        prompt_len += 1
    return EncodedExample(ids=ids, prompt_len=prompt_len, end=style.stop_ids()[0])


def collate(
    batch: Sequence[EncodedExample], *, max_length: int | None = 1024, mask_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(B, T)`` of a batch, exactly as the reference's ``custom_collate_fn``.

    Each example gets its end marker appended (``EncodedExample.end``: one EOS in the
    reference's styles) and is padded with EOS to the longest example; inputs are
    that without the last position, targets without the first. The end marker's
    targets are kept (the model must learn to stop); every padding target is
    ``IGNORE_INDEX``. We mask by position, not by comparing with the EOS id as the
    reference does, so an ``<|endoftext|>`` written in the text itself is still
    trained on. Rows are then truncated to ``max_length``. With ``mask_prompt`` the
    targets that predict prompt tokens are ignored too, so only the response (and
    its end marker) is learned.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    width = max(len(ex.ids) + len(ex.end) for ex in batch) - 1  # the longest with its end marker, less the shift
    inputs, targets = [], []
    for ex in batch:
        full = ex.ids + list(ex.end)
        padding = width - (len(full) - 1)
        inputs.append(full[:-1] + [EOS_ID] * padding)
        target = full[1:] + [IGNORE_INDEX] * padding
        if mask_prompt:
            # target j predicts token j + 1, so prompt tokens 1..prompt_len-1 are targets 0..prompt_len-2.
            cut = max(ex.prompt_len - 1, 0)
            target[:cut] = [IGNORE_INDEX] * cut
        targets.append(target)
    inputs_t, targets_t = torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)
    if max_length is not None:
        inputs_t, targets_t = inputs_t[:, :max_length], targets_t[:, :max_length]
    return inputs_t, targets_t


class LengthGroupedBatchSampler:
    """Batches of indices whose examples have similar lengths, in random batch order.

    Padding to the longest example is most of the wasted compute on instruction
    data. Measured on the reference dataset (train split: 935 records, Alpaca
    style, batch size 8, ``seed=123``, mean over epochs 0-9), the share of target
    positions that are padding (``IGNORE_INDEX``) is 19.1% with random batches
    and 0.7% with grouped ones: 53,140 instead of 65,212 tokens per epoch, 18.5%
    less compute for the same examples. (Batch size 4: 13.7% vs 0.4%; 16: 23.9% vs 0.7%.)

    Algorithm: shuffle all indices with ``random.Random(f"{seed}:{epoch}")``,
    cut them into mega-chunks of ``mega_batches * batch_size``, sort each chunk
    by length, cut the chunks into batches, then shuffle the order of the batches.
    Which examples meet in a batch and the order of batches both change every
    epoch, while batches stay nearly padding-free. ``group=False`` gives plain
    shuffled batches; ``shuffle=False`` keeps the index order (and, if grouping,
    sorts within chunks without shuffling batches), for evaluation.

    Only the last batch of an epoch can be smaller than ``batch_size`` (``drop_last``
    drops it). Several processes (DDP) each build the same sequence of global
    batches and take their share of every batch (see ``train.step``).

    Deterministic for a given ``(seed, epoch)``: call ``set_epoch`` before each epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 123,
        group: bool = True,
        drop_last: bool = False,
        mega_batches: int = 100,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mega_batches < 1:
            raise ValueError(f"mega_batches must be >= 1, got {mega_batches}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group = group
        self.drop_last = drop_last
        self.mega_batches = mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        indices = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(indices)
        if self.group:
            chunk = self.mega_batches * self.batch_size
            grouped = []
            for start in range(0, len(indices), chunk):
                # Stable sort, longest first: ties keep the shuffled order.
                grouped += sorted(indices[start : start + chunk], key=lambda i: -self.lengths[i])
            indices = grouped
        bs = self.batch_size
        # Chunks are whole multiples of batch_size, so only the very last batch can be short.
        batches = [indices[i : i + bs] for i in range(0, len(indices), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        if self.shuffle and self.group:
            rng.shuffle(batches)  # otherwise each chunk would run from long to short examples
        return iter(batches)

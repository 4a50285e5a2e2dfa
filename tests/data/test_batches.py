"""Tests for gpt2_scratch.data.batches: encoding records, collate, the length-grouped batch sampler."""

from __future__ import annotations

import random

import pytest
import torch

from gpt2_scratch.data.batches import EncodedExample, LengthGroupedBatchSampler, collate, encode_record
from gpt2_scratch.data.records import Record
from gpt2_scratch.loss import IGNORE_INDEX
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, decode, encode
from tests.fixtures.records import ENTRIES

E, I = EOS_ID, IGNORE_INDEX  # noqa: E741 - short names keep the golden batches readable

# ---------------------------------------------------------------------------------------------
# Encoding

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_alpaca_prompt_text_with_and_without_input():
    alpaca = get_prompt_style("alpaca")
    with_input = encode_record(Record(0, **{k: ENTRIES[0][k] for k in ("instruction", "input", "output")}), alpaca)
    assert decode(with_input.ids[: with_input.prompt_len]) == (
        PREAMBLE + "\n\n### Instruction:\nEvaluate the following phrase by transforming it into the spelling given."
        "\n\n### Input:\nfreind --> friend\n\n### Response:\n"
    )
    assert decode(with_input.ids[with_input.prompt_len :]) == ENTRIES[0]["output"]

    without_input = encode_record(Record(1, "Say hi.", "", "Hi!"), "alpaca")
    assert decode(without_input.ids) == PREAMBLE + "\n\n### Instruction:\nSay hi.\n\n### Response:\nHi!"
    # The exact ids (GPT-2 BPE), with the prompt ending on "\n" (198) and "Hi!" = 17250, 0.
    assert without_input.ids == [
        21106,
        318,
        281,
        12064,
        326,
        8477,
        257,
        4876,
        13,
        19430,
        257,
        2882,
        326,
        20431,
        32543,
        262,
        2581,
        13,
        198,
        198,
        21017,
        46486,
        25,
        198,
        25515,
        23105,
        13,
        198,
        198,
        21017,
        18261,
        25,
        198,
        17250,
        0,
    ]
    assert without_input.prompt_len == 33


def test_prompt_len_when_the_response_merges_with_the_prompt():
    # A response starting with "\n\n" merges with the prompt's final "\n" into "\n\n\n" = 628 + 198 ...:
    # the prompt ids are then not a prefix, and the merged token counts as response.
    ex = encode_record(Record(0, "Say hi.", "", "\n\nx"), "alpaca")
    prompt_ids = encode(get_prompt_style("alpaca").format("Say hi."))
    assert ex.ids[: len(prompt_ids)] != prompt_ids
    assert ex.prompt_len == len(prompt_ids) - 1 == 32
    assert ex.ids[32:] == [628, 198, 87]
    # Whole-text tokenization, as the reference does it.
    assert ex.ids == encode(get_prompt_style("alpaca").format("Say hi.") + "\n\nx")


def test_encoded_example_validates():
    with pytest.raises(ValueError):
        EncodedExample(ids=[], prompt_len=0)
    with pytest.raises(ValueError):
        EncodedExample(ids=[1, 2], prompt_len=3)


# ---------------------------------------------------------------------------------------------
# Collate

BATCH = [EncodedExample([1, 2, 3, 4, 5], 3), EncodedExample([6, 7], 1), EncodedExample([8, 9, 10], 2)]


def test_collate_golden():
    inputs, targets = collate(BATCH)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [
        [1, 2, 3, 4, 5],
        [6, 7, E, E, E],
        [8, 9, 10, E, E],
    ]
    assert targets.tolist() == [
        [2, 3, 4, 5, E],  # the longest row: its EOS is the last target
        [7, E, I, I, I],  # the first EOS is kept, later padding ignored
        [9, 10, E, I, I],
    ]


def test_collate_mask_prompt_golden():
    _, targets = collate(BATCH, mask_prompt=True)
    assert targets.tolist() == [
        [I, I, 4, 5, E],  # prompt_len 3: targets predicting tokens 1 and 2 are ignored
        [7, E, I, I, I],  # prompt_len 1: nothing to mask
        [I, 10, E, I, I],
    ]


def test_collate_truncates_to_max_length():
    inputs, targets = collate(BATCH, max_length=3)
    assert inputs.tolist() == [[1, 2, 3], [6, 7, E], [8, 9, 10]]
    assert targets.tolist() == [[2, 3, 4], [7, E, I], [9, 10, E]]
    inputs, targets = collate(BATCH, max_length=None)
    assert inputs.shape == targets.shape == (3, 5)
    with pytest.raises(ValueError, match="max_length"):
        collate(BATCH, max_length=0)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_collate_keeps_a_genuine_eos_in_the_text():
    # An <|endoftext|> written in the data is trained on; only positions past the row's end are padding.
    ex = encode_record(Record(0, "a", "", "x<|endoftext|>y"), "alpaca")
    assert E in ex.ids
    inputs, targets = collate([EncodedExample([1, E, 2], 0), EncodedExample([3], 0)])
    assert inputs.tolist() == [[1, E, 2], [3, E, E]]
    assert targets.tolist() == [[E, 2, E], [E, I, I]]


def reference_collate(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None):
    """custom_collate_fn of LLMs-from-scratch ch07, verbatim apart from the device argument."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = item.copy()
        new_item += [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])
        mask = targets == pad_token_id
        indices = torch.nonzero(mask).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst), torch.stack(targets_lst)


def test_collate_matches_the_reference_on_random_batches():
    rng = random.Random(0)
    for _ in range(50):
        batch = [[rng.randrange(50256) for _ in range(rng.randint(1, 40))] for _ in range(rng.randint(1, 8))]
        max_length = rng.choice([None, 5, 1024])
        ours = collate([EncodedExample(ids, 0) for ids in batch], max_length=max_length)
        ref = reference_collate(batch, allowed_max_length=max_length)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


# ---------------------------------------------------------------------------------------------
# Batch sampler


def padding_fraction(sampler, lengths):
    """Share of (row, position) slots that are padding when each batch is padded to its longest example."""
    padded = real = 0
    for batch in sampler:
        width = max(lengths[i] for i in batch)
        padded += width * len(batch)
        real += sum(lengths[i] for i in batch)
    return 1 - real / padded


_rng = random.Random(7)

LENGTHS = [_rng.randint(20, 300) for _ in range(1003)]


@pytest.mark.parametrize("group", [True, False])
def test_sampler_covers_every_index_once_per_epoch(group):
    sampler = LengthGroupedBatchSampler(LENGTHS, 8, group=group)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 126  # ceil(1003 / 8)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert sorted(len(b) for b in batches)[0] == 3 and sum(len(b) == 8 for b in batches) == 125

    dropped = LengthGroupedBatchSampler(LENGTHS, 8, group=group, drop_last=True)
    batches = list(dropped)
    assert len(batches) == len(dropped) == 125 and all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 1000


def test_sampler_is_deterministic_per_seed_and_epoch():
    def epoch_batches(seed, epoch, **kw):
        sampler = LengthGroupedBatchSampler(LENGTHS, 8, seed=seed, **kw)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(1, 0) == epoch_batches(1, 0)
    assert epoch_batches(1, 3) == epoch_batches(1, 3)
    assert epoch_batches(1, 0) != epoch_batches(1, 1)
    assert epoch_batches(1, 0) != epoch_batches(2, 0)
    # Grouped batches are shuffled: not sorted by length within a mega-chunk.
    first = [max(LENGTHS[i] for i in b) for b in epoch_batches(1, 0)]
    assert first != sorted(first, reverse=True)
    # Different epochs put different examples together, not only in another order.
    assert {frozenset(b) for b in epoch_batches(1, 0)} != {frozenset(b) for b in epoch_batches(1, 1)}
    assert epoch_batches(1, 0, group=False) != epoch_batches(1, 1, group=False)


def test_grouped_batches_have_much_less_padding():
    grouped = padding_fraction(LengthGroupedBatchSampler(LENGTHS, 8), LENGTHS)
    plain = padding_fraction(LengthGroupedBatchSampler(LENGTHS, 8, group=False), LENGTHS)
    assert plain > 0.25  # uniform lengths 20..300: random batches of 8 are 42% padding
    assert grouped < 0.02  # 1.2%
    # Small mega-chunks group less well.
    assert grouped < padding_fraction(LengthGroupedBatchSampler(LENGTHS, 8, mega_batches=2), LENGTHS) < plain


def test_sampler_without_shuffle_is_in_order():
    assert list(LengthGroupedBatchSampler([5, 1, 3, 2, 4], 2, shuffle=False, group=False)) == [[0, 1], [2, 3], [4]]
    # Grouping without shuffling sorts by length (longest first) and keeps the batch order.
    assert list(LengthGroupedBatchSampler([5, 1, 3, 2, 4], 2, shuffle=False)) == [[0, 4], [2, 3], [1]]


def test_sampler_validates_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError, match="mega_batches"):
        LengthGroupedBatchSampler(LENGTHS, 8, mega_batches=0)


def test_chatml_training_labels_end_with_its_end_marker_as_generation_stops_on_it():
    chatml = get_prompt_style("chatml")
    [marker, _] = chatml.stop_ids()
    records = [Record(0, "Name a color.", "", "Blue."), Record(1, "Say hi.", "", "Hi")]
    examples = [encode_record(r, chatml) for r in records]
    assert [ex.end for ex in examples] == [marker, marker]
    assert decode(examples[0].ids) == "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nBlue."
    inputs, targets = collate(examples, mask_prompt=True)
    for ex, x, y in zip(examples, inputs.tolist(), targets.tolist()):
        kept = [t for t in y if t != I]
        n = len(ex.ids) + len(marker)
        assert kept[-len(marker) :] == list(marker)  # the marker's tokens, encoded alone, are learned
        assert decode(kept) == decode(ex.ids[ex.prompt_len :]) + "<|im_end|>"
        assert x[: n - 1] == (ex.ids + list(marker))[:-1] and set(x[n - 1 :]) <= {E}  # then EOS padding
    # Encoded with the answer, "Blue.<|im_end|>" would merge ".<": the marker must be appended as its own tokens.
    assert encode("Blue.<|im_end|>")[-len(marker) :] != list(marker)


def test_alpaca_and_phi3_examples_still_end_with_one_eos():
    for name in ("alpaca", "phi3"):
        ex = encode_record(Record(0, "a", "", "b"), name)
        assert ex.end == (E,)
        _, targets = collate([ex])
        assert targets.tolist()[0][-1] == E

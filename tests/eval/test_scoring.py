"""Metrics: ROUGE-L F1 and exact match on hand-computed pairs, reference loss equal to lm_loss."""

import math

import pytest
import torch

from gpt2_scratch.data.batches import collate, encode_record
from gpt2_scratch.data.records import Record
from gpt2_scratch.eval.scoring import (
    exact_match,
    lcs_length,
    normalize_answer,
    perplexity,
    reference_loss,
    rouge_l_f1,
    words,
)
from gpt2_scratch.inference import load_model
from gpt2_scratch.loss import IGNORE_INDEX, lm_loss

# Tiny models run fastest on one thread, and do not crawl when other processes share the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_words_lowercase_and_split_on_non_word_characters():
    assert words("Hello, World!  It's 42.") == ["hello", "world", "it", "s", "42"]
    assert words("Café au lait") == ["café", "au", "lait"]
    assert words(" \n!?") == []


def test_lcs_length_classic_examples():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS: e.g. BCBA
    assert lcs_length("", "abc") == 0
    assert lcs_length("abc", "abc") == 3
    assert lcs_length(["the", "cat"], ["cat", "the"]) == 1


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # LCS "the cat on the mat" = 5 of 6 and 6 words: P = R = 5/6.
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
        # Case and punctuation are not words.
        ("Hello, world!", "hello world", 1.0),
        # LCS "b d" = 2; P = 2/4, R = 2/3; F = 2PR/(P+R) = (2/3)/(7/6) = 4/7.
        ("a b c d", "b d e", 4 / 7),
        # Order matters: LCS of [mat, the, on] and [the, mat] is 1; P = 1/3, R = 1/2, F = 2/5.
        ("mat the on", "the mat", 2 / 5),
        # Unicode letters are word characters: LCS 1, P = 1/3, R = 1, F = 1/2.
        ("Café au lait", "café", 1 / 2),
        ("completely different", "nothing shared", 0.0),
        ("", "reference", 0.0),
        ("!!!", "reference", 0.0),
        ("prediction", "", 0.0),
    ],
)
def test_rouge_l_f1_hand_computed(prediction, reference, expected):
    assert rouge_l_f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_normalize_answer_squad_style():
    assert normalize_answer("  The Eiffel  Tower.\n") == "eiffel tower"
    assert normalize_answer("U.S.A.!") == "usa"
    assert normalize_answer("theater an apple") == "theater apple"  # articles only as whole words


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("The Eiffel Tower.", "eiffel tower", 1),
        ("An apple", "apple", 1),
        ("  Paris\n", "paris", 1),
        ("Paris, France", "Paris France", 1),
        ("apples", "apple", 0),
        ("theater", "ater", 0),
        ("The answer is 4.", "4", 0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


@pytest.fixture(scope="module")
def tiny_and_examples():
    model, _ = load_model("random:tiny")
    records = [
        Record(0, "Name a color.", "", "Blue."),
        Record(1, "Translate to French.", "Good morning", "Bonjour."),
        Record(
            2,
            "Summarize the text in one sentence, please, and keep it short.",
            "Cats sleep a lot.",
            "Cats sleep often.",
        ),
        Record(3, "What is 2 + 2?", "", "2 + 2 equals 4, which is an even number and a power of two."),
        Record(4, "Rewrite in passive voice.", "The dog chased the ball.", "The ball was chased by the dog."),
        Record(5, "Give an antonym of 'hot'.", "", "Cold."),
    ]
    return model, [encode_record(r, "alpaca") for r in records]


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_reference_loss_equals_lm_loss_on_one_batch_of_all_records(tiny_and_examples, mask_prompt):
    model, examples = tiny_and_examples
    inputs, targets = collate(examples, max_length=model.config.block_size, mask_prompt=mask_prompt)
    with torch.no_grad():
        expected = lm_loss(model(inputs), targets).item()
    n_targets = int((targets != IGNORE_INDEX).sum())
    for batch_size in (1, 2, 6):  # token-weighted: the batching does not change the value
        loss, count = reference_loss(model, examples, batch_size=batch_size, mask_prompt=mask_prompt)
        assert count == n_targets
        assert loss == pytest.approx(expected, rel=1e-5)
    assert perplexity(loss) == pytest.approx(math.exp(expected), rel=1e-4)


def test_reference_loss_masks_the_prompt_by_default(tiny_and_examples):
    model, examples = tiny_and_examples
    _, count = reference_loss(model, examples)
    # Each row has len(ids) targets (ids[1:] + EOS); the first prompt_len - 1 predict prompt tokens.
    expected = sum(len(e.ids) - max(e.prompt_len - 1, 0) for e in examples)
    assert count == expected
    assert reference_loss(model, examples, mask_prompt=False)[1] == sum(len(e.ids) for e in examples)


def test_reference_loss_is_token_weighted_not_a_mean_of_batch_means(tiny_and_examples):
    model, examples = tiny_and_examples
    loss, _ = reference_loss(model, examples, batch_size=1)
    per_example = [reference_loss(model, [e], batch_size=1)[0] for e in examples]
    assert abs(loss - sum(per_example) / len(per_example)) > 1e-4  # lengths differ, so the two means differ


def test_perplexity_overflow_is_inf():
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf


def test_reference_loss_rejects_empty_input(tiny_and_examples):
    model, _ = tiny_and_examples
    with pytest.raises(ValueError, match="at least one"):
        reference_loss(model, [])

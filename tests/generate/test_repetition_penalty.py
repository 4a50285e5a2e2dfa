"""Repetition penalty: transformers' greedy tokens in both decode loops, each row penalized by its own history."""

import pytest
import torch

from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings, generate, penalize_repeats
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import EOS_ID, encode

T = 30  # seconds: the most a test waits for one engine token
PROMPTS = ["The quick brown fox jumps over the lazy dog, and then", "Hi", "1 2 3 4 5 6 7 8"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(hf_tiny):
    hf, folder = hf_tiny
    model, _ = load_model(str(folder))
    return hf, model


def hf_greedy(hf, prompt: list[int], n: int, penalty: float) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        repetition_penalty=penalty,
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        pad_token_id=EOS_ID,
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("penalty", [1.3, 3.0])
def test_greedy_tokens_equal_transformers_generate_in_both_loops(tiny, penalty):
    hf, model = tiny
    n = 40
    s = SamplingSettings(max_new_tokens=n, repetition_penalty=penalty)
    prompts = [encode(t) for t in PROMPTS]
    expected = [hf_greedy(hf, p, n, penalty) for p in prompts]
    assert expected != [hf_greedy(hf, p, n, 1.0) for p in prompts]  # the penalty changes the answers here
    assert [generate(model, [p], s, stop_ids=None)[0] for p in prompts] == expected
    with Engine(model, stop_ids=None) as engine:
        assert engine.generate_all(prompts, s) == expected


def test_a_penalized_row_gets_its_solo_tokens_in_any_batch(tiny):
    _, model = tiny
    prompts = [encode(t) for t in PROMPTS]
    greedy = SamplingSettings(max_new_tokens=30, repetition_penalty=1.3)
    batched = generate(model, prompts, greedy, stop_ids=None)  # left-padded: padding is no history
    assert batched == [generate(model, [p], greedy, stop_ids=None)[0] for p in prompts]
    # Engine rows with their own penalties (and seeds), side by side with unpenalized ones.
    per_row = [
        SamplingSettings(max_new_tokens=30, repetition_penalty=1.5, temperature=0.9, seed=1),
        SamplingSettings(max_new_tokens=30),
        SamplingSettings(max_new_tokens=30, repetition_penalty=0.7, temperature=1.0, top_k=20, seed=2),
        SamplingSettings(max_new_tokens=30, repetition_penalty=1.2),
    ]
    rows = [prompts[0], prompts[1], prompts[2], prompts[0]]
    with Engine(model, stop_ids=None) as engine:
        together = engine.generate_all(rows, per_row)
    assert together == [generate(model, [p], s, stop_ids=None)[0] for p, s in zip(rows, per_row)]
    assert together[0] != together[3]  # same prompt, other penalties: other answers


def test_penalize_repeats_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0], [2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = penalize_repeats(logits, seen, torch.tensor([[2.0], [5.0]]))
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0], [2.0, -2.0, 3.0, -1.0]]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.2", True])
def test_a_penalty_that_is_not_a_positive_number_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"repetition_penalty must be a number > 0 \(1 = off\)"):
        SamplingSettings(repetition_penalty=bad)

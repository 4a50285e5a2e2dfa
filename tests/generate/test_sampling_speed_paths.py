"""The fast sampler (top-k before top-p, survivors only) draws exactly what the full-vocabulary one drew.

``reference_sample_next`` is the sampler as it was before (temperature, top-k by
masking, top-p by sorting all V logits, softmax, ``torch.multinomial``): for the
same logits and the same seeded generator, the new one must pick the same token
and leave the generator in the same state, row by row and batched.
"""

import pytest
import torch

from gpt2_scratch import GPT, GPTConfig
from gpt2_scratch.generate import sampling
from gpt2_scratch.generate.sampling import SamplingSettings, generate, sample, sample_next, sample_rows


def reference_sample_next(logits, settings, generator):
    """The sampler before the fast path, verbatim: every step sorted all V logits."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= settings.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


SETTINGS = [
    SamplingSettings(temperature=0.7, top_k=40, top_p=0.95),  # the app's visitors
    SamplingSettings(temperature=1.0),  # no filter
    SamplingSettings(temperature=1.3, top_p=0.9),  # top-p alone
    SamplingSettings(temperature=0.0),  # greedy, in the same batch
    SamplingSettings(temperature=0.5, top_k=5),
    SamplingSettings(temperature=1.0, top_p=0.5),
    SamplingSettings(temperature=0.9, top_k=200, top_p=0.8),
    SamplingSettings(temperature=1.0, top_k=60000, top_p=1.0),  # top-k past the vocabulary, top-p off
]


def _logits(step: int, n: int, vocab: int = 50257) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, vocab, generator=g) * (0.5 + step % 4)  # flat to peaked distributions


def _generators(step: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(7 * step + i) for i in range(n)]


@pytest.mark.parametrize("step", range(12))
def test_each_row_draws_what_the_reference_drew_and_leaves_its_generator_alike(step):
    logits = _logits(step, len(SETTINGS))
    new_gens, ref_gens = _generators(step, len(SETTINGS)), _generators(step, len(SETTINGS))
    got = sample_rows(logits, SETTINGS, new_gens)
    expected = [reference_sample_next(logits[i : i + 1], s, g)[0] for i, (s, g) in enumerate(zip(SETTINGS, ref_gens))]
    assert got.tolist() == [int(t) for t in expected]
    for a, b in zip(new_gens, ref_gens):
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("step", range(4))
def test_a_row_gets_the_same_token_alone_as_in_any_batch(step):
    logits = _logits(step, len(SETTINGS))
    batched = sample_rows(logits, SETTINGS, _generators(step, len(SETTINGS)))
    for i, s in enumerate(SETTINGS):
        alone = sample_rows(logits[i : i + 1], [s], [_generators(step, len(SETTINGS))[i]])
        assert int(alone[0]) == int(batched[i])
    order = list(reversed(range(len(SETTINGS))))  # other neighbours, other batch-wide candidate counts
    shuffled = sample_rows(
        logits[order], [SETTINGS[i] for i in order], [_generators(step, len(SETTINGS))[i] for i in order]
    )
    assert shuffled.tolist() == batched[order].tolist()


def test_one_generator_for_a_batch_draws_like_one_multinomial_call():
    s = SamplingSettings(temperature=0.8, top_k=40, top_p=0.95)
    logits = _logits(3, 5)
    g_new, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample_next(logits, s, g_new).tolist() == reference_sample_next(logits, s, g_ref).tolist()
    assert torch.equal(g_new.get_state(), g_ref.get_state())


def test_ties_with_the_kth_logit_stay_candidates():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, SamplingSettings(temperature=1.0, top_k=2), g)) for _ in range(400)}
    assert seen == {0, 1, 2, 3}  # the k-th (2.0) is tied three times: all three stay, as before


def test_a_nucleus_larger_than_the_first_candidates_matches_the_reference():
    vocab = 4 * sampling.TOP_P_CANDIDATES
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)) * 0.1  # nearly flat
    s = SamplingSettings(temperature=1.0, top_p=0.9)  # about 0.9 * vocab tokens in the nucleus
    for seed in range(20):
        g_new, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert sample_next(logits, s, g_new).tolist() == reference_sample_next(logits, s, g_ref).tolist()


def test_seeded_generation_gives_the_tokens_it_gave_before(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    s = SamplingSettings(max_new_tokens=25, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    fast = generate(model, prompts, s, stop_ids=None)
    monkeypatch.setattr(sampling, "sample_next", reference_sample_next)
    assert fast == generate(model, prompts, s, stop_ids=None)


@pytest.mark.parametrize("vocab", [50257, 300])
def test_the_plain_sampler_draws_what_the_batched_one_draws(vocab):
    """``sample`` (one row, as ``generate`` uses it) and ``sample_rows`` (the batched one): the same token and
    the same generator state after, for every setting on many random logits and seeds."""
    rng = torch.Generator().manual_seed(vocab)
    for step in range(40):
        logits = torch.randn(len(SETTINGS), vocab, generator=rng) * (0.3 + step % 5)
        if step % 4 == 0:
            logits[:, : vocab // 3] = logits[:, :1]  # ties, with the k-th too
        plain_gens, batched_gens = _generators(step, len(SETTINGS)), _generators(step, len(SETTINGS))
        batched = sample_rows(logits, SETTINGS, batched_gens)
        for i, s in enumerate(SETTINGS):
            assert int(sample(logits[i : i + 1], s, plain_gens[i])[0]) == int(batched[i]), (step, s)
            assert torch.equal(plain_gens[i].get_state(), batched_gens[i].get_state())


def test_generate_samples_one_row_with_the_plain_sampler(monkeypatch):
    used = []
    monkeypatch.setattr(sampling, "sample", lambda *a: used.append("plain") or sample(*a))
    monkeypatch.setattr(sampling, "sample_next", lambda *a: used.append("batched") or sample_next(*a))
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    s = SamplingSettings(max_new_tokens=3, temperature=1.0, seed=1)
    one = generate(model, [[1, 2]], s, stop_ids=None)
    assert used == ["plain"] * 3
    used.clear()
    assert generate(model, [[1, 2], [3]], s, stop_ids=None)[0] != [] and used == ["batched"] * 3
    monkeypatch.undo()
    monkeypatch.setattr(sampling, "sample", sample_next)
    assert generate(model, [[1, 2]], s, stop_ids=None) == one  # and they draw alike

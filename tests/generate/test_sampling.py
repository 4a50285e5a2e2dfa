"""Generation: KV cache vs none vs transformers, batching, streaming, sampling, cropping."""

import pytest
import torch

from gpt2_scratch import GPT, GPTConfig
from gpt2_scratch.generate.sampling import SamplingSettings, crop_prompt, generate, greedy, sample_next, stream
from gpt2_scratch.hub import load_pretrained
from gpt2_scratch.tokenizer import EOS_ID, decode, encode


def _greedy_without_cache(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(prompt) :].tolist()


def test_greedy_kv_cache_equals_no_cache_and_transformers(hf_tiny):
    hf, folder = hf_tiny
    ours = load_pretrained(str(folder))
    prompt = encode("The quick brown fox jumps over the lazy dog, and then")
    n = 60
    with_cache = generate(ours, [prompt], SamplingSettings(max_new_tokens=n), stop_ids=None)[0]
    assert len(with_cache) == n
    assert with_cache == _greedy_without_cache(ours, prompt, n)
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        pad_token_id=EOS_ID,
    )
    assert out[0, len(prompt) :].tolist() == with_cache


def test_batched_left_padded_rows_equal_single_rows(hf_tiny):
    _, folder = hf_tiny
    model = load_pretrained(str(folder))
    prompts = [encode(t) for t in ["Hi", "Once upon a time in a land far away", "1 2 3 4 5", "A"]]
    settings = SamplingSettings(max_new_tokens=40)
    batched = generate(model, prompts, settings, stop_ids=None)
    for p, got in zip(prompts, batched):
        assert got == generate(model, [p], settings, stop_ids=None)[0]


class _Scripted(torch.nn.Module):
    """Wraps a model so that its greedy next token is scripted by the last token fed."""

    def __init__(self, inner, script):
        super().__init__()
        self.inner, self.script, self.config = inner, script, inner.config
        self.batch_sizes = []

    @property
    def device(self):
        return self.inner.device

    def new_cache(self, *a):
        return self.inner.new_cache(*a)

    def forward(self, idx, **kw):
        self.batch_sizes.append(idx.shape[0])
        logits = self.inner(idx, **kw)
        for i, t in enumerate(idx[:, -1].tolist()):
            logits[i, -1, self.script.get(t, 0)] += 1e4
        return logits


def test_each_row_stops_at_its_own_eos_and_leaves_the_batch():
    torch.manual_seed(0)
    model = _Scripted(GPT(GPTConfig.from_preset("tiny")).eval(), {5: EOS_ID, 7: 8, 8: 9, 9: EOS_ID, 1: 2, 2: 3, 3: 1})
    out = generate(model, [[4, 5], [6, 7], [1]], SamplingSettings(max_new_tokens=6))
    assert out == [[], [8, 9], [2, 3, 1, 2, 3, 1]]
    # prefill with 3 rows; row 0 finished at once, row 1 after two more steps
    assert model.batch_sizes == [3, 2, 2, 1, 1, 1]


def test_streaming_yields_growing_text_and_matches_generate(hf_tiny):
    _, folder = hf_tiny
    model = load_pretrained(str(folder))
    prompt = encode("Streaming test:")
    settings = SamplingSettings(max_new_tokens=20)
    steps = list(stream(model, prompt, settings, stop_ids=None))
    assert [len(ids) for ids, _ in steps] == list(range(1, 21))
    ids, text = steps[-1]
    assert ids == generate(model, [prompt], settings, stop_ids=None)[0]
    assert text == decode(ids)


def test_streaming_never_splits_a_multibyte_character(monkeypatch):
    # " 🤖" is three tokens [12520, 97, 244]; the emoji's 4 bytes span them all.
    import gpt2_scratch.generate.sampling as g

    script = [12520, 97, 244, 0]

    def fake_steps(model, prompts, settings, stop_ids):
        for t in script:
            yield [0], [t]

    monkeypatch.setattr(g, "generate_steps", fake_steps)
    texts = [text for _, text in g.stream(None, [1], SamplingSettings(max_new_tokens=4))]
    assert texts == [" ", " ", " 🤖", " 🤖!"]


def test_sampling_is_reproducible_with_a_seed(hf_tiny):
    _, folder = hf_tiny
    model = load_pretrained(str(folder))
    s = SamplingSettings(max_new_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    a = generate(model, [[1, 2, 3]], s, stop_ids=None)
    assert a == generate(model, [[1, 2, 3]], s, stop_ids=None)
    other = SamplingSettings(max_new_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=8)
    assert a != generate(model, [[1, 2, 3]], other, stop_ids=None)


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen_k = {sample_next(logits, SamplingSettings(temperature=1.0, top_k=2), g).item() for _ in range(300)}
    assert seen_k == {0, 1}
    # top_p=0.8: 0.5 + 0.3 reaches 0.8, so only tokens 0 and 1 remain
    seen_p = {sample_next(logits, SamplingSettings(temperature=1.0, top_p=0.8), g).item() for _ in range(300)}
    assert seen_p == {0, 1}
    seen_all = {sample_next(logits, SamplingSettings(temperature=1.0), g).item() for _ in range(2000)}
    assert seen_all == {0, 1, 2, 3}


def test_greedy_picks_each_rows_first_largest_logit_as_torch_argmax_does():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50257, generator=g)
    logits[1, [7, 900, 40000]] = 10.0  # a tie: the first one wins
    logits[2, -1] = 11.0
    logits[3] = -1.0  # all equal
    expected = [int(logits[0].argmax()), 7, 50256, 0, int(logits[4].argmax())]
    for x in (logits, logits.bfloat16(), logits[:, ::2].contiguous(), logits.t().contiguous().t()):
        got = greedy(x)
        assert got.dtype == torch.long and got.tolist() == x.argmax(dim=-1).tolist()
    assert greedy(logits).tolist() == expected
    assert greedy(logits[:, None, :][:, -1, :]).tolist() == expected  # the decode loop's view of (B, 1, V)


def test_long_prompt_is_cropped_from_the_left_with_a_warning():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()  # block_size 256
    prompt = list(range(300))
    with pytest.warns(UserWarning, match="prompt 0 is 300 tokens; kept its last 246"):
        out = generate(model, [prompt], SamplingSettings(max_new_tokens=10), stop_ids=None)
    assert out == generate(model, [prompt[-246:]], SamplingSettings(max_new_tokens=10), stop_ids=None)
    assert crop_prompt([1, 2, 3], 256, 10) == ([1, 2, 3], 0)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        SamplingSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingSettings(temperature=-1)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingSettings(top_p=1.5)
    with pytest.raises(ValueError, match="must be smaller than the context length"):
        crop_prompt([1], 256, 256)
    with pytest.raises(ValueError, match="the prompt is empty"):
        crop_prompt([], 256, 10)

"""Stop sequences: matching, streaming without the stop, and both decode loops ending on a multi-token stop."""

import random

import pytest
import torch

from gpt2_scratch.generate.engine import Engine
from gpt2_scratch.generate.sampling import SamplingSettings, generate, stream
from gpt2_scratch.generate.stops import StopFilter, StopSequences
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, decode

T = 30  # seconds: the most a test waits for one engine token

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    model, _ = load_model("random:tiny")
    return model


def test_stop_sequences_match_the_end_of_the_answer_only():
    stops = StopSequences([EOS_ID, (3, 4, 5), [4, 5]])
    assert stops.seqs == ((EOS_ID,), (3, 4, 5), (4, 5))
    assert stops.matched([1, 3, 4, 5]) == 3  # the longest that matches
    assert stops.matched([1, 4, 5]) == 2 and stops.matched([EOS_ID]) == 1
    assert stops.matched([3, 4, 5, 1]) == 0 and stops.matched([]) == 0
    assert stops.strip([7, 3, 4, 5]) == [7] and stops.strip([7, 3, 4]) == [7, 3, 4]
    assert stops.pending([7, 3, 4]) == 2 and stops.pending([7, 4]) == 1 and stops.pending([7, 5]) == 0
    assert not StopSequences(None) and not StopSequences(()) and StopSequences((EOS_ID,))
    with pytest.raises(ValueError, match="a stop sequence needs at least one token id"):
        StopSequences([()])


def test_a_filtered_stream_passes_on_what_strip_leaves():
    rng = random.Random(0)
    for _ in range(500):  # random stops over 4 token ids: overlapping prefixes, repeats, nested stops
        stops = StopSequences([tuple(rng.choices(range(4), k=rng.randint(1, 4))) for _ in range(rng.randint(1, 3))])
        ids = []
        for _ in range(rng.randint(0, 30)):  # an answer ends at its first stop, or at its length limit
            ids.append(rng.randrange(4))
            if stops.matched(ids):
                break
        held, shown = StopFilter(stops), []
        for t in ids:
            new = held.push(t)
            assert shown + new == stops.strip(ids)[: len(shown) + len(new)]  # never a token of the stop
            shown += new
        shown += held.flush()
        assert shown == stops.strip(ids)
        assert held.stopped == bool(stops.matched(ids))


def _free_answer(model, prompt, s):
    """The answer without stops and a 3-token stop taken from its middle, with the answer before its first
    occurrence: what both loops must give with that stop."""
    free = generate(model, [prompt], s, stop_ids=None)[0]
    stop = tuple(free[8:11])
    k = next(i for i in range(len(free)) if tuple(free[i : i + 3]) == stop)
    return free, stop, free[:k]


def test_both_loops_stop_on_a_stop_of_several_tokens_and_drop_it(model):
    s = SamplingSettings(max_new_tokens=30, temperature=1.0, seed=3)  # sampled: greedy tiny-model text loops
    prompts = [[10, 20, 30], [5], [7, 8, 9, 10, 11]]
    for prompt in prompts:
        free, stop, expected = _free_answer(model, prompt, s)
        stop_ids = [EOS_ID, stop]
        assert len(expected) < len(free) - 3
        assert generate(model, [prompt], s, stop_ids)[0] == expected
        streamed = list(stream(model, prompt, s, stop_ids))
        assert streamed[-1] == (expected, decode(expected))
        assert all(ids == expected[: len(ids)] for ids, _ in streamed)  # the stop's tokens never shown
        with Engine(model) as engine:
            request = engine.submit(prompt, s, stop_ids=stop_ids)
            assert request.result(timeout=T) == expected and request.finish_reason == "eos"


def test_a_row_stopping_on_several_tokens_leaves_the_batch_and_the_others_run_on(model):
    greedy = SamplingSettings(max_new_tokens=24)
    prompts = [[10, 20, 30], [5], [7, 8, 9, 10, 11]]
    free = generate(model, prompts, greedy, stop_ids=None)
    stop = tuple(free[0][4:6])
    expected = [StopSequences([stop]).strip(f[: _first_end(f, stop)]) for f in free]
    assert generate(model, prompts, greedy, [stop]) == expected
    with Engine(model) as engine:
        assert engine.generate_all(prompts, greedy, [stop]) == expected


def _first_end(ids, stop):
    return next((i + len(stop) for i in range(len(ids)) if tuple(ids[i : i + len(stop)]) == stop), len(ids))


class _Forced(torch.nn.Module):
    """A model whose greedy token at step n is ``script[n]``, in either decode loop."""

    def __init__(self, inner, script):
        super().__init__()
        self.inner, self.script, self.config, self.calls = inner, script, inner.config, 0

    @property
    def device(self):
        return self.inner.device

    def new_cache(self, *a):
        return self.inner.new_cache(*a)

    def forward(self, idx, **kw):
        logits = self.inner(idx, **kw)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] += 1e4
        self.calls += 1
        return logits


@pytest.mark.parametrize("loop", ["generate", "stream", "engine"])
def test_chatml_answers_end_at_the_tokens_of_its_end_marker(model, loop):
    style = get_prompt_style("chatml")
    [marker, eos] = style.stop_ids()
    assert eos == (EOS_ID,) and len(marker) > 1  # <|im_end|> is text to GPT-2: several tokens
    cases = [
        ([101, 102, *marker, 103, 104], [101, 102], "eos"),  # the answer, the marker, then more: cut at the marker
        ([101, *marker[:3], 103, 104], [101, *marker[:3], 103, 104], "length"),  # the marker begun, not finished
        ([101, *marker[:-1]], [101, *marker[:-1]], "length"),  # the limit reached inside the marker: kept
    ]
    for script, expected, reason in cases:
        forced = _Forced(model, script).eval()
        s = SamplingSettings(max_new_tokens=len(script))
        if loop == "generate":
            assert generate(forced, [[1, 2]], s, style.stop_ids()) == [expected]
        elif loop == "stream":
            streamed = list(stream(forced, [1, 2], s, style.stop_ids()))
            assert streamed[-1][0] == expected
            assert all(ids == expected[: len(ids)] for ids, _ in streamed)
        else:
            with Engine(forced) as engine:
                request = engine.submit([1, 2], s, stop_ids=style.stop_ids())
                assert request.result(timeout=T) == expected and request.finish_reason == reason

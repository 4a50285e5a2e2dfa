"""The continuous-batching engine: solo-identical tokens under load, joins, cancels, caps, errors, close."""

import random
import threading
import time

import pytest
import torch

import gpt2_scratch.generate.engine as serving
from gpt2_scratch.generate.engine import Engine, EngineBusy, EngineClosed, EngineError, Request
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import EOS_ID, decode

T = 30  # seconds: the most any test waits for one token (the tiny model makes hundreds per second)


@pytest.fixture(scope="module")
def model():
    model, _ = load_model("random:tiny")  # block_size 256
    return model


@pytest.fixture
def engines():
    """Engines made with ``engines(model, **options)``, all closed after the test."""
    made = []

    def make(model, **options):
        made.append(Engine(model, **options))
        return made[-1]

    yield make
    for e in made:
        e.close()
        assert not e._worker.is_alive()


def held_steps(monkeypatch) -> threading.Event:
    """Make every engine step wait until the returned event is set (up to ``T`` seconds)."""
    gate = threading.Event()
    forward = serving._forward_rows
    monkeypatch.setattr(serving, "_forward_rows", lambda m, rows: gate.wait(T) and forward(m, rows))
    return gate


def _prompts(n, seed=0, max_len=40):
    g = random.Random(seed)
    return [[g.randrange(EOS_ID) for _ in range(g.randint(1, max_len))] for _ in range(n)]


def _solo(model, prompt, settings):
    return generate(model, [prompt], settings)[0]


def _wait_until(condition, what):
    deadline = time.monotonic() + T
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def test_forward_rows_is_bit_identical_to_each_row_alone(model):
    # The mechanism behind solo identity: a prefill and two decoding rows in one ragged pass.
    prompts = _prompts(3, seed=1)
    rows, alone = [], []
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            cache, solo_cache = model.new_cache(1, 64), model.new_cache(1, 64)
            if i > 0:  # rows 1 and 2 are decoding: their prompt is already cached
                model(torch.tensor([p]), cache=cache)
                model(torch.tensor([p]), cache=solo_cache)
                feed = [7 * i]
                alone.append(
                    model(
                        torch.tensor([feed]), cache=solo_cache, position_ids=torch.tensor([[len(p)]]), last_only=True
                    )[0, -1]
                )
            else:
                feed = p
                alone.append(model(torch.tensor([p]), cache=solo_cache, last_only=True)[0, -1])
            rows.append(serving._Row(Request(p, SamplingSettings(), 0), cache, None, feed))
        together = serving._forward_rows(model, rows)
    assert together.shape == (3, model.config.vocab_size)
    for i in range(3):
        assert torch.equal(together[i], alone[i]), f"row {i} differs from the same row alone"
    assert [r.cache.length for r in rows] == [len(prompts[0]), len(prompts[1]) + 1, len(prompts[2]) + 1]


def test_concurrent_requests_match_solo_runs_greedy_and_seeded(model, engines):
    n = 8
    prompts = _prompts(n, seed=2)
    settings = [
        SamplingSettings(
            max_new_tokens=6 + 3 * i,
            temperature=0.0 if i % 3 == 0 else 0.7 + 0.1 * i,
            top_k=None if i % 2 else 50,
            top_p=0.9 if i % 4 == 1 else None,
            seed=100 + i,
        )
        for i in range(n)
    ]
    expected = [_solo(model, p, s) for p, s in zip(prompts, settings)]
    engine = engines(model, max_rows=4, max_prefill_tokens=64)  # fewer rows than clients: some wait
    got, texts, errors = [None] * n, [None] * n, []
    start = threading.Barrier(n)

    def client(i):
        try:
            start.wait()
            time.sleep(0.003 * (i % 4))  # arrive at different steps
            request = engine.submit(prompts[i], settings[i])
            if i % 2:
                steps = list(request.stream(timeout=T))
                got[i], texts[i] = steps[-1] if steps else ([], "")
            else:
                got[i] = request.result(timeout=T)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * T)
    assert not errors
    for i in range(n):
        assert got[i] == expected[i], f"request {i} ({settings[i]}) differs from its solo run"
        if i % 2:
            assert texts[i] == decode(expected[i])
    assert engine.steps < sum(len(e) for e in expected)  # the rows did share steps


def test_a_request_joins_mid_generation(model, engines):
    engine = engines(model)
    long_prompt, short_prompt = _prompts(2, seed=3)
    s_long = SamplingSettings(max_new_tokens=120, temperature=1.0, seed=5)
    s_short = SamplingSettings(max_new_tokens=20)
    a = engine.submit(long_prompt, s_long)
    tokens = a.tokens(timeout=T)
    a_ids = [next(tokens) for _ in range(5)]  # a is running
    b = engine.submit(short_prompt, s_short)
    a_ids += list(tokens)
    b_ids = b.result(timeout=T)
    assert a.step_joined < b.step_joined < a.step_finished
    assert (a_ids, b_ids) == (_solo(model, long_prompt, s_long), _solo(model, short_prompt, s_short))
    assert (a.finish_reason, b.finish_reason) == ("length", "length")


def test_cancel_stops_only_that_row(model, engines):
    engine = engines(model, stop_ids=None)
    prompts = _prompts(3, seed=4)
    s = SamplingSettings(max_new_tokens=150, temperature=0.9, seed=1)
    requests = [engine.submit(p, s) for p in prompts]
    cancelled = []
    for token in requests[1].tokens(timeout=T):  # leaving the loop cancels the request
        cancelled.append(token)
        if len(cancelled) == 3:
            break
    assert requests[1].cancelled
    steps_at_cancel = engine.steps
    others = [requests[0].result(timeout=T), requests[2].result(timeout=T)]
    solo = [generate(model, [p], s, stop_ids=None)[0] for p in prompts]
    assert others == [solo[0], solo[2]]
    assert cancelled == solo[1][:3]
    assert requests[1].finish_reason == "cancelled"
    # It left at the next step boundary; the others went on to their 150 tokens.
    assert requests[1].step_finished <= steps_at_cancel + 1 < requests[0].step_finished - 100
    assert [r.finish_reason for r in (requests[0], requests[2])] == ["length", "length"]


def test_cancelling_a_waiting_request_frees_its_place(model, engines, monkeypatch):
    gate = held_steps(monkeypatch)
    engine = engines(model, max_rows=1, max_waiting=1)
    s = SamplingSettings(max_new_tokens=5)
    running = engine.submit([1, 2, 3], s)
    _wait_until(lambda: engine.running == 1, "the first request runs")
    waiting = engine.submit([4, 5], s)
    waiting.cancel()
    third = engine.submit([6], s)  # no EngineBusy: the cancelled request gave its place up
    gate.set()
    assert waiting.result(timeout=T) == [] and waiting.finish_reason == "cancelled"
    assert running.result(timeout=T) == _solo(model, [1, 2, 3], s)
    assert third.result(timeout=T) == _solo(model, [6], s)


def test_a_full_queue_says_busy_instead_of_hanging(model, engines, monkeypatch):
    gate = held_steps(monkeypatch)
    engine = engines(model, max_rows=1, max_waiting=2)
    s = SamplingSettings(max_new_tokens=4)
    first = engine.submit([1], s)
    _wait_until(lambda: engine.running == 1, "the first request runs")
    queued = [engine.submit([2], s), engine.submit([3], s)]
    assert engine.waiting == 2
    with pytest.raises(EngineBusy, match=r"busy \(2 requests waiting\); try again in a moment"):
        engine.submit([4], s)
    gate.set()
    assert [r.result(timeout=T) for r in [first, *queued]] == [_solo(model, [t], s) for t in (1, 2, 3)]
    assert engine.submit([4], s).result(timeout=T) == _solo(model, [4], s)  # room again


def test_eos_ends_a_row_and_is_not_returned(model, engines):
    prompt = _prompts(1, seed=5)[0]
    s = SamplingSettings(max_new_tokens=30, temperature=1.0, seed=3)  # sampled: greedy tiny-model text loops
    free = generate(model, [prompt], s, stop_ids=None)[0]
    k = next(i for i in range(3, len(free)) if free[i] not in free[:i])  # a token first made at step k
    engine = engines(model, stop_ids=(free[k],))
    request = engine.submit(prompt, s)
    assert request.result(timeout=T) == free[:k] == generate(model, [prompt], s, stop_ids=(free[k],))[0]
    assert request.finish_reason == "eos"


def test_a_worker_error_reaches_every_request_and_the_engine_serves_on(model, engines, monkeypatch):
    def broken(m, rows):
        time.sleep(0.05)  # let every request join the failing step
        raise RuntimeError("boom")

    monkeypatch.setattr(serving, "_forward_rows", broken)
    engine = engines(model)
    requests = [engine.submit(p, SamplingSettings(max_new_tokens=5)) for p in _prompts(3, seed=6)]
    for r in requests:
        with pytest.raises(EngineError, match=r"generation failed \(RuntimeError: boom\)"):
            r.result(timeout=T)
        assert r.finish_reason == "error"
    monkeypatch.undo()
    s = SamplingSettings(max_new_tokens=5)
    assert engine.submit([1, 2], s).result(timeout=T) == _solo(model, [1, 2], s)


def test_a_bug_in_the_worker_loop_fails_every_request_and_closes_the_engine(model, engines, monkeypatch):
    gate = held_steps(monkeypatch)
    monkeypatch.setattr(Request, "_put", lambda self, token: 1 / 0)  # outside the step's error handling
    engine = engines(model, max_rows=1)
    running = engine.submit([1, 2], SamplingSettings(max_new_tokens=5))
    _wait_until(lambda: engine.running == 1, "the first request runs")
    waiting = engine.submit([3], SamplingSettings(max_new_tokens=5))
    gate.set()
    for r in (running, waiting):
        with pytest.raises(EngineError, match=r"generation failed \(ZeroDivisionError: division by zero\)"):
            r.result(timeout=T)
        assert r.finish_reason == "error"
    assert engine.closed
    with pytest.raises(EngineClosed, match="the engine is closed"):
        engine.submit([1], SamplingSettings(max_new_tokens=2))


def test_close_ends_running_requests_and_refuses_new_ones(model):
    engine = Engine(model, stop_ids=None)
    request = engine.submit([1, 2, 3], SamplingSettings(max_new_tokens=240))
    tokens = request.tokens(timeout=T)
    next(tokens)
    engine.close()
    assert not engine._worker.is_alive()
    with pytest.raises(EngineClosed, match="the engine was closed"):
        list(tokens)
    assert request.finish_reason == "closed" and engine.closed
    with pytest.raises(RuntimeError, match="can be read only once"):
        next(request.tokens())
    with pytest.raises(EngineClosed, match="the engine is closed"):
        engine.submit([1], SamplingSettings(max_new_tokens=2))


def test_generate_all_refills_rows_and_matches_solo_runs(model, engines):
    prompts = _prompts(7, seed=7)
    settings = [SamplingSettings(max_new_tokens=5 + 9 * (i % 3), temperature=0.8 * (i % 2), seed=i) for i in range(7)]
    engine = engines(model, max_rows=3, max_waiting=1)  # generate_all waits for room instead of failing
    assert engine.generate_all(prompts, settings) == [_solo(model, p, s) for p, s in zip(prompts, settings)]
    one = SamplingSettings(max_new_tokens=6)
    assert engine.generate_all(prompts[:2], one) == [_solo(model, p, one) for p in prompts[:2]]


def test_long_prompts_are_cropped_like_generate(model, engines):
    engine = engines(model)
    prompt = list(range(300))  # the context is 256
    s = SamplingSettings(max_new_tokens=10)
    request = engine.submit(prompt, s)
    assert request.cropped == 54 and request.prompt == prompt[54:]
    with pytest.warns(UserWarning, match="kept its last 246"):
        expected = _solo(model, prompt, s)
    assert request.result(timeout=T) == expected


def test_bad_input_is_a_clear_error(model, engines):
    with pytest.raises(ValueError, match="max_rows must be a positive integer"):
        Engine(model, max_rows=0)
    engine = engines(model)
    with pytest.raises(ValueError, match=r"prompt token ids must be integers in \[0, 50257\)"):
        engine.submit([1, 50257], SamplingSettings(max_new_tokens=5))
    with pytest.raises(ValueError, match="prompt token ids must be integers"):
        engine.submit([1.5], SamplingSettings(max_new_tokens=5))
    with pytest.raises(ValueError, match="must be smaller than the context length"):
        engine.submit([1], SamplingSettings(max_new_tokens=256))
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.submit([], SamplingSettings(max_new_tokens=5))
    with pytest.raises(TypeError, match="settings must be a SamplingSettings"):
        engine.submit([1], {"max_new_tokens": 5})


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def adapted(request):
    """``random:tiny`` with rank-4 LoRA adapters (seeded noise on B, so they change the answers), kept apart
    and converted to the format of the parameter: the engine's model; its ``lora.base_view`` is the base."""
    from gpt2_scratch import lora
    from gpt2_scratch.inference import to_inference
    from gpt2_scratch.loading import load_gpt

    model = load_gpt("random:tiny")[0]
    lora.inject(model, lora.LoRAConfig(rank=4), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
    model = to_inference(model.eval(), request.param)  # the inference layers under the adapters
    return model, lora.base_view(model)


def test_rows_with_and_without_the_adapter_share_steps_and_match_each_model_alone(adapted, engines, monkeypatch):
    model, base = adapted
    prompts = _prompts(6, seed=7)
    settings = [SamplingSettings(max_new_tokens=8, temperature=0.0 if i % 2 else 0.9, seed=i) for i in range(6)]
    adapter = [i % 3 != 0 for i in range(6)]  # rows 0 and 3: the base model
    expected = [_solo(model if a else base, p, s) for p, s, a in zip(prompts, settings, adapter)]
    # The adapter changes the greedy answers, both ways.
    assert expected[1] != _solo(base, prompts[1], settings[1]) and expected[3] != _solo(model, prompts[3], settings[3])
    engine = engines(model, max_rows=6)
    gate = threading.Event()
    forward = serving._forward_rows
    serving_steps = []

    def held(m, rows):
        gate.wait(T)
        serving_steps.append(sorted(r.request.adapter for r in rows))
        return forward(m, rows)

    monkeypatch.setattr(serving, "_forward_rows", held)
    requests = [engine.submit(p, s, adapter=a) for p, s, a in zip(prompts, settings, adapter)]
    gate.set()  # all six are waiting: they join at the first step
    got = [r.result(timeout=T) for r in requests]
    assert got == expected
    assert [r.adapter for r in requests] == adapter
    assert serving_steps[0] == sorted(adapter)  # the first step decoded both kinds of rows together


def test_a_model_without_adapters_ignores_adapter_false(model, engines):
    prompt, settings = _prompts(1, seed=8)[0], SamplingSettings(max_new_tokens=5)
    request = engines(model).submit(prompt, settings, adapter=False)
    assert request.result(timeout=T) == _solo(model, prompt, settings) and request.adapter


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int4"])
def test_the_engine_gives_each_row_its_solo_tokens_in_every_format(dtype, engines, monkeypatch):
    """Greedy and seeded rows batched in the engine get what ``generate`` gives each alone, whatever the kernels."""
    model, _ = load_model("random:tiny", dtype=dtype)
    prompts = _prompts(6, seed=11)
    settings = [SamplingSettings(max_new_tokens=12, temperature=0.0 if i % 2 else 0.8, seed=i) for i in range(6)]
    expected = [_solo(model, p, s) for p, s in zip(prompts, settings)]
    engine = engines(model, max_rows=6)
    gate = held_steps(monkeypatch)  # every request waits before the first step: they all share it
    requests = [engine.submit(p, s) for p, s in zip(prompts, settings)]
    gate.set()
    assert [r.result(timeout=T) for r in requests] == expected
    assert engine.steps < sum(len(e) + 1 for e in expected)  # the rows shared steps

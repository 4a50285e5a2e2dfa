"""The app's generations through the batching engines: many visitors at once, joins, Stop, "busy".

The run is the demo conftest's ``finished_run`` (base ``random:tiny``, a finetuned
checkpoint). Where requests must overlap, each engine step is slowed down a
little (``serving._forward_rows`` wrapped), since the tiny model answers in
milliseconds.
"""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import pytest
from gradio_client import Client

import gpt2_scratch.generate.engine as serving
from gpt2_scratch.demo import GRADIO_THREADS, Batched, DemoApp, PerRequest, build_demo, start
from gpt2_scratch.prompts import get_prompt_style
from tests.fixtures.demo import PROMPTS, greedy_args

# Gradio's own queue code trips pandas deprecation warnings; handlers' toasts are UserWarnings outside a request.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting", "ignore:The copy keyword", "ignore::UserWarning"
)

T = 60  # seconds: the most a test waits for an answer


@pytest.fixture
def slow_steps(monkeypatch):
    """Each engine step takes 10 ms more; returns the list of the steps' row counts, filled as they run."""
    rows_per_step: list[int] = []
    real = serving._forward_rows

    def slowed(model, rows):
        rows_per_step.append(len(rows))
        time.sleep(0.01)
        return real(model, rows)

    monkeypatch.setattr(serving, "_forward_rows", slowed)
    return rows_per_step


def submitted(app: DemoApp, lazy) -> list[serving.Request]:
    """The requests that ``lazy``'s engine receives from now on (its engine is started here)."""
    engine = app.backend.engine(lazy.get())
    requests: list[serving.Request] = []
    real = engine.submit

    def submit(*args, **kwargs):
        requests.append(real(*args, **kwargs))
        return requests[-1]

    engine.submit = submit
    return requests


@pytest.fixture
def batched_app(finished_run):
    app = DemoApp.from_run(finished_run, backend=Batched())
    yield app
    app.close()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + T
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


# --------------------------------------------------------------------------- through HTTP


@pytest.fixture
def served(batched_app):
    """(client, app) for the batched app served on a free port, with app.py's thread count."""
    demo = build_demo(batched_app)
    url = start(demo, host="127.0.0.1", port=None, max_threads=GRADIO_THREADS + batched_app.backend.concurrency_limit)
    try:
        yield Client(url, verbose=False, analytics_enabled=False, download_files=False), batched_app
    finally:
        demo.close()


def _visitor(client: Client) -> Client:
    """Another visitor (its own Gradio session) of the app ``client`` talks to."""
    return Client(client.src, verbose=False, analytics_enabled=False, download_files=False)


def test_sixteen_visitors_at_once_all_get_their_greedy_text(served, greedy, slow_steps):
    client, app = served
    expected = {p: greedy("random:tiny", p, 16) for p in PROMPTS}
    visitors = [_visitor(client) for _ in range(16)]
    jobs = [(p, v.submit(p, *greedy_args(16), api_name="/generate_base")) for p, v in zip(PROMPTS * 4, visitors)]
    answers = [(p, job.result(timeout=T)) for p, job in jobs]
    for p, (text, status) in answers:
        assert text == expected[p]
        assert "16 new tokens in" in status
    assert max(slow_steps) >= 8  # they really were decoded together, not one after another
    assert len(slow_steps) < 16 * 16 / 2


def test_a_visitor_joins_while_another_generates(served, greedy, slow_steps):
    client, app = served
    requests = submitted(app, app.base)
    first = client.submit(PROMPTS[0], *greedy_args(120), api_name="/generate_base")
    _wait_until(lambda: len(first.outputs()) > 5, "the first visitor sees tokens")
    second = client.submit(PROMPTS[1], *greedy_args(16), api_name="/generate_base")
    assert second.result(timeout=T)[0] == greedy("random:tiny", PROMPTS[1], 16)
    assert first.result(timeout=T)[0] == greedy("random:tiny", PROMPTS[0], 120)
    a, b = requests
    assert 0 < b.step_joined < a.step_finished  # joined the running batch mid-generation
    assert b.step_finished < a.step_finished


def test_generation_events_reach_the_engine_together(batched_app, finished_run):
    limits = {fn.api_name: fn.concurrency_limit for fn in build_demo(batched_app).fns.values() if fn.api_name}
    # No Gradio limit: every request reaches its engine at once, which queues it (issue 19 item 18).
    assert limits["generate_base"] is None and limits["generate_side_by_side"] is None
    unbatched = DemoApp.from_run(finished_run)  # PerRequest: Gradio's default limit (app.py --concurrency)
    limits = {fn.api_name: fn.concurrency_limit for fn in build_demo(unbatched).fns.values() if fn.api_name}
    assert limits["generate_base"] == "default"


# --------------------------------------------------------------------------- handlers


def test_stop_cancels_only_that_visitors_row(batched_app, greedy, slow_steps):
    requests = submitted(batched_app, batched_app.base)
    stopped = batched_app.generate_base(PROMPTS[0], *greedy_args(200))
    other = batched_app.generate_base(PROMPTS[1], *greedy_args(24))
    for _ in range(4):  # both are generating
        next(stopped), next(other)
    stopped.close()  # what Gradio does on Stop
    _wait_until(lambda: requests[0].finish_reason is not None, "the stopped row leaves")
    assert requests[0].finish_reason == "cancelled"
    assert requests[1].finish_reason is None  # the other visitor's row goes on
    *_, (text, status) = other
    assert text == greedy("random:tiny", PROMPTS[1], 24) and "24 new tokens in" in status
    assert requests[1].finish_reason == "length"


def test_stop_in_side_by_side_cancels_both_of_its_rows(batched_app, finished_run, slow_steps):
    base_requests = submitted(batched_app, batched_app.base)
    ft_requests = submitted(batched_app, batched_app.finetuned)
    side = batched_app.generate_side_by_side("Name a color.", "", *greedy_args(200))
    for _ in range(4):
        next(side)
    side.close()
    _wait_until(lambda: base_requests[0].finish_reason and ft_requests[0].finish_reason, "both rows leave")
    assert (base_requests[0].finish_reason, ft_requests[0].finish_reason) == ("cancelled", "cancelled")


def test_side_by_side_feeds_both_engines_at_once(batched_app, finished_run, greedy):
    base_requests = submitted(batched_app, batched_app.base)
    ft_requests = submitted(batched_app, batched_app.finetuned)
    outputs = batched_app.generate_side_by_side("Name a color.", "", *greedy_args(24))
    next(outputs)  # the first update: both requests are in their engines already
    assert len(base_requests) == len(ft_requests) == 1
    *_, (base, finetuned, _) = outputs
    prompt = get_prompt_style("alpaca").format("Name a color.")
    assert base == greedy("random:tiny", prompt) and finetuned == greedy(finished_run.final, prompt)


def test_a_full_queue_says_busy_in_the_tab(finished_run, slow_steps):
    app = DemoApp.from_run(finished_run, backend=Batched(max_rows=1, max_waiting=1))
    try:
        requests = submitted(app, app.base)
        running = app.generate_base(PROMPTS[0], *greedy_args(200))
        next(running), next(running)
        _wait_until(lambda: requests[0].step_joined is not None, "the first request has the row")
        waiting = app.generate_base(PROMPTS[1], *greedy_args(8))
        next(waiting)  # submitted: it waits for the row
        started = time.monotonic()
        outputs = list(app.generate_base(PROMPTS[2], *greedy_args(8)))
        assert time.monotonic() - started < 5  # at once, not after the others
        assert outputs == [
            ("", "⚠️ The demo is busy (1 being answered, 1 waiting: its limit). Try again in about 25 s.")
        ]
        running.close()  # the row frees up: the waiting one is served
        assert list(waiting)[-1][1].startswith("8 new tokens in")
    finally:
        app.close()


def test_per_request_path_runs_generation_stream(finished_run, greedy):
    app = DemoApp.from_run(finished_run, backend=PerRequest())
    engines = [t for t in threading.enumerate() if t.name == "gpt2-engine"]
    *_, (text, _) = app.generate_base(PROMPTS[0], *greedy_args(24))
    assert text == greedy("random:tiny", PROMPTS[0])
    assert [t for t in threading.enumerate() if t.name == "gpt2-engine"] == engines  # no engine started


def test_a_cancelled_http_request_frees_its_row(served, greedy, slow_steps):
    """What Stop does over HTTP (Gradio closes the handler's generator): that visitor's row leaves, others go on."""
    client, app = served
    visitor = _visitor(client)  # Stop cancels a session's events: the other visitor has its own
    requests = submitted(app, app.base)
    stopped = client.submit(PROMPTS[0], *greedy_args(200), api_name="/generate_base")
    other = visitor.submit(PROMPTS[1], *greedy_args(100), api_name="/generate_base")
    _wait_until(lambda: len(stopped.outputs()) > 3 and len(requests) == 2, "both visitors see tokens")
    stopped.cancel()
    by_length = {r.settings.max_new_tokens: r for r in requests}
    _wait_until(lambda: by_length[200].finish_reason is not None, "the cancelled row leaves")
    assert by_length[200].finish_reason == "cancelled"
    assert by_length[100].finish_reason is None  # the other visitor's row goes on
    assert other.result(timeout=T)[0] == greedy("random:tiny", PROMPTS[1], 100)
    assert by_length[100].finish_reason == "length"


def test_paced_streams_skip_updates_within_the_interval_but_never_the_last():
    from gpt2_scratch.demo.generate.backends import paced

    assert list(paced(iter([]), 1.0)) == []
    assert list(paced(iter([1, 2, 3, 4]), 3600.0)) == [1, 4]  # the first, then only the last
    assert list(paced(iter([1, 2, 3]), 0.0)) == [1, 2, 3]  # no interval: every item
    slow = (time.sleep(0.02) or i for i in range(3))  # items further apart than the interval all pass
    assert list(paced(slow, 0.01)) == [0, 1, 2]


def test_the_results_tabs_events_run_one_at_a_time_in_the_order_triggered(finished_run):
    # The page load's chain of updates must not finish after (and overwrite) the one a later choice started.
    fns = build_demo(DemoApp.from_run(finished_run)).fns.values()
    results = [fn for fn in fns if fn.concurrency_id == "results"]
    assert {fn.concurrency_limit for fn in results} == {1}
    assert {fn.api_name for fn in results} >= {"filter_predictions"} and len(results) > 10

"""How the app runs a generation: each request on its own, or every request to a model in one batch.

Entry point: ``choose_backend(batching=, max_rows=, max_waiting=)`` -> ``PerRequest`` (each request
runs ``sampling.stream`` in its Gradio worker thread: ``app.py --no-batching``, and ZeroGPU Spaces,
where a background worker cannot hold the GPU) or ``Batched`` (one ``engine.Engine`` per model,
made on first use; the engine is the queue: a burst waits and sees its place, and beyond
``max_waiting`` a visitor is told at once how long to wait; the cap is sized in docs/queue.md).
A LoRA model's base (``lora.base_view``) has no engine of its own: its requests join the finetuned
model's batch with the adapter off (``Engine.submit(adapter=False)``), so side by side is one batch.
Invariant: either way ``stream(model, prompt ids, settings, stop ids)`` yields (new token ids so far, their
text so far), and its ``close()`` (Gradio's Stop) ends that request only. Design: docs/design.md.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

from gpt2_scratch import lora
from gpt2_scratch.demo.inputs import UserError
from gpt2_scratch.generate.engine import Engine, EngineBusy, EngineClosed, Request
from gpt2_scratch.generate.sampling import SamplingSettings, stream
from gpt2_scratch.generate.stops import StopIds
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID

log = logging.getLogger(__name__)

# The queue cap, sized from measurements (docs/queue.md, benchmarks/bench_queue.py; 124M on 2 CPU cores).
DEFAULT_MAX_ROWS = 16  # rows decoded together per model: 16 KV caches of at most 72 MB (float32, 1024 tokens)
DEFAULT_MAX_WAITING = 64  # requests that may wait for a row; one more is told how long to wait
# Seconds one 128-token answer takes in a full batch of the 124M model on 2 CPU cores (docs/queue.md): the
# wait estimate until the app has measured its own answers.
DEFAULT_ANSWER_SECONDS = 12.0
WAIT_POLL_S = 0.5  # how often a waiting visitor's place in the queue is shown again (and when it changes)
WAIT_CHECK_S = 0.02  # how often it is looked up: a request that gets its row goes on within this
ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set to "true" on ZeroGPU Spaces (as the spaces package reads it)
# The most often a visitor's page is updated while it streams. Each update costs Gradio's server threads work
# (a diff, an event to the browser) that competes with the decoding thread for the GIL; per-token updates cost
# a lone visitor about a quarter of the decoding rate (docs/performance.md). Faster decoding sends several
# tokens per update.
UPDATE_INTERVAL_S = 0.05


class TokenStream(Protocol):
    """(new token ids so far, their text so far) after every token; ``close()`` stops the generation."""

    def __iter__(self) -> Iterator[tuple[list[int], str]]: ...

    def __next__(self) -> tuple[list[int], str]: ...

    def close(self) -> None: ...


class PerRequest:
    """Each request generates on its own (``sampling.stream``), in the thread that serves it."""

    batching = False
    concurrency_limit: int | None = None  # no generation beyond Gradio's own (app.py --concurrency)
    gradio_limit = "default"  # the generation events' Gradio limit: the queue's default (app.py --concurrency)

    def stream(
        self, model: GPT, ids: Sequence[int], settings: SamplingSettings, stop_ids: StopIds = (EOS_ID,)
    ) -> TokenStream:
        """The generation as an iterator; nothing runs until it is first read."""
        return stream(model, ids, settings, stop_ids)

    def waiting(self, streams: Iterable[TokenStream]) -> Iterator[str]:
        """Nothing: requests wait in Gradio's queue, which shows the place itself."""
        return iter(())

    def close(self) -> None:
        """Nothing to stop: each generation ends with its request."""


T = TypeVar("T")


def paced(items: Iterable[T], interval: float | None = None) -> Iterator[T]:
    """``items``, leaving out those that come within ``interval`` seconds (default ``UPDATE_INTERVAL_S``) of the
    last one passed on; the last item always passes. For streams of cumulative text: nothing is lost, updates
    just come less often."""
    interval = UPDATE_INTERVAL_S if interval is None else interval
    last, pending, held = -math.inf, None, False
    for item in items:
        now = time.monotonic()
        if now - last >= interval:
            last, held = now, False
            yield item
        else:
            pending, held = item, True
    if held:
        yield pending


class RequestStream:
    """A request submitted to an engine, read as text; ``close()`` cancels it, read or not.

    ``on_answer(seconds)`` is told how long a finished answer took from its first token.
    """

    def __init__(self, request: Request, engine: Engine, on_answer: Callable[[float], None] | None = None):
        self.request = request
        self.engine = engine
        self._texts = request.stream()
        self._first: float | None = None
        self._on_answer = on_answer

    def place(self) -> int | None:
        """Requests waiting ahead of this one; None once it decodes (or has ended)."""
        return self.engine.place(self.request)

    def __iter__(self) -> "RequestStream":
        return self

    def __next__(self) -> tuple[list[int], str]:
        try:
            item = next(self._texts)
        except StopIteration:
            if self._first is not None and self._on_answer and self.request.finish_reason in ("eos", "length"):
                self._on_answer(time.perf_counter() - self._first)
            raise
        if self._first is None:
            self._first = time.perf_counter()
        return item

    def close(self) -> None:
        """Cancel the request (its row leaves the batch at the next step) unless it has finished."""
        self._texts.close()
        self.request.cancel()  # also when it was never read: an unstarted generator's close() runs nothing


class Batched:
    """Every request to a model joins one running batch: one ``engine.Engine`` per model, made on first use."""

    batching = True
    gradio_limit = None  # every request reaches its engine at once: the engine queues, and refuses beyond its cap

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, max_waiting: int = DEFAULT_MAX_WAITING):
        for name, value in (("max rows per batch", max_rows), ("max waiting requests", max_waiting)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self._engines: dict[int, tuple[GPT, Engine]] = {}  # by id(model); the model is held so the id stays its own
        self._lock = threading.Lock()
        self._closed = False
        self.answer_seconds = DEFAULT_ANSWER_SECONDS  # a moving average of the answers measured here

    @property
    def concurrency_limit(self) -> int:
        """Generations the engines hold at once (a row or a waiting place each): each holds a Gradio
        worker thread while it waits for its next token, so ``app.py`` adds this many threads."""
        return self.max_rows + self.max_waiting

    def _answered(self, seconds: float) -> None:
        with self._lock:
            self.answer_seconds = 0.8 * self.answer_seconds + 0.2 * seconds

    def expected_wait(self, ahead: int) -> int:
        """Seconds, rounded up to 5, until a request with ``ahead`` requests before it has answered:
        every ``max_rows`` of them take about one answer's time, and so does its own."""
        return 5 * math.ceil((ahead // self.max_rows + 1) * self.answer_seconds / 5)

    def busy_message(self) -> str:
        """What a request beyond the cap is told at once: how busy the demo is, and how long to wait."""
        return (
            f"The demo is busy ({self.max_rows} being answered, {self.max_waiting} waiting: its limit). "
            f"Try again in about {self.expected_wait(self.max_waiting)} s."
        )

    def waiting(self, streams: Iterable[RequestStream]) -> Iterator[str]:
        """While any of ``streams`` waits for a row: a status line with its place in the queue, again when the
        place changes or every ``WAIT_POLL_S``. Returns at once for a request that has its row."""
        streams, shown, last = list(streams), None, 0.0
        while places := [p for s in streams if (p := s.place()) is not None]:
            ahead = max(places)
            if ahead != shown or time.monotonic() - last >= WAIT_POLL_S:
                shown, last = ahead, time.monotonic()
                yield (
                    f"Waiting for a place in the batch: {ahead} request{'s' * (ahead != 1)} ahead of yours "
                    f"(about {self.expected_wait(ahead)} s)."
                )
            time.sleep(WAIT_CHECK_S)

    def engine(self, model: GPT) -> Engine:
        """``model``'s engine, started with its first request (again if its worker stopped on a bug)."""
        with self._lock:
            if self._closed:
                raise UserError("The app is shutting down; try again in a moment.")
            held = self._engines.get(id(model))
            if held is None or held[1].closed:
                if held is not None:
                    log.error("the engine of %s had stopped; starting a new one", type(model).__name__)
                engine = Engine(model, max_rows=self.max_rows, max_waiting=self.max_waiting)
                self._engines[id(model)] = (model, engine)
                return engine
            return held[1]

    def stream(
        self, model: GPT, ids: Sequence[int], settings: SamplingSettings, stop_ids: StopIds = (EOS_ID,)
    ) -> RequestStream:
        """Submit the request now (so two models' requests run together) and return its stream.

        ``model`` a ``lora.base_view``: the request runs in the viewed model's engine, adapter off.
        A full waiting queue is a ``UserError`` saying how long to wait, at once.
        """
        viewed = lora.view_of(model)
        engine = self.engine(viewed if viewed is not None else model)
        try:
            request = engine.submit(ids, settings, adapter=viewed is None, stop_ids=stop_ids)
            return RequestStream(request, engine, self._answered)
        except EngineBusy:
            raise UserError(self.busy_message()) from None
        except EngineClosed:
            raise UserError("The app is shutting down; try again in a moment.") from None

    def close(self) -> None:
        """Stop every engine; their unfinished requests end, new ones are refused."""
        with self._lock:
            self._closed = True
            engines = [engine for _, engine in self._engines.values()]
            self._engines.clear()
        for engine in engines:
            engine.close()


Backend = PerRequest | Batched


def on_zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space (its GPU exists only inside each ``spaces.GPU`` call)."""
    return os.environ.get(ZERO_GPU_ENV, "").lower() in ("1", "t", "true")


def choose_backend(
    *, batching: bool = True, max_rows: int = DEFAULT_MAX_ROWS, max_waiting: int = DEFAULT_MAX_WAITING
) -> tuple[Backend, str | None]:
    """(the backend, a note when batching was asked for but is off): ``Batched``, except with
    ``batching=False`` or on a ZeroGPU Space, where a background worker cannot hold the GPU."""
    if not batching:
        return PerRequest(), None
    if on_zero_gpu():
        return PerRequest(), (
            "Batching is off on a ZeroGPU Space (the GPU exists only inside each request's "
            "spaces.GPU call): each request generates on its own."
        )
    return Batched(max_rows, max_waiting), None

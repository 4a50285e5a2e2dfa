"""How the app runs a generation: each request on its own, or every request to a model in one batch.

Entry point: ``choose_backend(batching=, max_rows=, max_waiting=)`` -> ``PerRequest`` (each request
runs ``sampling.stream`` in its Gradio worker thread: ``app.py --no-batching``, and ZeroGPU Spaces,
where a background worker cannot hold the GPU) or ``Batched`` (one ``engine.Engine`` per model,
made on first use; a full waiting queue answers "busy" at once).
Invariant: either way ``stream(model, prompt ids, settings)`` yields (new token ids so far, their
text so far), and its ``close()`` (Gradio's Stop) ends that request only. Design: docs/design.md.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterator, Protocol, Sequence

from gpt2_scratch.generate.engine import Engine, EngineBusy, EngineClosed, Request
from gpt2_scratch.generate.sampling import SamplingSettings, stream
from gpt2_scratch.model import GPT

from .inputs import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 16  # rows decoded together per model
DEFAULT_MAX_WAITING = 64  # requests that may wait for a row; one more is told "busy"
ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set to "true" on ZeroGPU Spaces (as the spaces package reads it)


class TokenStream(Protocol):
    """(new token ids so far, their text so far) after every token; ``close()`` stops the generation."""

    def __iter__(self) -> Iterator[tuple[list[int], str]]: ...

    def __next__(self) -> tuple[list[int], str]: ...

    def close(self) -> None: ...


class PerRequest:
    """Each request generates on its own (``sampling.stream``), in the thread that serves it."""

    batching = False
    concurrency_limit: int | None = None  # Gradio's default limit (app.py --concurrency) applies

    def stream(self, model: GPT, ids: Sequence[int], settings: SamplingSettings) -> TokenStream:
        """The generation as an iterator; nothing runs until it is first read."""
        return stream(model, ids, settings)

    def close(self) -> None:
        """Nothing to stop: each generation ends with its request."""


class RequestStream:
    """A request submitted to an engine, read as text; ``close()`` cancels it, read or not."""

    def __init__(self, request: Request):
        self.request = request
        self._texts = request.stream()

    def __iter__(self) -> "RequestStream":
        return self

    def __next__(self) -> tuple[list[int], str]:
        return next(self._texts)

    def close(self) -> None:
        """Cancel the request (its row leaves the batch at the next step) unless it has finished."""
        self._texts.close()
        self.request.cancel()  # also when it was never read: an unstarted generator's close() runs nothing


class Batched:
    """Every request to a model joins one running batch: one ``engine.Engine`` per model, made on first use."""

    batching = True

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, max_waiting: int = DEFAULT_MAX_WAITING):
        for name, value in (("max rows per batch", max_rows), ("max waiting requests", max_waiting)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self._engines: dict[int, tuple[GPT, Engine]] = {}  # by id(model); the model is held so the id stays its own
        self._lock = threading.Lock()
        self._closed = False

    @property
    def concurrency_limit(self) -> int:
        """Generation events Gradio may run at once: one for every row and waiting place of an engine.

        The three tabs' events share this limit, and each submits at most one
        request per engine, so through the app an engine is full only for the
        moment a stopped request takes to leave; events beyond the limit wait in
        Gradio's own bounded queue (``app.py --queue-size``), which says "busy" beyond.
        """
        return self.max_rows + self.max_waiting

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

    def stream(self, model: GPT, ids: Sequence[int], settings: SamplingSettings) -> RequestStream:
        """Submit the request now (so two models' requests run together) and return its stream.

        A full waiting queue is a ``UserError`` with the engine's "busy, try
        again in a moment" message, at once.
        """
        try:
            return RequestStream(self.engine(model).submit(ids, settings))
        except EngineBusy as e:
            raise UserError(str(e)) from None
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

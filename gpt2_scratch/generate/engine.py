"""Continuous batching: every request to one model shares one decoding loop.

Entry point: ``Engine(model, max_rows=, max_waiting=)``. ``submit`` queues a prompt and returns a
``Request`` at once (``Request.tokens`` / ``Request.stream`` read its tokens as they come);
``generate_all`` runs a list of prompts. One worker thread does one forward pass per step for all
rows; newcomers join, and finished or cancelled rows leave, between two steps.
Invariant: a greedy or seeded request gets exactly the tokens it gets alone (``sampling.generate``):
each row keeps its own KV cache and attention call (a "ragged" batch, not left padding), its own token
history (repetition penalty) and stop sequences, and only row-independent work is batched. Why, and
where exactness stops: docs/design.md.
The engine builds inputs and reads logits; the forward pass is the model's own (``GPT.forward`` with a
``RaggedCache``). On a model with unmerged LoRA adapters, ``submit(..., adapter=False)`` decodes a row of
the base model in the same steps (``GPT.forward``'s ``adapter``): base and finetuned answers share one batch
and one copy of the base.
On CPU the engine decodes in its own thread: in a process that decodes only there (the app), load the
model in a thread that ends (``inference.run_apart``), so that the engine's thread holds the process's
only OpenMP pool; with more pools than cores every parallel region pays a wake-up (docs/performance.md).
"""

from __future__ import annotations

import operator
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from gpt2_scratch import lora
from gpt2_scratch.generate.sampling import (
    SamplingSettings,
    crop_prompt,
    make_generator,
    penalize_repeats,
    sample_rows,
    stream_text,
)
from gpt2_scratch.generate.stops import StopFilter, StopIds, StopSequences
from gpt2_scratch.model import GPT, KVCache, RaggedCache
from gpt2_scratch.tokenizer import EOS_ID

# "eos": the answer ended with one of its stop sequences (<|endoftext|>, or its prompt style's end marker).
FINISH_REASONS = ("eos", "length", "cancelled", "error", "closed")


class EngineError(RuntimeError):
    """Generation in the engine failed (the worker's error is the ``__cause__``)."""


class EngineBusy(EngineError):
    """The waiting queue is full: the caller should try again in a moment."""


class EngineClosed(EngineError):
    """The engine was closed (before or while this request ran)."""


_END = object()  # end of a request's token queue


class Request:
    """One submitted prompt. Its new token ids arrive as the engine makes them; read them once.

    ``prompt`` is the prompt as fed (cropped from the left when prompt plus
    ``settings.max_new_tokens`` exceeded the context; ``cropped`` says by how
    many tokens). ``finish_reason`` is None while it runs, then one of
    ``FINISH_REASONS``. ``step_joined`` / ``step_finished`` are the engine step
    numbers of its prefill and of its last token. ``adapter``: whether the model's LoRA
    adapters apply to it (False: the base model's answer). ``stops``: what ends its answer.
    """

    def __init__(
        self,
        prompt: list[int],
        settings: SamplingSettings,
        cropped: int,
        adapter: bool = True,
        stops: StopSequences | None = None,
    ):
        self.prompt = prompt
        self.settings = settings
        self.cropped = cropped
        self.adapter = adapter
        self.stops = stops if stops is not None else StopSequences((EOS_ID,))
        self.finish_reason: str | None = None
        self.step_joined: int | None = None
        self.step_finished: int | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._read = False  # the queue is drained by one reader, once

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop this request only: its row leaves the batch at the next step. No effect once finished."""
        self._cancel.set()

    def tokens(self, timeout: float | None = None) -> Iterator[int]:
        """New token ids as they come (without the stop sequence that ended the answer).

        Ends when the request finishes or is cancelled; raises the engine's
        error (``EngineError``, ``EngineClosed``), or ``TimeoutError`` when no
        token comes within ``timeout`` seconds. Leaving the loop early cancels
        the request, so an abandoned stream does not keep its row.
        """
        if self._read:
            raise RuntimeError("a request's tokens can be read only once")
        self._read = True
        try:
            while True:
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no new token within {timeout} s") from None
                if item is _END:
                    return
                if isinstance(item, EngineClosed):
                    raise EngineClosed(str(item))
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed ({type(item).__name__}: {item})") from item
                yield item
        finally:
            if self.finish_reason is None:
                self.cancel()

    def stream(self, timeout: float | None = None) -> Iterator[tuple[list[int], str]]:
        """Yield (new token ids so far, their text so far) after every token, like ``sampling.stream``.

        Closing it early (a Stop button, a closed connection) cancels the request.
        """
        try:
            yield from stream_text(self.tokens(timeout))
        finally:
            if self.finish_reason is None:
                self.cancel()

    def result(self, timeout: float | None = None) -> list[int]:
        """All new token ids, once the request has finished (``timeout``: the most seconds between two tokens)."""
        return list(self.tokens(timeout))

    # The worker's side.
    def _put(self, token: int) -> None:
        self._queue.put(token)

    def _finish(self, reason: str, step: int, error: BaseException | None = None) -> None:
        self.finish_reason = reason  # set before _END is queued: a reader that sees the end sees the reason
        self.step_finished = step
        if error is not None:
            self._queue.put(error)
        self._queue.put(_END)


@dataclass(eq=False)
class _Row:
    """A request in the running batch."""

    request: Request
    cache: KVCache  # this row's alone: (n_layer, 1, nh, prompt + max_new_tokens, hs)
    generator: torch.Generator | None
    feed: list[int]  # tokens to feed at the next step: the prompt, then the last new token
    seen: torch.Tensor | None = None  # (V,) bool: the tokens in the prompt or answer, with a repetition penalty
    n_new: int = 0
    answer: StopFilter = field(init=False)  # the new tokens, passed on once they cannot begin a stop sequence

    def __post_init__(self) -> None:
        self.answer = StopFilter(self.request.stops)


class Engine:
    """Continuous batching for one model: ``submit`` prompts from any thread; one worker decodes them all.

    max_rows: rows decoded together (requests beyond it wait for a row to leave).
    max_waiting: requests that may wait for a row; ``submit`` raises ``EngineBusy`` beyond.
    max_prefill_tokens: prompt tokens fed per step; newcomers beyond it join at
        the next step (one newcomer always joins), so a burst of long prompts
        does not stall the running rows for long.
    stop_ids: the stop sequences that end a row unless ``submit`` names others (``stops.StopSequences``;
        None: rows run to ``max_new_tokens``).
    """

    def __init__(
        self,
        model: GPT,
        *,
        max_rows: int = 16,
        max_waiting: int = 64,
        max_prefill_tokens: int = 512,
        stop_ids: StopIds = (EOS_ID,),
    ):
        for name, value in (
            ("max_rows", max_rows),
            ("max_waiting", max_waiting),
            ("max_prefill_tokens", max_prefill_tokens),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if model.training:
            raise ValueError("the engine needs the model in eval mode (call model.eval())")
        self.model = model
        self.has_adapters = lora.has_adapters(model)  # rows may then run with the adapter off
        self.max_rows, self.max_waiting, self.max_prefill_tokens = max_rows, max_waiting, max_prefill_tokens
        self.stops = StopSequences(stop_ids)
        self.steps = 0  # forward passes so far
        self._rows: list[_Row] = []  # the worker's alone
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()  # guards _waiting and _closing
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="gpt2-engine", daemon=True)
        self._worker.start()

    # ---- the callers' side

    @property
    def running(self) -> int:
        """Rows in the batch now."""
        return len(self._rows)

    @property
    def closed(self) -> bool:
        """Whether the engine no longer takes requests (``close`` was called, or its worker stopped on a bug)."""
        return self._closing

    @property
    def waiting(self) -> int:
        """Requests waiting for a row now."""
        return len(self._waiting)

    def place(self, request: Request) -> int | None:
        """How many requests wait ahead of ``request`` (0: it is next); None once it has a row or has ended."""
        with self._cond:
            try:
                return self._waiting.index(request)
            except ValueError:
                return None

    def submit(
        self,
        prompt: Sequence[int],
        settings: SamplingSettings,
        *,
        wait: bool = False,
        adapter: bool = True,
        stop_ids: StopIds | None = None,
    ) -> Request:
        """Queue ``prompt`` (token ids) for generation with ``settings``; returns its ``Request`` at once.

        ``stop_ids``: the stop sequences that end this answer (a prompt style's ``stop_ids()``); None: the
        engine's (``()``: none).
        ``adapter=False``: on a model with unmerged LoRA adapters, this row gets the base model's
        answer (exactly what ``lora.base_view(model)`` gives), decoded in the same batch.
        The prompt is cropped from the left like ``sampling.generate`` does when
        it and ``settings.max_new_tokens`` exceed the context. When ``max_waiting``
        requests already wait, raises ``EngineBusy`` (or, with ``wait=True``,
        blocks until one joins the batch). Raises ``EngineClosed`` after ``close``.
        """
        if not isinstance(settings, SamplingSettings):
            raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        ids, cropped = crop_prompt(prompt, self.model.config.block_size, settings.max_new_tokens)
        vocab = self.model.config.vocab_size
        try:
            ids = [operator.index(t) for t in ids]
            valid = all(0 <= t < vocab for t in ids)
        except TypeError:  # a float, a string...
            valid = False
        if not valid:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        stops = self.stops if stop_ids is None else StopSequences(stop_ids)
        request = Request(ids, settings, cropped, adapter=adapter or not self.has_adapters, stops=stops)
        with self._cond:
            while True:
                if self._closing:
                    raise EngineClosed("the engine is closed")
                for r in [r for r in self._waiting if r.cancelled]:  # a cancelled request frees its place now
                    self._waiting.remove(r)
                    r._finish("cancelled", self.steps)
                if len(self._waiting) < self.max_waiting:
                    break
                if not wait:
                    raise EngineBusy(
                        f"The server is busy ({len(self._waiting)} requests waiting); try again in a moment."
                    )
                self._cond.wait()
            self._waiting.append(request)
            self._cond.notify_all()
        return request

    def generate_all(
        self,
        prompts: Sequence[Sequence[int]],
        settings: SamplingSettings | Sequence[SamplingSettings],
        stop_ids: StopIds | None = None,
    ) -> list[list[int]]:
        """New token ids for each prompt, like ``sampling.generate``, with rows refilled as others finish.

        ``settings`` is one for all prompts or one per prompt. Each prompt gets
        exactly what it gets alone, seed included (``sampling.generate`` with
        a seed instead shares one generator across its batch). ``stop_ids``: as ``submit``'s.
        """
        per_prompt = [settings] * len(prompts) if isinstance(settings, SamplingSettings) else list(settings)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"got {len(per_prompt)} settings for {len(prompts)} prompts")
        requests: list[Request] = []
        try:
            for p, s in zip(prompts, per_prompt):
                requests.append(self.submit(p, s, wait=True, stop_ids=stop_ids))
            return [r.result() for r in requests]
        finally:
            for r in requests:  # after an error or an interrupt, no row keeps running for nobody
                r.cancel()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker after its current step; unfinished requests end with ``EngineClosed``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the worker

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            with torch.inference_mode():
                while self._next_batch():
                    self._step()
        except BaseException as e:  # a bug in the loop itself: nobody may wait forever
            error = e
        finally:
            with self._cond:
                self._closing = True
                pending = [row.request for row in self._rows] + list(self._waiting)
                self._rows, self._waiting = [], deque()
                self._cond.notify_all()
            for request in pending:
                request._finish(
                    "closed" if error is None else "error",
                    self.steps,
                    EngineClosed("the engine was closed") if error is None else error,
                )

    def _next_batch(self) -> bool:
        """At a step boundary: cancelled rows leave, waiting requests join. False when closing."""
        for row in [row for row in self._rows if row.request.cancelled]:
            self._rows.remove(row)
            row.request._finish("cancelled", self.steps)
        joining: list[Request] = []
        with self._cond:
            while not self._closing and not self._rows and not self._waiting:
                self._cond.wait()
            if self._closing:
                return False
            budget = self.max_prefill_tokens
            while self._waiting and len(self._rows) + len(joining) < self.max_rows:
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()._finish("cancelled", self.steps)
                    continue
                if joining and len(request.prompt) > budget:
                    break
                joining.append(self._waiting.popleft())
                budget -= len(request.prompt)
            self._cond.notify_all()  # room in the queue for submit(wait=True)
        for request in joining:
            try:
                cache = self.model.new_cache(1, len(request.prompt) + request.settings.max_new_tokens)
                generator = make_generator(request.settings, self.model.device)
                seen = None
                if request.settings.repetition_penalty != 1.0:
                    seen = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.model.device)
                    seen[request.prompt] = True
                row = _Row(request, cache, generator, list(request.prompt), seen)
            except Exception as e:  # e.g. out of memory: this request fails, the others go on
                request._finish("error", self.steps, e)
                continue
            self._rows.append(row)
            request.step_joined = self.steps
        return True  # the batch may be empty when every newcomer was cancelled: _step does nothing then

    def _step(self) -> None:
        """One forward pass for every row; each row samples and streams its token, finished rows leave."""
        rows = self._rows
        if not rows:
            return
        step = self.steps
        self.steps += 1
        try:
            logits = _forward_rows(self.model, rows)
            requests = [row.request for row in rows]
            penalized = [i for i, row in enumerate(rows) if row.seen is not None]
            if penalized:
                logits = logits.float()  # as sampling.penalize_repeats makes every penalized row's
                at = torch.tensor(penalized, device=logits.device)
                penalty = torch.tensor([[requests[i].settings.repetition_penalty] for i in penalized])
                seen = torch.stack([rows[i].seen for i in penalized])
                logits[at] = penalize_repeats(logits[at], seen, penalty.to(logits.device))
            tokens = sample_rows(logits, [r.settings for r in requests], [row.generator for row in rows]).tolist()
        except Exception as e:  # e.g. out of memory: these rows' caches are unusable; the engine serves on
            self._rows = []
            for row in rows:
                row.request._finish("error", step, e)
            return
        running = []
        for row, token in zip(rows, tokens):
            row.n_new += 1
            request = row.request
            for t in row.answer.push(token):
                request._put(t)
            if row.answer.stopped:
                request._finish("eos", step)
                continue
            if row.n_new == request.settings.max_new_tokens:
                for t in row.answer.flush():
                    request._put(t)
                request._finish("length", step)
            else:
                if row.seen is not None:
                    row.seen[token] = True
                row.feed = [token]
                running.append(row)
        self._rows = running


def _forward_rows(model: GPT, rows: Sequence[_Row]) -> torch.Tensor:
    """Logits ``(R, V)`` after each row's ``feed`` tokens: one ``GPT.forward`` over a ragged batch.

    The rows' tokens go in one after the other, ``(1, N)``; a ``RaggedCache`` gives each row its own
    cache and attention call, so each row gets what ``model(feed, cache=..., last_only=True)`` gives
    it alone. ``adapter`` switches a LoRA model's adapters off for the base model's rows.
    """
    device = model.device
    idx = torch.tensor([t for row in rows for t in row.feed], device=device).unsqueeze(0)  # (1, N)
    cache = RaggedCache([row.cache for row in rows], [len(row.feed) for row in rows])
    adapter = None
    if not all(row.request.adapter for row in rows):
        adapter = torch.tensor([row.request.adapter for row in rows for _ in row.feed], device=device).unsqueeze(0)
    return model(idx, cache=cache, adapter=adapter, last_only=True)[0]  # (R, V)

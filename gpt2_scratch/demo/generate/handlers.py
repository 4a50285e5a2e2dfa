"""The app's shared state and generation handlers: ``DemoApp``.

``DemoApp`` holds what every user shares (the two lazily loaded models, the prompt style, the
results browser of ``results.handlers``); its methods are the generation tabs' event handlers,
plain methods and generators that tests call without a browser or a server.
Invariants: nothing the user types is ever a path; bad input is a one-line message and a toast,
never a traceback (``reports_errors``); something missing is said in its tab with the command
that creates it, and the rest of the app keeps working. A LoRA run of the served base keeps one
copy of the base weights: the base model is the finetuned one with its adapter off (``lora.base_view``);
with batching both models' rows then decode in one engine's batch (``backends.Batched``).
Design: docs/design.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from gpt2_scratch import inference, lora
from gpt2_scratch.checkpoint import CheckpointInfo
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.demo.discovery import RunSource, include_run
from gpt2_scratch.demo.errors import failure, plain, problem, reports_errors
from gpt2_scratch.demo.generate import backends
from gpt2_scratch.demo.generate.backends import Backend, PerRequest, TokenStream, paced
from gpt2_scratch.demo.generate.models import (
    DEFAULT_BASE_MODEL,
    OFFLINE_HINT,
    LazyModel,
    check_base,
    checkpoint_label,
    choose_checkpoint,
)
from gpt2_scratch.demo.generate.prompt_fit import fit_prompt
from gpt2_scratch.demo.inputs import UserError, clean_text, parse_settings
from gpt2_scratch.demo.results.handlers import ResultsBrowser
from gpt2_scratch.demo.results.views import ENDED_AT_ONCE, elapsed, visible_response
from gpt2_scratch.devices import resolve_device
from gpt2_scratch.files import read_json
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.inference import load_model, resolve_dtype, run_apart
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PromptStyle, get_prompt_style
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.tokenizer import encode

log = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


class DemoApp:
    """State shared by all users (models, prompt style, the results browser) and the generation tabs' handlers.

    ``backend`` runs the generations (``backends.PerRequest`` when None); both
    models load in ``dtype`` (``load_model``'s; ``auto`` is resolved here, once).
    ``shared_base``: the finetuned checkpoint is a LoRA adapter on ``base_source``; it is loaded
    with the adapter apart and the base model is a view of its weights (``lora.base_view``).
    """

    def __init__(
        self,
        *,
        base_source: str,
        finetuned_source: Path | None,
        prompt_style: PromptStyle,
        finetuned_problem: str | None,
        browser: ResultsBrowser | None = None,
        run: RunPaths | None = None,
        run_name: str | None = None,
        checkpoint_name: str | None = None,
        context: int | None = None,
        checkpoint_note: str | None = None,
        backend: Backend | None = None,
        dtype: str = "float32",
        kernel: str | None = None,
        config: GPTConfig | None = None,
        shared_base: bool = False,
        merged_fallback: bool = False,
    ):
        self.run = run
        self.run_name = run_name or (run.root.name if run else None)
        self.backend = backend or PerRequest()
        self.dtype = resolve_dtype(dtype, resolve_device("auto"))  # the format in use, for the header
        self.kernel, self.config = kernel, config  # config: the finetuned model's, when known without loading it
        self.finetuned = LazyModel(
            str(finetuned_source) if finetuned_source else None,
            label="finetuned model",
            hint=finetuned_problem or "Create a checkpoint with `python finetune.py`.",
            dtype=self.dtype,
            kernel=kernel,
            merge=not shared_base,
        )
        self.base_problem: str | None = None  # why a LoRA export's base is not served (its merged weights are)
        if shared_base and merged_fallback:
            self.finetuned._load = self._load_adapted_or_merged
        # A LoRA run of this base: the base tab is the finetuned model's weights without the adapter.
        view = self._base_view if shared_base else None
        self.base = LazyModel(
            base_source, label="base model", hint=OFFLINE_HINT, dtype=self.dtype, kernel=kernel, load=view
        )
        self.shared_base = shared_base
        self.finetuned_problem = finetuned_problem
        self.checkpoint_name = checkpoint_name  # how the header names the finetuned checkpoint ("run/final")
        self.checkpoint_note = checkpoint_note  # which checkpoint is served when it is not final/, and why
        self.prompt_style = prompt_style
        self.browser = browser or ResultsBrowser([])  # the results tab: every run offered, compared
        self.context = context  # block size of the finetuned checkpoint, when known without loading it

    def _load_adapted_or_merged(self) -> GPT:
        """A LoRA export: base + adapter (one copy of the base for both tabs), or its merged weights when its
        base cannot be loaded here (a local path of the machine that trained, no network), and the base tab says so."""
        try:
            return self.finetuned._load_model()
        except Exception as e:  # the merged weights need no base
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            self.base_problem = (
                f"The base model `{self.base.source}` of this LoRA run cannot be loaded here ({reason}): "
                "the Finetuned tab serves the export's merged weights. To compare, start the app with `--base <model>`."
            )
            log.warning("serving the merged weights of %s: %s", self.finetuned.source, self.base_problem)
            return load_model(self.finetuned.source, device=str(resolve_device("auto")), dtype=self.dtype)[0]

    def _base_view(self) -> GPT:
        """The base tab of a LoRA run: the finetuned model's weights with the adapter off."""
        finetuned = self.finetuned.get()
        if self.base_problem is not None:  # known once the finetuned model is loaded
            raise UserError(self.base_problem)
        return lora.base_view(finetuned)

    @classmethod
    def from_run(
        cls,
        run: RunPaths | None,
        *,
        base: str | None = None,
        run_problem: str | None = None,
        sources: list[RunSource] | None = None,
        find_sources: Callable[[], list[RunSource]] | None = None,
        backend: Backend | None = None,
        dtype: str = "float32",
        kernel: str | None = None,
    ) -> "DemoApp":
        """The app serving ``run`` (None: no run; ``run_problem`` says why); ``base`` overrides the run's base model.

        The results tab offers ``sources`` (``discovery.find_runs``), with ``run`` first among them;
        ``find_sources`` lists them again for its refresh button (None: no button).
        ``backend``, ``dtype`` and ``kernel``: as for ``DemoApp``.
        """
        check_base(base, option="--base")  # now, in one line, not a traceback at every request
        run_info: RunInfo | None = None
        info: CheckpointInfo | None = None
        problem_text = run_problem or "No finetuned checkpoint. Create one with `python finetune.py`."
        note = None
        if run is not None:
            if run.run_json.is_file():
                try:
                    run_info = run.read_info()
                except (ValueError, OSError) as e:
                    log.warning("cannot read %s: %s", run.run_json, e)
            info, problem_text, note = choose_checkpoint(run)
        base_source = (
            base
            or (run_info.base_model if run_info else None)
            or (info.metadata.get("base_model") if info else None)
            or DEFAULT_BASE_MODEL
        )
        style = get_prompt_style(
            (info.prompt_style if info else None)
            or (run_info.prompt_style if run_info else None)
            or DEFAULT_PROMPT_STYLE
        )
        # A Hub snapshot's folder is a commit hash; run.json has the real name.
        run_name = run_info.name if run_info else (run.root.name if run else None)
        return cls(
            base_source=str(base_source),
            finetuned_source=info.path if info else None,
            prompt_style=style,
            finetuned_problem=problem_text,
            browser=ResultsBrowser(
                include_run(sources or [], run),
                find=(lambda: include_run(find_sources(), run)) if find_sources else None,
            ),
            run=run,
            run_name=run_name,
            checkpoint_name=checkpoint_label(run, run_name, info),
            context=info.config.block_size if info else None,
            checkpoint_note=note,
            backend=backend,
            dtype=dtype,
            kernel=kernel,
            config=info.config if info else None,
            # A LoRA run on the base served here: one copy of the base weights for both models.
            shared_base=info is not None and info.adapter is not None and info.adapter.base_model == str(base_source),
            merged_fallback=info is not None and info.exported and info.weights_file.is_file(),  # a Space: no base
        )

    def kernel_plan(self) -> str:
        """Which kernel each layer gets on this CPU (measured now when not cached: about 2 s), for the header."""
        if resolve_device("auto").type != "cpu":
            return "torch's own products on the GPU"
        if self.config is None:
            return "chosen by measurement when a model loads"
        config = self.config  # measured in a thread that ends (inference.run_apart): the decoding's pool stays alone
        return run_apart(lambda: inference.plan(self.dtype, config.n_embd, config.vocab_size, self.kernel))

    def eval_dtype(self) -> str | None:
        """The inference format the served run's test-set results were generated in (None: not evaluated)."""
        try:
            return read_json(self.run.summary).get("dtype") if self.run and self.run.summary.is_file() else None
        except (ValueError, OSError, AttributeError):  # unreadable or not an object: the results tab says so
            return None

    def close(self) -> None:
        """Stop the generation backend (the engines' workers); requests still running end."""
        self.backend.close()

    # ---- generation

    def _settings(self, model: GPT, values: tuple) -> SamplingSettings:
        """The settings of the controls' ``values`` (``inputs.parse_settings``), checked against ``model``'s context."""
        return parse_settings(*values, block_size=model.config.block_size)

    def _prompt(self, model: GPT, text: str, settings: SamplingSettings, notices: list[str]):
        """(prompt ids, settings) that fit the model's context: new tokens capped first (``prompt_fit``)."""
        ids, settings, notice = fit_prompt(encode(text, special=False), model.config.block_size, settings)
        if notice:
            notices.append(notice)
        return ids, settings

    def _instruction(self, instruction: Any, input: Any, notices: list[str]) -> str:
        instruction, n1 = clean_text(instruction, "the instruction")
        input, n2 = clean_text(input, "the input")
        if n1 + n2:
            notices.append(f"Removed {n1 + n2} control character(s) from the text.")
        if not instruction.strip():
            raise UserError("Type an instruction first.")
        return self.prompt_style.format(instruction.strip(), input.strip())

    @reports_errors(lambda app, status: ("", status))
    def generate_base(self, prompt: str, *settings: Any) -> Iterator[tuple[str, str]]:
        """Stream GPT-2's raw continuation of ``prompt``: yields (text so far, status).

        ``settings``: the generation controls' values, one per SamplingSettings field (``inputs.SETTINGS``).
        """
        notices: list[str] = []
        text, n_removed = clean_text(prompt, "the prompt")
        if n_removed:
            notices.append(f"Removed {n_removed} control character(s) from the prompt.")
        if not text.strip():
            raise UserError("Type a prompt first.")
        model = self.base.get()
        sampling = self._settings(model, settings)
        ids, sampling = self._prompt(model, text, sampling, notices)
        yield from self._stream_one(model, ids, sampling, notices)

    @reports_errors(lambda app, status: ("", status))
    def generate_finetuned(self, instruction: str, input: str, *settings: Any) -> Iterator[tuple[str, str]]:
        """Stream the finetuned model's answer to an instruction (and optional input): yields (text, status)."""
        notices: list[str] = []
        text = self._instruction(instruction, input, notices)
        model = self.finetuned.get()
        sampling = self._settings(model, settings)
        ids, sampling = self._prompt(model, text, sampling, notices)
        yield from self._stream_one(model, ids, sampling, notices)

    def _stream_one(self, model: GPT, ids: list[int], settings: SamplingSettings, notices: list[str]):
        notice = "\n\n".join(notices)
        if notice:
            gr.Info(plain(notice))
        started = time.perf_counter()
        text, n = "", 0
        # Closed when the visitor presses Stop (Gradio closes this generator): only this request ends.
        with contextlib.closing(self.backend.stream(model, ids, settings, self.prompt_style.stop_ids())) as tokens:
            yield "", _join("Generating…", notice)
            for waiting in self.backend.waiting([tokens]):  # a burst: its place in the queue, until it has a row
                yield "", _join(waiting, notice)
            for new_ids, text in paced(tokens):
                n = len(new_ids)
                yield text, _join(f"Generating… {n} tokens", notice)
        yield visible_response(text, n), _join(elapsed(n, time.perf_counter() - started), notice)

    def _start_streams(self, prompt: str, settings: tuple, notices: list[str]) -> tuple[dict, dict, list[str]]:
        """(streams by model, texts by model, problems): a model that cannot start leaves its message as text."""
        streams: dict[str, TokenStream] = {}
        texts = {"base": "", "finetuned": ""}
        problems = []
        for name, lazy in (("base", self.base), ("finetuned", self.finetuned)):
            try:
                model = lazy.get()
                sampling = self._settings(model, settings)
                ids, sampling = self._prompt(model, prompt, sampling, notices if not streams else [])
                # With batching, both run from now on; both answer in the run's prompt style, so stop on its stops.
                streams[name] = self.backend.stream(model, ids, sampling, self.prompt_style.stop_ids())
            except Exception as e:
                if not isinstance(e, UserError):
                    log.exception("generate_side_by_side failed for %s", name)
                problems.append(failure(e))
                texts[name] = f"[{problems[-1]}]"
        return streams, texts, problems

    @reports_errors(lambda app, status: ("", "", status))
    def generate_side_by_side(self, instruction: str, input: str, *settings: Any) -> Iterator[tuple[str, str, str]]:
        """Both models answer the same instruction at once: yields (base text, finetuned text, status).

        Both requests start at once (with batching, each joins its model's
        engine; a LoRA run on the served base has one engine, and both rows share its steps); their streams advance one token each in turn, so both columns
        grow together; a model that cannot be loaded leaves its message
        in its column and the other still answers.
        """
        notices: list[str] = []
        prompt = self._instruction(instruction, input, notices)
        streams, texts, problems = self._start_streams(prompt, settings, notices)
        if problems and not streams:
            yield texts["base"], texts["finetuned"], problem(" ".join(dict.fromkeys(problems)))
            return
        notice = "\n\n".join(notices + problems)
        if problems:
            gr.Warning(plain(" ".join(problems)))
        started = time.perf_counter()
        counts = {name: 0 for name in streams}
        failed: set[str] = set()
        try:
            yield texts["base"], texts["finetuned"], _join("Generating…", notice)
            for waiting in self.backend.waiting(streams.values()):
                yield texts["base"], texts["finetuned"], _join(waiting, notice)
            shown_at = time.monotonic()
            while streams:
                for name in list(streams):
                    try:
                        new_ids, texts[name] = next(streams[name])
                        counts[name] = len(new_ids)
                    except StopIteration:
                        del streams[name]
                    except Exception as e:
                        log.exception("generate_side_by_side failed for %s", name)
                        del streams[name]
                        texts[name] += f"\n[{failure(e)}]"
                        failed.add(name)
                if (
                    time.monotonic() - shown_at >= backends.UPDATE_INTERVAL_S
                ):  # as ``paced``: the final yield shows the rest
                    shown_at = time.monotonic()
                    done = ", ".join(f"{name} {n}" for name, n in counts.items())
                    yield texts["base"], texts["finetuned"], _join(f"Generating… tokens: {done}", notice)
        finally:  # Stop (Gradio closes this generator): this visitor's requests end, and only they
            for tokens in streams.values():
                tokens.close()
        seconds = time.perf_counter() - started
        done = ", ".join(f"{name} {n}" for name, n in counts.items())
        shown = {name: visible_response(texts[name], counts.get(name)) for name in texts}
        silent = [f"{name} {ENDED_AT_ONCE}" for name, n in counts.items() if n == 0 and name not in failed]
        status = f"New tokens: {done} in {seconds:.1f} s" + "".join(f"; {s}" for s in silent)
        yield shown["base"], shown["finetuned"], _join(status, notice)

"""The Gradio demo: pretrained GPT-2, the finetuned model, both side by side, and the test-set results.

``app.py`` only parses arguments and calls into this module:

    run, problem = resolve_run(args.run, runs_dir="runs", hub_repo=os.environ.get(HUB_REPO_ENV))
    app = DemoApp.from_run(run, base=args.base, run_problem=problem)
    build_demo(app, load_examples("assets/examples.json")).queue(default_concurrency_limit=2).launch()

``DemoApp`` holds the state shared by every user (the two lazily loaded models,
the evaluation results) and the event handlers; ``build_demo`` lays out the UI
and wires the handlers to it. The handlers are plain methods and generators, so
the tests call them directly, without a browser or a server.

Rules the handlers follow:

- Nothing the user types is ever a path: only the run chosen at startup is read.
- Bad input (empty instruction, settings out of range or not numbers, control
  characters) gives a one-line message in the tab's status line and a toast,
  never a traceback; the server stays up.
- Something missing (no finetuned checkpoint, no evaluation results, base
  weights that cannot be downloaded) is said in the affected tab with the exact
  command that creates it; the rest of the app keeps working.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from gpt2_scratch.checkpoint import CheckpointInfo, load_model, read_checkpoint_info, resolve_device
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.generation import SamplingSettings, crop_prompt, stream
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import DEFAULT_PROMPT_STYLE, PromptStyle, get_prompt_style
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, MODEL_NAMES, SUMMARY_METRICS, RunInfo, RunPaths, format_metric, latest_run
from gpt2_scratch.tokenizer import encode

log = logging.getLogger(__name__)

# A Hugging Face Hub model repo holding run.json, final/ and eval/ (set on a Space).
HUB_REPO_ENV = "GPT2_SCRATCH_HUB_REPO"
DEFAULT_BASE_MODEL = "gpt2"
# Bounds of the generation settings; max new tokens is also kept below the model's context.
MAX_NEW_TOKENS = 512
DEFAULT_NEW_TOKENS = 128
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 50257
MAX_SEED = 2**32 - 1
DEFAULT_SEED = 123
# Longer text is refused before tokenizing: the model would only see its last ~4,000 characters anyway.
MAX_PROMPT_CHARS = 20_000
# Files of a run the app needs when it comes from the Hub (not train_state/, not best/).
HUB_RUN_FILES = ["run.json", "final/*", "eval/*", "loss.png", "metrics.jsonl"]

# (label, "<model>.<key in predictions.jsonl>"): the scores the table shows, filters and sorts by.
SCORE_CHOICES = [
    ("finetuned ROUGE-L", "finetuned.rouge_l"),
    ("base ROUGE-L", "base.rouge_l"),
    ("finetuned judge", "finetuned.judge_score"),
    ("base judge", "base.judge_score"),
]
ORDER_CHOICES = ["test-set order", "score: high to low", "score: low to high"]


class UserError(ValueError):
    """Bad input or a missing piece: its message is shown to the user as is."""


# --------------------------------------------------------------------------- input checks


def clean_text(text: Any, what: str) -> tuple[str, int]:
    """(text without control characters, how many were removed); newlines and tabs stay.

    Control characters are invisible in the textbox but reach the tokenizer; lone
    surrogates (possible through the API) cannot be encoded at all.
    """
    if text is None:
        return "", 0
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"{what} is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    return kept, len(text) - len(kept)


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"  # 4294967295, not 4.29497e+09


def _number(name: str, value: Any, lo: float, hi: float, *, integer: bool, hint: str = "") -> float | int:
    """``value`` as an int/float within [lo, hi], or a UserError that says what was expected."""
    kind = "a whole number" if integer else "a number"
    expected = f"{name} must be {kind} from {_plain(lo)} to {_plain(hi)}{hint}, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise UserError(expected)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise UserError(expected) from None
    if not math.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        raise UserError(expected)
    return int(number) if integer else number


def parse_settings(
    max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any, *, block_size: int
) -> SamplingSettings:
    """Generation settings from UI/API values: top-k 0 and top-p 1 mean off, a blank seed means random."""
    limit = min(MAX_NEW_TOKENS, block_size - 1)
    n = _number("max new tokens", max_new_tokens, 1, limit, integer=True, hint=f" (the context is {block_size} tokens)")
    t = _number("temperature", temperature, 0.0, MAX_TEMPERATURE, integer=False)
    k = _number("top-k", top_k, 0, MAX_TOP_K, integer=True)
    p = _number("top-p", top_p, 0.0, 1.0, integer=False)
    if p == 0:
        raise UserError("top-p must be greater than 0 (1 turns it off), got 0")
    s = None if _blank(seed) else _number("seed", seed, 0, MAX_SEED, integer=True)
    return SamplingSettings(max_new_tokens=n, temperature=t, top_k=k or None, top_p=None if p == 1 else p, seed=s)


# --------------------------------------------------------------------------- loading


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (for commands shown to users)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def download_run(repo_id: str) -> RunPaths:
    """Download a run (run.json, final/, eval/, loss curve) from a Hugging Face Hub model repo."""
    from huggingface_hub import snapshot_download

    return RunPaths(Path(snapshot_download(repo_id, allow_patterns=HUB_RUN_FILES)))


def resolve_run(
    run: str | os.PathLike | None, *, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, hub_repo: str | None = None
) -> tuple[RunPaths | None, str | None]:
    """The run the app shows: ``run`` if given, else the Hub repo if given, else the newest under ``runs_dir``.

    Returns (run or None, why there is none). An explicit ``run`` that is not a
    folder raises FileNotFoundError: the user asked for it by name.
    """
    if run is not None:
        path = Path(run).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--run {run}: no such folder")
        return RunPaths(path), None
    if hub_repo:
        try:
            return download_run(hub_repo), None
        except Exception as e:  # offline, unknown or private repo, ...
            return None, (
                f"Could not download the run from the Hub repo `{hub_repo}` ({type(e).__name__}). "
                f"Check `{HUB_REPO_ENV}`, or run locally with `python app.py --run runs/<name>`."
            )
    try:
        return latest_run(runs_dir), None
    except FileNotFoundError:
        return None, (
            f"No finished run under `{display_path(Path(runs_dir))}/`. "
            "Create one with `python finetune.py`, or pick one with `python app.py --run runs/<name>`."
        )


def load_examples(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """(base-model prompts, (instruction, input) pairs) from the examples file; a missing file gives none."""
    path = Path(path)
    if not path.is_file():
        log.warning("no examples file at %s", path)
        return [], []
    data = json.loads(path.read_text(encoding="utf-8"))
    prompts = [str(p) for p in data.get("prompts", [])]
    instructions = [(str(e["instruction"]), str(e.get("input", ""))) for e in data.get("instructions", [])]
    return prompts, instructions


def _device() -> str:
    # On a ZeroGPU Space the first load happens inside a spaces.GPU call, where CUDA is available.
    return str(resolve_device("auto"))


class LazyModel:
    """A model loaded on first use and then shared by every user (one load, behind a lock)."""

    def __init__(self, source: str | None, *, label: str, hint: str):
        self.source = source
        self.label = label
        self.hint = hint  # what to do when it cannot be loaded
        self._model: GPT | None = None
        self._lock = threading.Lock()

    def get(self) -> GPT:
        """The model; a UserError naming the fix when it is missing or cannot be loaded."""
        if self.source is None:
            raise UserError(self.hint)
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                try:
                    self._model, _ = load_model(self.source, device=_device())
                except Exception as e:  # no network, missing or corrupt file: say so, keep serving
                    log.exception("could not load %s from %s", self.label, self.source)
                    raise UserError(f"Could not load the {self.label} `{self.source}`: {e}. {self.hint}") from None
                log.info("loaded %s from %s in %.1f s", self.label, self.source, time.perf_counter() - started)
            return self._model


# --------------------------------------------------------------------------- evaluation results


@dataclass
class EvalResults:
    """What evaluate.py wrote for the run, or why there is nothing to show."""

    summary: dict | None = None
    predictions: list[dict] = field(default_factory=list)
    problem: str | None = None

    @classmethod
    def load(cls, run: RunPaths | None, missing: str) -> "EvalResults":
        if run is None:
            return cls(problem=missing)
        command = f"python evaluate.py --run {display_path(run.root)}"
        if not run.summary.is_file() or not run.predictions.is_file():
            return cls(problem=f"No evaluation results for this run yet. Create them with `{command}`.")
        try:
            summary = json.loads(run.summary.read_text(encoding="utf-8"))
            predictions = read_jsonl(run.predictions)
        except (ValueError, OSError) as e:
            return cls(problem=f"The evaluation results in `{display_path(run.eval_dir)}` are unreadable ({e}). "
                       f"Recreate them with `{command}`.")
        return cls(summary=summary, predictions=predictions)


def _score(row: dict, key: str) -> float | None:
    model, metric = key.split(".")
    value = (row.get(model) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * 100:.1f}%" if spec == "%" else format(value, spec)
    return str(value)




def summary_markdown(results: EvalResults) -> str:
    """The aggregates of summary.json as a Markdown table, both models side by side."""
    if results.summary is None:
        return f"**{results.problem}**"
    s = results.summary
    models = s.get("models", {})
    names = [m for m in MODEL_NAMES if m in models]
    lines = ["| Metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in SUMMARY_METRICS:
        lines.append(f"| {m.label} | " + " | ".join(format_metric(models[n].get(m.key), m.spec) for n in names) + " |")
    g = s.get("generation", {})
    judge = s.get("judge")
    sha = (s.get("checkpoint") or {}).get("sha256") or ""
    info = (
        f"{s.get('num_records', '?')} test records · base model `{s.get('base_model', '?')}` · "
        f"prompt style `{s.get('prompt_style', '?')}` · checkpoint sha256 `{sha[:12]}` · "
        f"max new tokens {g.get('max_new_tokens', '?')}, temperature {g.get('temperature', '?')} · "
        f"judge: {'`' + judge['model'] + '`' if judge else 'none'} · evaluated {s.get('created', '?')}"
    )
    return "\n".join(lines) + "\n\n" + info


def loss_curve(run: RunPaths | None):
    """The run's training loss curve as a PIL image: loss.png, else re-plotted from metrics.jsonl, else None."""
    from PIL import Image

    if run is None:
        return None
    if run.loss_plot.is_file():
        with Image.open(run.loss_plot) as image:
            return image.convert("RGB")
    if not run.metrics.is_file():
        return None
    from gpt2_scratch.training import loss_figure, read_metrics

    try:
        rows = read_metrics(run.metrics)
        if not any(r.get("event") == "eval" for r in rows):
            return None
        fig = loss_figure(rows)
    except (ValueError, OSError, KeyError):
        return None
    fig.canvas.draw()
    return Image.frombuffer("RGBA", fig.canvas.get_width_height(), bytes(fig.canvas.buffer_rgba())).convert("RGB")


# --------------------------------------------------------------------------- the app


def _elapsed(n_tokens: int, seconds: float) -> str:
    return f"{n_tokens} new tokens in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):.1f} tokens/s)"


class DemoApp:
    """State shared by all users (models, prompt style, evaluation results) and the UI's handlers."""

    def __init__(
        self,
        *,
        base_source: str,
        finetuned_source: Path | None,
        prompt_style: PromptStyle,
        finetuned_problem: str | None,
        results: EvalResults,
        run: RunPaths | None = None,
        run_name: str | None = None,
        context: int | None = None,
    ):
        self.run = run
        self.run_name = run_name or (run.root.name if run else None)
        self.base = LazyModel(
            base_source,
            label="base model",
            hint="If you are offline, pass a local copy of the weights: "
            "`python app.py --base /path/to/model.safetensors` (or a folder holding it).",
        )
        self.finetuned = LazyModel(
            str(finetuned_source) if finetuned_source else None, label="finetuned model",
            hint=finetuned_problem or "Create a checkpoint with `python finetune.py`.",
        )
        self.finetuned_problem = finetuned_problem
        self.prompt_style = prompt_style
        self.results = results
        self.context = context  # block size of the finetuned checkpoint, when known without loading it

    @classmethod
    def from_run(cls, run: RunPaths | None, *, base: str | None = None, run_problem: str | None = None) -> "DemoApp":
        """The app for ``run`` (None: no run; ``run_problem`` says why). ``base`` overrides the run's base model."""
        run_info: RunInfo | None = None
        info: CheckpointInfo | None = None
        problem = run_problem or "No finetuned checkpoint. Create one with `python finetune.py`."
        checkpoint = None
        if run is not None:
            if run.run_json.is_file():
                try:
                    run_info = run.read_info()
                except (ValueError, OSError) as e:
                    log.warning("cannot read %s: %s", run.run_json, e)
            for folder in (run.final, run.best):  # final is the contract; best serves a run still training
                try:
                    info = read_checkpoint_info(folder)
                    checkpoint, problem = folder, None
                    break
                except (FileNotFoundError, ValueError) as e:
                    if folder == run.final:
                        problem = (f"No usable finetuned checkpoint in `{display_path(run.root)}` ({e}). "
                                   "Create one with `python finetune.py`.")
        base_source = (
            base or (run_info.base_model if run_info else None) or (info.metadata.get("base_model") if info else None)
            or DEFAULT_BASE_MODEL
        )
        style = get_prompt_style((info.prompt_style if info else None) or (run_info.prompt_style if run_info else None)
                                 or DEFAULT_PROMPT_STYLE)
        missing_eval = ("No evaluation results: there is no run. Create one with `python finetune.py`, "
                        "then `python evaluate.py --run runs/<name>`.")
        return cls(
            base_source=str(base_source),
            finetuned_source=checkpoint,
            prompt_style=style,
            finetuned_problem=problem,
            results=EvalResults.load(run, missing_eval),
            run=run,
            run_name=run_info.name if run_info else None,  # a Hub snapshot's folder is a commit hash; run.json has the real name
            context=info.config.block_size if info else None,
        )

    # ---- generation

    def _settings(self, model: GPT, values: tuple) -> SamplingSettings:
        return parse_settings(*values, block_size=model.config.block_size)

    def _prompt(self, model: GPT, text: str, settings: SamplingSettings, notices: list[str]) -> list[int]:
        ids, n_cropped = crop_prompt(encode(text, special=False), model.config.block_size, settings.max_new_tokens)
        if n_cropped:
            notices.append(
                f"The prompt is {len(ids) + n_cropped} tokens; its first {n_cropped} were dropped so that it and "
                f"{settings.max_new_tokens} new tokens fit the {model.config.block_size}-token context."
            )
        return ids

    def _instruction(self, instruction: Any, input: Any, notices: list[str]) -> str:
        instruction, n1 = clean_text(instruction, "the instruction")
        input, n2 = clean_text(input, "the input")
        if n1 + n2:
            notices.append(f"Removed {n1 + n2} control character(s) from the text.")
        if not instruction.strip():
            raise UserError("Type an instruction first.")
        return self.prompt_style.format(instruction.strip(), input.strip())

    def generate_base(
        self, prompt: str, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any
    ) -> Iterator[tuple[str, str]]:
        """Stream GPT-2's raw continuation of ``prompt``: yields (text so far, status)."""
        try:
            notices: list[str] = []
            text, n_removed = clean_text(prompt, "the prompt")
            if n_removed:
                notices.append(f"Removed {n_removed} control character(s) from the prompt.")
            if not text.strip():
                raise UserError("Type a prompt first.")
            model = self.base.get()
            sampling = self._settings(model, (max_new_tokens, temperature, top_k, top_p, seed))
            ids = self._prompt(model, text, sampling, notices)
            yield from self._stream_one(model, ids, sampling, notices)
        except UserError as e:
            yield "", _problem(str(e))
        except Exception as e:  # a bug must not take the server down nor show a traceback
            log.exception("generate_base failed")
            yield "", _problem(f"Generation failed ({type(e).__name__}: {e}).")

    def generate_finetuned(
        self, instruction: str, input: str, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any
    ) -> Iterator[tuple[str, str]]:
        """Stream the finetuned model's answer to an instruction (and optional input): yields (text, status)."""
        try:
            notices: list[str] = []
            text = self._instruction(instruction, input, notices)
            model = self.finetuned.get()
            sampling = self._settings(model, (max_new_tokens, temperature, top_k, top_p, seed))
            ids = self._prompt(model, text, sampling, notices)
            yield from self._stream_one(model, ids, sampling, notices)
        except UserError as e:
            yield "", _problem(str(e))
        except Exception as e:
            log.exception("generate_finetuned failed")
            yield "", _problem(f"Generation failed ({type(e).__name__}: {e}).")

    def _stream_one(self, model: GPT, ids: list[int], settings: SamplingSettings, notices: list[str]):
        notice = "\n\n".join(notices)
        if notice:
            gr.Info(notice)
        started = time.perf_counter()
        text, n = "", 0
        yield "", _join("Generating…", notice)
        for new_ids, text in stream(model, ids, settings):
            n = len(new_ids)
            yield text, _join(f"Generating… {n} tokens", notice)
        yield text, _join(_elapsed(n, time.perf_counter() - started), notice)

    def generate_side_by_side(
        self, instruction: str, input: str, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any
    ) -> Iterator[tuple[str, str, str]]:
        """Both models answer the same instruction at once: yields (base text, finetuned text, status).

        The two ``stream`` iterators advance one token each per step, so both
        columns grow together; a model that cannot be loaded leaves its message
        in its column and the other still answers.
        """
        try:
            notices: list[str] = []
            prompt = self._instruction(instruction, input, notices)
        except UserError as e:
            yield "", "", _problem(str(e))
            return
        streams: dict[str, Iterator] = {}
        texts = {"base": "", "finetuned": ""}
        problems = []
        for name, lazy in (("base", self.base), ("finetuned", self.finetuned)):
            try:
                model = lazy.get()
                sampling = self._settings(model, (max_new_tokens, temperature, top_k, top_p, seed))
                ids = self._prompt(model, prompt, sampling, notices if not streams else [])
                streams[name] = stream(model, ids, sampling)
            except UserError as e:
                texts[name] = f"[{e}]"
                problems.append(str(e))
            except Exception as e:
                log.exception("generate_side_by_side failed for %s", name)
                texts[name] = f"[Generation failed ({type(e).__name__}: {e}).]"
                problems.append(texts[name][1:-1])
        if problems and not streams:
            yield texts["base"], texts["finetuned"], _problem(" ".join(dict.fromkeys(problems)))
            return
        notice = "\n\n".join(notices + problems)
        if problems:
            gr.Warning(" ".join(problems))
        started = time.perf_counter()
        counts = {name: 0 for name in streams}
        yield texts["base"], texts["finetuned"], _join("Generating…", notice)
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
                    texts[name] += f"\n[Generation failed ({type(e).__name__}: {e}).]"
            done = ", ".join(f"{name} {n}" for name, n in counts.items())
            yield texts["base"], texts["finetuned"], _join(f"Generating… tokens: {done}", notice)
        seconds = time.perf_counter() - started
        done = ", ".join(f"{name} {n}" for name, n in counts.items())
        yield texts["base"], texts["finetuned"], _join(f"New tokens: {done} in {seconds:.1f} s", notice)

    # ---- evaluation tab

    def score_choices(self) -> list[tuple[str, str]]:
        """The scores present in predictions.jsonl (a model not evaluated or no judge: not offered)."""
        rows = self.results.predictions
        choices = [(label, key) for label, key in SCORE_CHOICES if any(_score(r, key) is not None for r in rows)]
        return choices or SCORE_CHOICES[:1]

    def _columns(self) -> list[tuple[str, str]]:
        # Table columns in a fixed order (base before finetuned), only for the scores present.
        labels = {key: label for label, key in self.score_choices()}
        order = ["base.rouge_l", "finetuned.rouge_l", "base.judge_score", "finetuned.judge_score"]
        return [(labels[key], key) for key in order if key in labels]

    def filter_predictions(
        self, query: str, score: str, min_score: Any, max_score: Any, order: str
    ) -> tuple[pd.DataFrame, str]:
        """The predictions table: rows whose text contains ``query`` and whose ``score`` is within bounds, sorted."""
        rows = self.results.predictions
        if self.results.problem:
            return _table([], self._columns()), f"**{self.results.problem}**"
        try:
            if score not in {key for _, key in SCORE_CHOICES}:
                raise UserError(f"unknown score {score!r}; choose one of: {', '.join(k for _, k in SCORE_CHOICES)}")
            if order not in ORDER_CHOICES:
                raise UserError(f"unknown order {order!r}; choose one of: {', '.join(ORDER_CHOICES)}")
            query, _ = clean_text(query, "the search text")
            lo = None if _blank(min_score) else _number("min score", min_score, -1e9, 1e9, integer=False)
            hi = None if _blank(max_score) else _number("max score", max_score, -1e9, 1e9, integer=False)
            if lo is not None and hi is not None and lo > hi:
                raise UserError(f"min score ({lo:g}) is above max score ({hi:g})")
        except UserError as e:
            gr.Warning(str(e))
            return _table([], self._columns()), _problem(str(e))
        needle = query.strip().casefold()
        if needle:
            rows = [r for r in rows if needle in _searchable(r)]
        if lo is not None:
            rows = [r for r in rows if (s := _score(r, score)) is not None and s >= lo]
        if hi is not None:
            rows = [r for r in rows if (s := _score(r, score)) is not None and s <= hi]
        if order != ORDER_CHOICES[0]:
            sign = -1 if order == "score: high to low" else 1
            # Rows without that score go last either way; ties keep test-set order (sorted is stable).
            rows = sorted(rows, key=lambda r: (_score(r, score) is None, sign * (_score(r, score) or 0.0)))
        total = len(self.results.predictions)
        return _table(rows, self._columns()), f"{len(rows)} of {total} test records"

    def show_prediction(self, evt: gr.SelectData) -> tuple[str, str, str, str, str, str]:
        """Everything about the selected row: instruction, input, reference, both responses, their scores."""
        row_value = evt.row_value or []
        try:
            record_id = int(row_value[0])
        except (IndexError, TypeError, ValueError):
            return "", "", "", "", "", "Select a row of the table."
        row = next((r for r in self.results.predictions if r.get("id") == record_id), None)
        if row is None:
            return "", "", "", "", "", f"No test record with id {record_id}."
        scores = []
        for name in ("base", "finetuned"):
            m = row.get(name)
            if m is None:
                scores.append(f"**{name}**: not evaluated")
                continue
            judge = m.get("judge_score")
            judge_text = "—" if judge is None else str(judge)
            if judge is None and m.get("judge_raw"):
                judge_text += " (judge reply not a score)"
            scores.append(
                f"**{name}**: ROUGE-L {_fmt(m.get('rouge_l'), '.3f')} · exact match {m.get('exact_match', '—')} · "
                f"judge {judge_text} · {m.get('length_tokens', '—')} tokens"
            )
        return (
            row.get("instruction", ""),
            row.get("input", ""),
            row.get("reference", ""),
            (row.get("base") or {}).get("response", "(not evaluated)"),
            (row.get("finetuned") or {}).get("response", "(not evaluated)"),
            f"Test record **{record_id}** — " + " · ".join(scores),
        )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _problem(message: str) -> str:
    gr.Warning(message)
    return f"⚠️ {message}"


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _searchable(row: dict) -> str:
    parts = [row.get("instruction", ""), row.get("input", ""), row.get("reference", "")]
    parts += [(row.get(m) or {}).get("response", "") for m in ("base", "finetuned")]
    return "\n".join(str(p) for p in parts).casefold()


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """One line per record: id, the start of the instruction, and the score ``columns`` (label, key)."""

    def short(text: str, n: int = 90) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= n else text[: n - 1] + "…"

    def cell(row: dict, key: str) -> float | None:
        value = _score(row, key)
        return None if value is None else round(value, 3)

    data = [[r.get("id"), short(r.get("instruction", ""))] + [cell(r, key) for _, key in columns] for r in rows]
    return pd.DataFrame(data, columns=["id", "instruction"] + [label for label, _ in columns])


def _stopped() -> str:
    return "Stopped. The text above is what was generated until then."


def _on_gpu(fn: Callable) -> Callable:
    """``spaces.GPU(fn)`` on a ZeroGPU Space (``spaces`` importable), else ``fn`` as it is."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


# --------------------------------------------------------------------------- the UI


def _header(app: DemoApp) -> str:
    finetuned = (f"`{app.run_name}/{Path(app.finetuned.source).name}` (prompt style `{app.prompt_style.name}`)"
                 if app.finetuned.source else "none")
    return (
        "# GPT-2 from scratch: pretrained vs. instruction-finetuned\n"
        f"Run `{app.run_name or 'none'}` · base model `{app.base.source}` · finetuned checkpoint {finetuned}. "
        "Models load on the first request, so the first answer takes a few seconds longer."
    )


def build_demo(app: DemoApp, examples: tuple[list[str], list[tuple[str, str]]] = ([], [])) -> gr.Blocks:
    """The four-tab Blocks app wired to ``app``'s handlers. Call ``.queue(...)`` then ``.launch()`` on it."""
    prompts, instructions = examples
    limit = min(MAX_NEW_TOKENS, (app.context or 1024) - 1)
    missing_finetuned = f"⚠️ {app.finetuned_problem}" if app.finetuned_problem else ""
    # preprocess=False: the handlers get the raw values and check them themselves, so a non-numeric or
    # out-of-range setting sent through the API gets the same one-line message as in the UI.
    gen = {"concurrency_id": "generate", "show_progress": "hidden", "preprocess": False}

    with gr.Blocks(title="GPT-2 from scratch") as demo:
        gr.Markdown(_header(app))
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                max_new = gr.Slider(1, limit, value=min(DEFAULT_NEW_TOKENS, limit), step=1, label="Max new tokens",
                                    elem_id="max-new-tokens")
                temperature = gr.Slider(0.0, MAX_TEMPERATURE, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)", elem_id="top-k")
                top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)", elem_id="top-p")
                # A fixed default seed: sampled answers are reproducible until the user changes it.
                seed = gr.Number(value=DEFAULT_SEED, precision=0, minimum=0, maximum=MAX_SEED,
                                 label="Seed (used when sampling)", elem_id="seed")
        settings = [max_new, temperature, top_k, top_p, seed]

        with gr.Tabs():
            with gr.Tab("Base model", id="base"):
                gr.Markdown(f"Raw continuation of your text by the pretrained `{app.base.source}`.")
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="base-prompt",
                                    placeholder="Every effort moves you")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="base-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="base-stop")
                out = gr.Textbox(label="Continuation", lines=8, interactive=False, elem_id="base-output")
                status = gr.Markdown(elem_id="base-status")
                if prompts:
                    gr.Examples([[p] for p in prompts], inputs=[prompt], label="Example prompts",
                                elem_id="base-examples")
                event = go.click(_on_gpu(app.generate_base), [prompt, *settings], [out, status],
                                 api_name="generate_base", **gen)
                stop.click(_stopped, None, [status], cancels=[event], api_visibility="private")

            with gr.Tab("Finetuned", id="finetuned"):
                gr.Markdown(missing_finetuned or f"The finetuned model answers an instruction, prompted in its "
                            f"checkpoint's `{app.prompt_style.name}` style.")
                instruction = gr.Textbox(label="Instruction", lines=2, elem_id="ft-instruction",
                                         placeholder="Rewrite the sentence using a simile.")
                input_ = gr.Textbox(label="Input (optional)", lines=2, elem_id="ft-input")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="ft-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="ft-stop")
                out = gr.Textbox(label="Response", lines=8, interactive=False, elem_id="ft-output")
                status = gr.Markdown(elem_id="ft-status")
                if instructions:
                    gr.Examples([list(e) for e in instructions], inputs=[instruction, input_],
                                label="Example instructions", elem_id="ft-examples")
                event = go.click(_on_gpu(app.generate_finetuned), [instruction, input_, *settings], [out, status],
                                 api_name="generate_finetuned", **gen)
                stop.click(_stopped, None, [status], cancels=[event], api_visibility="private")

            with gr.Tab("Side by side", id="side"):
                gr.Markdown(missing_finetuned or f"One instruction, both models, prompted the same way "
                            f"(`{app.prompt_style.name}` style).")
                instruction = gr.Textbox(label="Instruction", lines=2, elem_id="sbs-instruction")
                input_ = gr.Textbox(label="Input (optional)", lines=2, elem_id="sbs-input")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="sbs-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="sbs-stop")
                with gr.Row():
                    out_base = gr.Textbox(label=f"Base ({app.base.source})", lines=10, interactive=False,
                                          elem_id="sbs-base-output")
                    out_ft = gr.Textbox(label="Finetuned", lines=10, interactive=False, elem_id="sbs-ft-output")
                status = gr.Markdown(elem_id="sbs-status")
                if instructions:
                    gr.Examples([list(e) for e in instructions], inputs=[instruction, input_],
                                label="Example instructions", elem_id="sbs-examples")
                event = go.click(_on_gpu(app.generate_side_by_side), [instruction, input_, *settings],
                                 [out_base, out_ft, status], api_name="generate_side_by_side", **gen)
                stop.click(_stopped, None, [status], cancels=[event], api_visibility="private")

            with gr.Tab("Test-set evaluation", id="eval"):
                gr.Markdown(summary_markdown(app.results), elem_id="eval-summary")
                curve = loss_curve(app.run)
                if curve is not None:
                    gr.Image(curve, type="pil", label="Training and validation loss", interactive=False,
                             elem_id="loss-curve", height=320)
                else:
                    gr.Markdown("**No training loss curve: the run has neither `loss.png` nor `metrics.jsonl`. "
                                "Train a model with `python finetune.py`.**", elem_id="loss-missing")
                choices = app.score_choices()
                with gr.Row():
                    search = gr.Textbox(label="Search text", placeholder="word in instruction, input, reference "
                                        "or responses", elem_id="eval-search", scale=3)
                    score = gr.Dropdown(choices, value=choices[0][1], label="Score", elem_id="eval-score")
                    # Textboxes, not gr.Number: blank must mean "no bound", not 0.
                    min_score = gr.Textbox(label="Min score", placeholder="blank = none", elem_id="eval-min")
                    max_score = gr.Textbox(label="Max score", placeholder="blank = none", elem_id="eval-max")
                    order = gr.Dropdown(ORDER_CHOICES, value=ORDER_CHOICES[0], label="Sort", elem_id="eval-order")
                table_value, count_value = app.filter_predictions("", choices[0][1], None, None, ORDER_CHOICES[0])
                count = gr.Markdown(count_value, elem_id="eval-count")
                table = gr.Dataframe(table_value, interactive=False, wrap=True, max_height=400, elem_id="eval-table",
                                     label="Test-set predictions (select a row for details)")
                detail = gr.Markdown("Select a row of the table.", elem_id="eval-detail")
                with gr.Row():
                    d_instruction = gr.Textbox(label="Instruction", lines=2, interactive=False,
                                               elem_id="detail-instruction")
                    d_input = gr.Textbox(label="Input", lines=2, interactive=False, elem_id="detail-input")
                d_reference = gr.Textbox(label="Reference", lines=3, interactive=False, elem_id="detail-reference")
                with gr.Row():
                    d_base = gr.Textbox(label="Base response", lines=5, interactive=False, elem_id="detail-base")
                    d_ft = gr.Textbox(label="Finetuned response", lines=5, interactive=False,
                                      elem_id="detail-finetuned")
                gr.on(
                    [search.change, score.change, min_score.change, max_score.change, order.change],
                    app.filter_predictions, [search, score, min_score, max_score, order], [table, count],
                    api_name="filter_predictions", concurrency_limit=None, show_progress="hidden", preprocess=False,
                )
                table.select(app.show_prediction, None, [d_instruction, d_input, d_reference, d_base, d_ft, detail],
                             api_visibility="private", concurrency_limit=None)
    return demo

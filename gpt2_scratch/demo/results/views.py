"""Pure views: a run's files turned into texts and values for the UI (no Gradio here).

The evaluation files come through ``eval.summary.EvalResults.load`` (the one place that reads and
checks them), so every function here can trust their shape. ``load_run_results`` turns a run into the ``compare.RunResults`` that the results
browser compares; the rest are the browser's texts (labels, diff spans, choices).
"""

from __future__ import annotations

import numpy as np

from gpt2_scratch.demo.discovery import RunSource
from gpt2_scratch.demo.results.browse import RecordView, ResponseView
from gpt2_scratch.demo.results.compare import REWARD_CURVES, Comparison, RunResults
from gpt2_scratch.eval.metrics import RESPONSE_LENGTH, record_metrics
from gpt2_scratch.eval.summary import MODEL_NAMES, EvalResults
from gpt2_scratch.train.log import read_metrics

# --------------------------------------------------------------------------- a response as text


def visible_response(text: str, n_tokens: int | None = None) -> str:
    """``text`` as is, or a visible marker when it is only whitespace (its box would look empty).

    ``n_tokens`` (how many tokens produced it), when known, is part of the marker:
    "(only whitespace: 128 tokens, 256 newlines)".
    """
    if not text or text.strip():
        return text
    kinds = {"\n": "newline", " ": "space", "\t": "tab"}
    chars = set(text)
    kind = kinds.get(next(iter(chars)), "whitespace character") if len(chars) == 1 else "whitespace character"
    what = f"{len(text)} {kind}{'s' if len(text) != 1 else ''}"
    if n_tokens is not None:
        what = f"{n_tokens} token{'s' if n_tokens != 1 else ''}, {what}"
    return f"(only whitespace: {what})"


# --------------------------------------------------------------------------- the results browser


def load_run_results(source: RunSource) -> RunResults:
    """A run offered by the app, read for the results browser: run.json, metrics.jsonl and eval/.

    Missing or malformed eval files become ``problem`` (``EvalResults.load``'s
    message, naming the file); the run's run.json and loss curve are still used.
    A source that could not be had (a Hub repo that failed) is its ``problem`` alone.
    """
    if source.run is None:
        return RunResults(source.label, problem=source.problem or "not available")
    run = source.run
    try:
        info = run.read_info()
    except (FileNotFoundError, ValueError, OSError):
        info = None  # option_differences names the runs without run.json
    try:
        metrics = read_metrics(run.metrics) if run.metrics.is_file() else []
    except OSError:
        metrics = []
    results = EvalResults.load(run, "")
    return RunResults(source.label, info, results.summary, results.predictions, metrics, results.problem)


def plot_metrics(cmp: Comparison) -> list[tuple[str, str]]:
    """(label, key) of the per-record scores worth plotting: those some chosen run has (no judge: not offered)."""
    present = {m for (_, _, m), values in cmp.scores.items() if not np.isnan(values).all()}
    return [(m.label, m.key) for m in record_metrics() if m.key in present and m.plotted]


def record_choices(cmp: Comparison) -> list[tuple[str, int]]:
    """(label, id) of every shared record, for the record picker: "12 · Rewrite the sentence…"."""
    return [(f"{rid} · {text}", int(rid)) for rid, text in zip(cmp.records["id"], cmp.short_instructions)]


# Each chosen run keeps one hue in every plot: dark for the finetuned model and the training loss, light for the
# base model and the validation loss. Plots get these as color_map, which also makes Gradio redraw a plot whose
# series changed (a new value alone keeps the old legend and leaves new series out).
_RUN_HUES = (
    ("#1f77b4", "#aec7e8"),
    ("#ff7f0e", "#ffbb78"),
    ("#2ca02c", "#98df8a"),
    ("#d62728", "#ff9896"),
    ("#9467bd", "#c5b0d5"),
    ("#8c564b", "#c49c94"),
    ("#e377c2", "#f7b6d2"),
    ("#7f7f7f", "#c7c7c7"),
)


def run_color_maps(runs: list[str]) -> dict[str, dict[str, str]]:
    """Color maps of the plots for the chosen ``runs``: by "run", by "run · model", by "run · split" (loss)."""
    hues = {run: _RUN_HUES[k % len(_RUN_HUES)] for k, run in enumerate(runs)}
    return {
        "run": {run: dark for run, (dark, _) in hues.items()},
        "model": {f"{run} · {model}": hue[model == "base"] for run, hue in hues.items() for model in MODEL_NAMES},
        "loss": {f"{run} · {split}": hue[split == "val"] for run, hue in hues.items() for split in ("train", "val")},
        # DPO runs: the reward margin dark, the reward accuracy light (compare.REWARD_CURVES)
        "rewards": {
            f"{run} · {curve}": hue[k] for run, hue in hues.items() for k, (_, curve) in enumerate(REWARD_CURVES)
        },
    }


# Histogram bins from low to high scores: red to amber to green (a length, neither good nor bad: light to dark blue).
_SCORE_RAMP = ("#dc2626", "#f59e0b", "#16a34a")
_NEUTRAL_RAMP = ("#bfdbfe", "#1e3a8a")


def bin_colors(bins: list[str], metric: str) -> dict[str, str]:
    """A color per histogram bin (given in ascending order) of the per-record ``metric``, for
    ``figures.histogram_figure``: good scores green (``PerRecord.higher_is_better``)."""
    better = next((m.higher_is_better for m in record_metrics() if m.key == metric), True)
    ramp = _NEUTRAL_RAMP if better is None else _SCORE_RAMP if better else _SCORE_RAMP[::-1]
    rgb = [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in ramp]
    colors = {}
    for n, name in enumerate(bins):
        t = n / max(len(bins) - 1, 1) * (len(ramp) - 1)  # position along the ramp
        i = min(int(t), len(ramp) - 2)
        mixed = [x + (t - i) * (y - x) for x, y in zip(rgb[i], rgb[i + 1])]
        colors[name] = "#" + "".join(f"{round(v):02x}" for v in mixed)
    return colors


# Word-level differences against the reference, as gr.HighlightedText shows them (browse.word_diff's labels).
DIFF_LABELS = {"+": "not in the reference", "-": "missing from the response"}
DIFF_COLORS = {DIFF_LABELS["+"]: "#bbf7d0", DIFF_LABELS["-"]: "#fecaca"}


def diff_spans(response: ResponseView) -> list[tuple[str, str | None]]:
    """The response's word diff with readable labels, for ``gr.HighlightedText`` (which shows text as text)."""
    return [(text, DIFF_LABELS.get(label)) for text, label in response.diff]


def response_label(response: ResponseView) -> str:
    """ "run · model · 8 tokens · ROUGE-L F1 0.75 · Judge score (0–100) 70 · Exact match 0" (no score: —)."""
    tokens = f"{response.tokens} token{'s' if response.tokens != 1 else ''}"
    scores = [
        f"{label} {'—' if value is None else f'{value:g}'}"
        for label, value in response.scores.items()
        if label != RESPONSE_LENGTH.record.label
    ]  # the token count is already there
    if not response.response:
        note = "empty response"
    elif not response.response.strip():
        note = visible_response(response.response, response.tokens)  # the diff would look empty
    else:
        note = ""
    return " · ".join(p for p in [f"{response.run} · {response.model}", tokens, *scores, note] if p)


def judge_label(response: ResponseView) -> str:
    """The label of the judge's raw reply to ``response``."""
    failed = " (the judge call failed)" if response.judge_error else ""
    return f"Judge's reply to {response.run} · {response.model}{failed}"


def record_title(view: RecordView) -> str:
    """The record view's title line (Markdown; numbers only, nothing from the data)."""
    n = len(view.responses)
    responses = f"{n} response{'s' if n != 1 else ''}"
    return f"**Test record {view.id}** · {responses} · reference {view.reference_tokens} tokens"


def response_slot(response: ResponseView, runs: list[str]) -> int:
    """Where ``response`` goes in the record view: one row per chosen run, base then finetuned."""
    return runs.index(response.run) * len(MODEL_NAMES) + MODEL_NAMES.index(response.model)


# --------------------------------------------------------------------------- small texts


NO_RUN = (
    "**No run to serve yet.** Train one with `python finetune.py` (then restart the app), "
    "or pick one with `python app.py --run runs/<name>`."
)


def header_markdown(
    run_name: str | None, base_source: str, checkpoint: str | None, prompt_style: str, note: str | None = None
) -> str:
    """The app's title and what it serves: run, base model, finetuned checkpoint ("run/final") and why that one.

    With no run (``run_name`` None) it says so, and how to make one; the base model is still served.
    """
    title = "# GPT-2 from scratch: pretrained vs. instruction-finetuned\n"
    loading = "Models load on the first request, so the first answer takes a few seconds longer."
    if run_name is None:
        serving = f"{NO_RUN} Meanwhile the Base model tab serves `{base_source}`. {loading}"
    else:
        finetuned = f"`{checkpoint}` (prompt style `{prompt_style}`)" if checkpoint else "none"
        serving = f"Run `{run_name}` · base model `{base_source}` · finetuned checkpoint {finetuned}. {loading}"
    return title + serving + (f"\n\n⚠️ {note}" if note else "")


ENDED_AT_ONCE = "ended its answer at once (its first token was `<|endoftext|>`)"


def elapsed(n_tokens: int, seconds: float) -> str:
    """ "N new tokens in S s (R tokens/s)": the status line of a finished generation (none: why there is no text)."""
    if n_tokens == 0:
        return f"The model {ENDED_AT_ONCE}: no new tokens."
    return f"{n_tokens} new tokens in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):.1f} tokens/s)"

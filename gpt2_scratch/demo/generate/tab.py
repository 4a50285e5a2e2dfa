"""The three generation tabs (base, finetuned, side by side) and their shared settings, wired to
``DemoApp``'s handlers (``generate_handlers``). ``generation_tabs`` describes them, ``generation_tab``
lays one out; ``layout.build_demo`` puts them beside the results tab.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from gpt2_scratch.demo.generate.handlers import DemoApp
from gpt2_scratch.demo.inputs import SETTINGS

# preprocess=False: the handlers get the raw values and check them themselves, so a non-numeric or
# out-of-range setting sent through the API gets the same one-line message as in the UI.
GENERATE_EVENT = {"concurrency_id": "generate", "show_progress": "hidden", "preprocess": False}


def _on_gpu(fn: Callable) -> Callable:
    """``spaces.GPU(fn)`` on a ZeroGPU Space (``spaces`` importable), else ``fn`` as it is."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _stopped() -> tuple[str, gr.Button]:
    return "Stopped. The text above is what was generated until then.", _stop_button(False)


def _stop_button(running: bool) -> gr.Button:
    """The Stop button's look: red while this visitor's generation runs, small and plain otherwise."""
    return gr.Button(variant="stop" if running else "secondary")


# The Stop button's look follows the generation: instant, outside the queue, not part of the API.
_LOOK = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}


def settings_accordion(app: DemoApp) -> list[gr.components.Component]:
    """The generation settings shared by the three generation tabs: one control per SamplingSettings field,
    in field order (``inputs.SETTINGS``; ``inputs.parse_settings`` reads their values back)."""
    block_size = app.context or 1024
    controls = []
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            for s in SETTINGS:
                _, high, _ = s.bounds(block_size)
                common = dict(value=min(s.start, high), label=s.control.label, elem_id=s.field.name.replace("_", "-"))
                if s.control.box:
                    box = gr.Number(minimum=s.control.low, maximum=high, precision=0 if s.integer else None, **common)
                    controls.append(box)
                else:  # the slider's box takes a typed number too, within the same bounds as the API's
                    controls.append(gr.Slider(s.slider_low, high, step=s.control.step, **common))
    return controls


def _event_function(handler: Callable, n_inputs: int) -> Callable:
    """``handler`` as the event's function: its first ``n_inputs`` parameters, then one per SamplingSettings
    field, whose names are the API's (``client.predict(prompt=..., max_new_tokens=...)``); the handler gets
    the settings as one tuple (``*settings``). A generator function, as Gradio streams only those."""

    def event(*values: Any) -> Iterator:
        yield from handler(*values)

    names = [*list(inspect.signature(handler).parameters)[:n_inputs], *(s.field.name for s in SETTINGS)]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    event.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])  # type: ignore[attr-defined]
    return event


@dataclass
class Box:
    """A textbox of a generation tab: its element id is ``<tab prefix>-<name>``."""

    name: str
    label: str
    lines: int
    placeholder: str | None = None


@dataclass
class GenerationTab:
    """What differs between the three generation tabs."""

    title: str
    tab_id: str
    prefix: str  # of every element id in the tab
    intro: str
    inputs: list[Box]
    outputs: list[Box]  # side by side when more than one
    handler: Callable
    api_name: str
    examples: list[list[str]]
    examples_label: str


def generation_tab(tab: GenerationTab, settings: list[gr.components.Component], limit: int | str) -> None:
    """One generation tab: inputs, Generate/Stop, outputs, status line, examples, wired to ``tab.handler``.

    ``limit``: the generation events' concurrency limit ("default": the queue's).
    """
    with gr.Tab(tab.title, id=tab.tab_id):
        gr.Markdown(tab.intro)
        inputs = [
            gr.Textbox(label=b.label, lines=b.lines, elem_id=f"{tab.prefix}-{b.name}", placeholder=b.placeholder)
            for b in tab.inputs
        ]
        with gr.Row():
            go = gr.Button("Generate", variant="primary", elem_id=f"{tab.prefix}-generate")
            # Small and plain: it matters only while a generation runs (then it turns red: _stop_button).
            stop = gr.Button(
                "Stop", variant="secondary", size="sm", scale=0, min_width=80, elem_id=f"{tab.prefix}-stop"
            )
        with gr.Row() if len(tab.outputs) > 1 else contextlib.nullcontext():
            outputs = [
                gr.Textbox(label=b.label, lines=b.lines, interactive=False, elem_id=f"{tab.prefix}-{b.name}")
                for b in tab.outputs
            ]
        status = gr.Markdown(elem_id=f"{tab.prefix}-status")
        if tab.examples:
            gr.Examples(tab.examples, inputs=inputs, label=tab.examples_label, elem_id=f"{tab.prefix}-examples")
        event = go.click(
            _on_gpu(_event_function(tab.handler, len(inputs))),
            [*inputs, *settings],
            [*outputs, status],
            api_name=tab.api_name,
            concurrency_limit=limit,
            **GENERATE_EVENT,
        )
        stop.click(None, None, None, cancels=[event], api_visibility="private")
        go.click(lambda: _stop_button(True), None, [stop], **_LOOK)
        event.then(lambda: _stop_button(False), None, [stop], **_LOOK)
        # The browser runs an event's failure listeners once its cancellation is complete, so "Stopped."
        # set here cannot be overwritten by a token already on its way. (A listener of the Stop click
        # itself races the cancel request: a late token could leave "Generating…" on screen.)
        event.failure(_stopped, None, [status, stop], api_visibility="private")


def _finetuned_intro(app: DemoApp, intro: str) -> str:
    """A finetuned tab's intro: why there is no finetuned model, or ``intro`` and which checkpoint when not final/."""
    if app.finetuned_problem:
        return f"⚠️ {app.finetuned_problem}"
    return intro + (f"\n\n⚠️ {app.checkpoint_note}" if app.checkpoint_note else "")


def generation_tabs(app: DemoApp, examples: tuple[list[str], list[tuple[str, str]]]) -> list[GenerationTab]:
    prompts, instructions = examples
    style = app.prompt_style.name
    input_box = Box("input", "Input (optional)", 2)
    instruction_examples = [list(e) for e in instructions]
    return [
        GenerationTab(
            "Base model",
            "base",
            "base",
            f"Raw continuation of your text by the pretrained `{app.base.source}`.",
            [Box("prompt", "Prompt", 3, "Every effort moves you")],
            [Box("output", "Continuation", 8)],
            app.generate_base,
            "generate_base",
            [[p] for p in prompts],
            "Example prompts",
        ),
        GenerationTab(
            "Finetuned",
            "finetuned",
            "ft",
            _finetuned_intro(
                app, f"The finetuned model answers an instruction, prompted in its checkpoint's `{style}` style."
            ),
            [Box("instruction", "Instruction", 2, "Rewrite the sentence using a simile."), input_box],
            [Box("output", "Response", 8)],
            app.generate_finetuned,
            "generate_finetuned",
            instruction_examples,
            "Example instructions",
        ),
        GenerationTab(
            "Side by side",
            "side",
            "sbs",
            _finetuned_intro(app, f"One instruction, both models, prompted the same way (`{style}` style)."),
            [Box("instruction", "Instruction", 2), input_box],
            [Box("base-output", f"Base ({app.base.source})", 10), Box("ft-output", "Finetuned", 10)],
            app.generate_side_by_side,
            "generate_side_by_side",
            instruction_examples,
            "Example instructions",
        ),
    ]

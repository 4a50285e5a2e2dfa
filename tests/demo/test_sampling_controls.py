"""The app's generation controls and API parameters are SamplingSettings' fields, in order (``inputs.SETTINGS``):
the repetition penalty is the last one; the handlers take the controls' values as one tuple and callers that
send the first five still work; a field added to SamplingSettings (``WithMinP``) becomes a control and an API
parameter with no other edit."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from gpt2_scratch.demo import DemoApp, build_demo, inputs
from gpt2_scratch.demo.generate import backends as backends_module
from gpt2_scratch.demo.generate import tab as generate_tab
from gpt2_scratch.generate.settings import SamplingSettings
from tests.fixtures.sampling import WithMinP

# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")

SAMPLING = [f.name for f in dataclasses.fields(SamplingSettings)]
ELEM_IDS = ["max-new-tokens", "temperature", "top-k", "top-p", "seed", "repetition-penalty"]


@pytest.fixture
def fed(monkeypatch):
    """The settings of every generation started; the model answers nothing."""
    calls = []

    def stream(model, ids, settings, stop_ids):
        calls.append(settings)
        yield from ()

    monkeypatch.setattr(backends_module, "stream", stream)
    return calls


def _props(demo) -> dict[str, dict]:
    return {c["props"]["elem_id"]: c["props"] for c in demo.config["components"] if c["props"].get("elem_id")}


def _parameters(demo, endpoint: str) -> list[str]:
    return [p["parameter_name"] for p in demo.get_api_info()["named_endpoints"][endpoint]["parameters"]]


def test_the_controls_are_the_sampling_fields_in_order_the_penalty_last(finished_run):
    demo = build_demo(DemoApp.from_run(finished_run))  # a 256-token context
    ids = [c["props"].get("elem_id") for c in demo.config["components"]]
    assert [i for i in ids if i in ELEM_IDS] == ELEM_IDS
    props = _props(demo)
    bounds = {i: (props[i]["minimum"], props[i]["maximum"], props[i]["value"]) for i in ELEM_IDS}
    assert bounds == {
        "max-new-tokens": (1, 255, 128),
        "temperature": (0.0, 2.0, 0.0),
        "top-k": (0, 50257, 0),
        "top-p": (0.01, 1.0, 1.0),
        "seed": (0, 2**32 - 1, 123),
        "repetition-penalty": (0.5, 2.0, 1.0),
    }
    assert props["repetition-penalty"]["label"] == "Repetition penalty (1 = off)"
    assert _parameters(demo, "/generate_base") == ["prompt", *SAMPLING]
    assert _parameters(demo, "/generate_side_by_side") == ["instruction", "input", *SAMPLING]


def test_the_penalty_reaches_the_settings_and_five_values_leave_it_off(finished_run, fed):
    app = DemoApp.from_run(finished_run)
    list(app.generate_base("Hi", 8, 0.0, 0, 1.0, None, 1.3))
    list(app.generate_finetuned("Hi", "", 8, 0.7, 40, 0.9, 7))  # as callers from before the penalty send them
    list(app.generate_side_by_side("Hi", "", 8, 0.0, 0, 1.0, "", 0.8))
    assert fed == [
        SamplingSettings(8, repetition_penalty=1.3),
        SamplingSettings(8, 0.7, top_k=40, top_p=0.9, seed=7),
        SamplingSettings(8, repetition_penalty=0.8),
        SamplingSettings(8, repetition_penalty=0.8),
    ]


@pytest.mark.parametrize(
    "values, message",
    [
        ((8, 0.0, 0, 1.0, None, 0), "repetition penalty must be a number from 0.5 to 2, got 0"),
        ((8, 0.0, 0, 1.0, None, "strong"), "repetition penalty must be a number from 0.5 to 2, got 'strong'"),
        (
            (8, 0.0, 0, 1.0, None, 1.0, 5),
            "expected at most 6 generation settings "
            "(max new tokens, temperature, top-k, top-p, seed, repetition penalty), got 7",
        ),
    ],
)
def test_a_bad_penalty_or_too_many_settings_is_a_message(finished_run, fed, values, message):
    app = DemoApp.from_run(finished_run)
    assert list(app.generate_base("Hi", *values)) == [("", f"⚠️ {message}")]
    assert fed == []


def test_a_new_sampling_field_becomes_a_control_and_an_api_parameter(finished_run, fed, monkeypatch):
    monkeypatch.setattr(inputs, "SamplingSettings", WithMinP)
    monkeypatch.setattr(inputs, "SETTINGS", inputs._settings())
    monkeypatch.setattr(generate_tab, "SETTINGS", inputs.SETTINGS)
    app = DemoApp.from_run(finished_run)
    demo = build_demo(app)
    min_p = _props(demo)["min-p"]
    assert (min_p["label"], min_p["minimum"], min_p["maximum"], min_p["value"]) == ("Min-p (0 = off)", 0.0, 1.0, 0.0)
    assert _parameters(demo, "/generate_finetuned") == ["instruction", "input", *SAMPLING, "min_p"]
    list(app.generate_base("Hi", 8, 0.0, 0, 1.0, None, 1.0, 0.05))
    list(app.generate_base("Hi", 8, 0.0, 0, 1.0, None, 1.0, 0))  # its "off"
    assert fed == [WithMinP(8, min_p=0.05), WithMinP(8)]
    assert list(app.generate_base("Hi", 8, 0.0, 0, 1.0, None, 1.0, 2)) == [
        ("", "⚠️ min-p must be a number from 0 to 1, got 2")
    ]

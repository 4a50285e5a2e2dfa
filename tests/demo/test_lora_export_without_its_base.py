"""A published LoRA run whose base cannot be had where the app runs (a local path of the machine that trained,
or no network): the finetuned tab serves the export's merged weights; the base tab says why it has no model."""

from __future__ import annotations

import shutil

import pytest

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import save_checkpoint
from gpt2_scratch.demo import DemoApp
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunPaths
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.lora import write_lora_run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]
GREEDY = (12, 0.0, 0, 1.0, None)  # max new tokens, temperature, top-k, top-p, seed as the UI sends them
INSTRUCTION = "Name a primary color."


def greedy(model, text: str) -> str:
    return decode(generate(model, [encode(text)], SamplingSettings(max_new_tokens=12))[0])


@pytest.fixture
def export_without_base(tmp_path) -> RunPaths:
    """The export of a LoRA run on the local base ``models/gpt2-small``, which is then moved away."""
    base = tmp_path / "models" / "gpt2-small"
    save_checkpoint(base, load_model("random:tiny")[0], prompt_style="alpaca")
    run = write_lora_run(tmp_path / "runs" / "lora-run", base=str(base))
    export = export_run(run.root, tmp_path / "space" / "export", repo_id="me/lora").folder
    shutil.rmtree(base)
    return RunPaths(export)


def test_the_merged_weights_are_served_and_the_base_tab_says_why_it_has_none(export_without_base):
    app = DemoApp.from_run(export_without_base)
    text, status = list(app.generate_finetuned(INSTRUCTION, "", *GREEDY))[-1]
    merged = load_model(str(export_without_base.root))[0]  # the export's root weights: base + adapter merged
    assert not lora.has_adapters(merged)
    assert text == greedy(merged, get_prompt_style("alpaca").format(INSTRUCTION)), status
    text, status = list(app.generate_base("Hello", *GREEDY))[-1]
    assert text == "" and "of this LoRA run cannot be loaded here" in status and "merged weights" in status
    assert "finetune.py" not in status and "\n" not in status


def test_a_base_that_fails_to_load_falls_back_to_the_merged_weights(export_without_base, monkeypatch):
    # The base recorded is a Hub id here, and the Hub cannot be reached (a Space offline, for instance).
    import json

    config = export_without_base.root / "config.json"
    meta = json.loads(config.read_text())
    meta["gpt2_scratch"]["adapter"]["base_model"] = meta["gpt2_scratch"]["base_model"] = "me/unreachable"
    config.write_text(json.dumps(meta))
    info = json.loads((export_without_base.root / "run.json").read_text())
    (export_without_base.root / "run.json").write_text(json.dumps({**info, "base_model": "me/unreachable"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = DemoApp.from_run(export_without_base)
    assert app.shared_base
    text, status = list(app.generate_finetuned(INSTRUCTION, "", *GREEDY))[-1]
    merged = load_model(str(export_without_base.root))[0]
    assert text == greedy(merged, get_prompt_style("alpaca").format(INSTRUCTION)), status
    assert not lora.has_adapters(app.finetuned.get())
    text, status = list(app.generate_base("Hello", *GREEDY))[-1]
    assert text == "" and "`me/unreachable` of this LoRA run cannot be loaded here" in status
    assert "finetune.py" not in status

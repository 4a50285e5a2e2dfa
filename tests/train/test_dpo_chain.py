"""The whole chain offline, through the scripts: SFT -> make_preferences -> DPO -> evaluate -> export/card -> app.

``random:tiny`` on 60 instruction records built here in the book's layout (51 train / 6 test / 3 validation).
"""

from __future__ import annotations

import json

import pytest
import torch

import evaluate
import finetune
import make_preferences
from gpt2_scratch.demo.discovery import RunSource
from gpt2_scratch.demo.results.compare import compare, reward_frame
from gpt2_scratch.demo.results.views import load_run_results
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunPaths
from gpt2_scratch.tokenizer import decode, encode
from gpt2_scratch.train.log import loss_figure, read_metrics
from tests.fixtures.preferences import instruction_entries, write_json

TINY = ["--base", "random:tiny", "--prompt-style", "phi3", "--sample-tokens", "2", "--eval-batches", "1"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("chain")
    runs = tmp / "runs"
    instructions = write_json(tmp / "data" / "instructions.json", instruction_entries(60))
    data = ["--dataset", str(instructions), "--limit", "60", "--out-dir", str(runs)]
    assert finetune.main([*TINY, *data, "--name", "sft", "--max-steps", "2", "--lr", "1e-3"]) == 0
    sft = runs / "sft"
    prefs = tmp / "prefs.json"
    args = ["--model", str(sft), "--dataset", str(instructions), "--limit", "60"]
    assert make_preferences.main([*args, "--out", str(prefs), "--max-new-tokens", "4", "--no-progress"]) == 0
    dpo_args = ["--method", "dpo", "--base", str(sft), "--prompt-style", "phi3", "--dataset", str(prefs)]
    dpo_args += ["--out-dir", str(runs), "--name", "dpo", "--max-steps", "3", "--eval-every", "1", "--lr", "1e-3"]
    assert finetune.main([*dpo_args, "--sample-tokens", "2", "--eval-batches", "1"]) == 0
    for run in ("sft", "dpo"):
        ev = [
            "--run",
            str(runs / run),
            "--max-new-tokens",
            "3",
            "--batch-size",
            "8",
            "--no-progress",
            "--device",
            "cpu",
        ]
        assert evaluate.main(ev) == 0
    return RunPaths(sft), RunPaths(runs / "dpo"), prefs


def test_the_preferences_come_from_the_sft_model(chain):
    sft, _, prefs = chain
    entries = json.loads(prefs.read_text())
    assert len(entries) == 60 and all(e["chosen"] == e["output"] for e in entries)
    assert not prefs.with_name("prefs.json.progress.jsonl").exists()  # removed once the file is written
    model, info = load_model(str(sft.root))
    assert info.prompt_style == "phi3"  # the SFT run's style, which make_preferences used
    style = get_prompt_style(info.prompt_style)
    for e in entries[:3]:  # rejected: the SFT model's own greedy answer, as it gives it alone
        (ids,) = generate(
            model, [encode(style.format(e["instruction"], e["input"]))], SamplingSettings(max_new_tokens=4)
        )
        assert e["rejected"] == decode(ids).strip()


def test_evaluate_compares_the_dpo_run_with_its_sft_model(chain, capsys):
    sft, dpo, _ = chain
    summary = json.loads(dpo.summary.read_text())
    assert summary["method"] == "dpo" and summary["base_model"] == str(sft.root)
    assert json.loads(sft.summary.read_text())["method"] == "sft"
    # The DPO run's base is the SFT run's finetuned model: the same answers on the same test records.
    sft_rows, dpo_rows = read_jsonl(sft.predictions), read_jsonl(dpo.predictions)
    assert [r["id"] for r in dpo_rows] == [r["id"] for r in sft_rows] == list(range(51, 57))
    assert [r["base"]["response"] for r in dpo_rows] == [r["finetuned"]["response"] for r in sft_rows]
    assert summary["models"]["base"]["reference_loss"] == pytest.approx(
        json.loads(sft.summary.read_text())["models"]["finetuned"]["reference_loss"], rel=1e-6
    )


def test_the_card_says_dpo_of_which_sft_model_with_which_beta_and_data(chain, tmp_path):
    sft, dpo, prefs = chain
    card = (export_run(dpo.root, tmp_path / "export").folder / "README.md").read_text()
    assert (
        "preference-tuned with DPO (beta 0.1, log-probabilities summed over each response) from the SFT model "
        "`sft (a local model)`" in card
    )
    assert "on the preference pairs of `prefs.json`" in card and "- dpo" in card
    assert "`base` is the SFT model `sft (a local model)` this DPO run started from" in card
    assert str(sft.root) not in card  # a path of the machine that trained


def test_the_results_browser_and_the_figure_show_the_dpo_metrics(chain):
    sft, dpo, _ = chain
    cmp = compare([load_run_results(RunSource("sft", sft)), load_run_results(RunSource("dpo", dpo))])
    assert len(cmp.records) == 6  # the same test records: compared record by record
    frame = reward_frame(cmp)
    assert set(frame["run"]) == {"dpo"} and set(frame["curve"]) == {"val reward margin", "val reward accuracy"}
    assert list(frame[frame["curve"] == "val reward margin"]["tokens_seen"])[0] == 0  # from step 0 on
    fig = loss_figure(read_metrics(dpo.metrics))
    assert [ax.get_ylabel() for ax in fig.axes] == ["DPO loss", "reward margin (chosen - rejected)", "reward accuracy"]
    assert [ax.get_ylabel() for ax in loss_figure(read_metrics(sft.metrics)).axes] == ["loss"]

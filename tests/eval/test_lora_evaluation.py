"""evaluate.py on a LoRA run: the base is the same weights with the adapter off, loaded once.

The run is built by ``fixtures.lora.write_lora_run`` (``random:tiny`` base, an adapter with noise).
"""

from __future__ import annotations

import json

import pytest

import evaluate as evaluate_cli
from gpt2_scratch import lora
from gpt2_scratch.checkpoint import read_checkpoint_info
from gpt2_scratch.eval import evaluation
from gpt2_scratch.eval.evaluation import EvalSettings, evaluate_run
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.lora import RECORDS, write_lora_run

FAST = dict(sampling=SamplingSettings(max_new_tokens=6), batch_size=2, progress=False, device="cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def greedy(model, record) -> str:
    prompt = get_prompt_style("alpaca").format(record.instruction, record.input)
    return decode(generate(model, [encode(prompt)], SamplingSettings(max_new_tokens=6))[0])


def test_a_lora_run_is_evaluated_on_one_load_of_its_base(tmp_path, monkeypatch):
    run = write_lora_run(tmp_path / "run")
    loads = []
    real = evaluation.load_model
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: loads.append((a, k)) or real(*a, **k))
    headers = {}  # the progress files' headers (the files go once the results are written)
    opened = evaluation.ProgressFile.open
    monkeypatch.setattr(
        evaluation.ProgressFile,
        "open",
        lambda path, header, *a, **k: headers.setdefault(path.stem, header) and opened(path, header, *a, **k),
    )
    summary = evaluate_run(run, EvalSettings(**FAST))
    assert [(a[0], k.get("merge")) for a, k in loads] == [(str(run.final), False)]  # once, adapter kept apart
    rows = read_jsonl(run.predictions)
    base, _ = load_model("random:tiny")
    merged, _ = load_model(str(run.final))
    for record, row in zip(RECORDS, rows):
        assert row["base"]["response"] == greedy(base, record)  # the base: the adapter off
        assert row["finetuned"]["response"] == greedy(merged, record)  # the finetuned: what load_model merges
    assert any(r["base"]["response"] != r["finetuned"]["response"] for r in rows)
    assert summary["checkpoint"]["sha256"] == read_checkpoint_info(run.final).sha256
    # The progress headers identify both models' weights: the adapter's file, the base's tensors.
    headers = {name: headers[f"partial_{name}"] for name in ("base", "finetuned")}
    assert headers["base"]["sha256"] == lora.base_sha256(base)
    assert headers["finetuned"]["sha256"] == read_checkpoint_info(run.final).sha256


def test_the_cli_evaluates_a_lora_run_and_an_unreachable_base_writes_nothing(tmp_path, capsys):
    run = write_lora_run(tmp_path / "run")
    assert evaluate_cli.main(["--run", str(run.root), "--limit", "2", "--max-new-tokens", "4", "--no-progress"]) == 0
    assert json.loads(run.summary.read_text())["num_records"] == 2
    gone = write_lora_run(tmp_path / "gone")
    meta = json.loads((gone.final / "config.json").read_text())
    meta["adapter"]["base_model"] = str(tmp_path / "nowhere")
    (gone.final / "config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert evaluate_cli.main(["--run", str(gone.root), "--max-new-tokens", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {gone.final}: cannot load its base model '{tmp_path / 'nowhere'}'")
    assert "\n" not in err and not gone.eval_dir.exists()

"""Results are never lost or mislabelled: evaluations replaced only when asked, and what the model card says.

A finished evaluation is replaced by one with other settings only with ``--replace``, the
message saying in words what differs; the card says what the scores were measured on and
flags a subset; no tokens/s without tokens; no judge rows without a judge; the card
publishes each option once, none of the local ones, a Limitations section and how to
install the project; the export always writes tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import evaluate as evaluate_cli
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.data.records import Record, write_records
from gpt2_scratch.eval.summary import ModelResults, aggregate, format_table
from gpt2_scratch.files import atomic_write_json
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.publish.hub_upload import notes
from gpt2_scratch.publish.model_card import model_card
from gpt2_scratch.runs import RunInfo
from tests.fixtures.runs import write_tiny_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")
RECORDS = [Record(i, f"Name the number {i}.", "", f"{i}.") for i in range(6)]
SUMMARY_MODELS = {
    name: {"rouge_l": 0.5, "exact_match": 0.0, "perplexity": 9.0, "reference_loss": 2.2, "judge_mean": None}
    for name in ("base", "finetuned")
}


def evaluated_run(root: Path):
    run = write_tiny_run(root, with_eval=False, with_metrics=False)
    write_records(run.test_records, RECORDS)
    return run


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_a_finished_evaluation_is_replaced_only_when_asked(tmp_path, monkeypatch, capsys):
    """Item 6: `evaluate.py --limit 3 --max-new-tokens 4` with no --run picks the newest run and must not replace
    its full evaluation silently; the error says in words what differs (no hashes, no progress file names)."""
    run = evaluated_run(tmp_path / "runs" / "full")
    monkeypatch.chdir(tmp_path)  # no --run: the newest run under runs/
    base = ["--models", "finetuned", "--batch-size", "3", "--no-progress"]
    assert evaluate_cli.main([*base, "--max-new-tokens", "6"]) == 0
    capsys.readouterr()
    full = run.predictions.read_bytes(), run.summary.read_bytes()

    assert evaluate_cli.main([*base, "--limit", "3", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {Path('runs/full/eval')}/ holds a finished evaluation made with other settings: "
        "test records 6 (now 3), the test records differ, max new tokens 6 (now 4); "
        "rerun with its settings to reuse it, or pass --replace to replace it\n"
    )
    assert (run.predictions.read_bytes(), run.summary.read_bytes()) == full  # nothing lost

    assert evaluate_cli.main([*base, "--limit", "3", "--max-new-tokens", "4", "--replace"]) == 0
    err = capsys.readouterr().err
    assert "note: replacing the finished evaluation in runs/full/eval/ (test records 6 (now 3)" in err
    assert "sha256" not in err and "partial_" not in err
    summary = json.loads(run.summary.read_text())
    assert (summary["num_records"], summary["test_records_total"]) == (3, 6)
    # The same settings again: the finished evaluation is reused, not refused.
    assert evaluate_cli.main([*base, "--limit", "3", "--max-new-tokens", "4"]) == 0


def test_the_card_says_what_the_scores_were_measured_on_and_flags_a_subset(tmp_path):
    """Item 6: records, max new tokens and dtype; a subset is said loudly and kept out of the model-index."""
    run = evaluated_run(tmp_path / "sub")
    summary = {
        "num_records": 3,  # an older summary.json: no test_records_total, the export counts data/test.jsonl
        "generation": {"max_new_tokens": 8, "temperature": 0.0},
        "dtype": "bfloat16",
        "judge": None,
        "models": SUMMARY_MODELS,
    }
    atomic_write_json(run.summary, summary)
    run.predictions.write_text('{"id": 0}\n')
    result = export_run(run.root, tmp_path / "export", repo_id="me/sub")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "Measured on 3 of the run's 6 held-out test instructions, answers of at most 8 new tokens" in card
    assert "inference in bfloat16" in card
    assert "> ⚠️ **These scores are of 3 of the 6 test records only**" in card
    assert "model-index" not in front_matter(card)
    assert result.subset == (3, 6)
    plan = SimpleNamespace(export=result, private=False, space=None)
    assert any(line.startswith("warning: the scores are of 3 of the 6 test records only") for line in notes(plan))

    whole = {**summary, "num_records": 6, "test_records_total": 6}
    card = model_card(
        RunInfo(name="sub", base_model="gpt2", prompt_style="alpaca"),
        GPTConfig.from_preset("tiny"),
        whole,
        repo_id="me/sub",
        license="mit",
        num_params=1000,
        has_loss_plot=False,
        prompt_style="alpaca",
    )
    assert "⚠️" not in card and "model-index" in front_matter(card)


def test_no_rate_without_tokens():
    """Item 8: a model that ended every answer at once has no tokens per second."""
    rows = [{"m": {"response": "", "rouge_l": 0.0, "exact_match": 0, "length_tokens": 0, "judge_score": None}}] * 2
    silent = ModelResults(["", ""], [0, 0], 0.4, 2, 3.0, 10, None, [])
    agg = aggregate("m", silent, [{**r, "m": {**r["m"], "judge_error": False}} for r in rows], judged=False)
    assert agg["tokens_per_second"] is None and agg["empty_share"] == 1.0
    talking = ModelResults(["a b", "c"], [2, 1], 0.5, 4, 3.0, 10, None, [])
    assert aggregate("m", talking, [{**r, "m": {**r["m"], "judge_error": False}} for r in rows], judged=False)[
        "tokens_per_second"
    ] == pytest.approx(8.0)


def test_judge_rows_only_when_a_judge_was_used():
    """Item 16 (the CLI summary)."""
    models = {"finetuned": {"rouge_l": 0.5, "judge_mean": None, "judge_unparsed": 0, "tokens_per_second": None}}
    table = format_table({"judge": None, "models": models})
    assert "Judge" not in table and "ROUGE-L F1" in table
    assert [line.split()[-1] for line in table.splitlines() if line.startswith("Tokens per second")] == ["—"]
    judged = format_table({"judge": {"model": "llama3"}, "models": models})
    assert "Judge score (0–100)" in judged and "Judge replies not parsed" in judged


def test_the_card_publishes_each_option_once_and_no_local_ones():
    """Item 9 (and 5: a local dataset is shown by its file name, not the trainer's path)."""
    training = {
        "base": "gpt2",
        "dataset": "/home/me/data/instruction-data.json",
        "out_dir": "runs",
        "name": "sig3",
        "prompt_style": "alpaca",
        "epochs": 2,
        "lr": 5e-05,
        "device": "auto",
        "resume": None,
        "precision": "auto",
    }
    run = RunInfo(
        name="sig3",
        base_model="gpt2",
        prompt_style="alpaca",
        training=training,
        dataset={
            "source": "/home/me/data/instruction-data.json",
            "sha256": "ab" * 32,
            "num_records": 1100,
            "split": {"train": 935, "test": 110, "val": 55},
        },
    )
    card = model_card(
        run,
        GPTConfig.from_preset("gpt2"),
        None,
        repo_id="me/sig3",
        license="mit",
        num_params=124_439_808,
        has_loss_plot=False,
        prompt_style="alpaca",
    )
    for row in ("| base |", "| dataset source |", "| prompt_style |", "| out_dir |", "| device |", "| resume |"):
        assert row not in card, row
    assert "| name |" not in card and "/home/me" not in card
    for row in ("| base model | gpt2 |", "| prompt style | alpaca |", "| dataset | instruction-data.json |"):
        assert card.count(row) == 1, row
    assert "| epochs | 2 |" in card and "| precision | auto |" in card
    limitations = card.split("## Limitations", 1)[1]
    assert "124M parameters, finetuned on 935 examples of `instruction-data.json`" in limitations
    assert "English only" in limitations and "The test set is 110 records of the same dataset" in limitations
    assert "`pip install -r requirements.txt`" in card and "not on PyPI" in card
    snippet = card.split("```python")[2].split("```")[0]
    imports = "\n".join(line for line in snippet.splitlines() if line.startswith("from "))
    exec(imports, {})  # the usage snippet's imports exist


def test_the_export_always_writes_tokenizer_json(tmp_path):
    """Item 10: tokenizers is a requirement, so tokenizer.json is always written (and loads as a fast tokenizer)."""
    from transformers import PreTrainedTokenizerFast

    from gpt2_scratch.tokenizer import encode

    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.split(">=")[0].strip() == "tokenizers" for line in requirements)
    run = write_tiny_run(tmp_path / "tok", with_eval=False, with_metrics=False)
    export = export_run(run.root, tmp_path / "export")
    assert "tokenizer.json" in export.files
    fast = PreTrainedTokenizerFast(tokenizer_file=str(export.folder / "tokenizer.json"))
    text = "Name three primary colors.<|endoftext|>"
    assert fast(text)["input_ids"] == encode(text)

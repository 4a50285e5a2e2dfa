"""Evaluation end to end on a tiny run: result schema, model identity, resume, settings checks, the judge, dtypes."""

import json

import pytest
import torch

import evaluate as evaluate_cli
from gpt2_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt2_scratch.data.batches import encode_record
from gpt2_scratch.eval.evaluation import EvalSettings, evaluate_run
from gpt2_scratch.eval.judge import JudgeConfig
from gpt2_scratch.eval.scoring import reference_loss
from gpt2_scratch.generate import batched
from gpt2_scratch.generate.batched import plan_batches
from gpt2_scratch.generate.progress import SettingsMismatch
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.evaluation import FAST, RECORDS, interrupt_after_first_batch, make_run

TIMING = ("generation_seconds", "tokens_per_second")

# Tiny models run fastest on one thread, and do not crawl when other processes share the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def without_timing(summary: dict) -> dict:
    """``summary`` without its timing fields, the run folder's path written as <run>."""
    s = json.loads(json.dumps(summary).replace(summary["run"], "<run>"))
    s.pop("created")
    for m in s["models"].values():
        for k in TIMING:
            m.pop(k)
    return s


def test_results_follow_the_schema(run):
    summary = evaluate_run(run, EvalSettings(**FAST))
    rows = [json.loads(line) for line in run.predictions.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in RECORDS]  # one line per record, in record order
    for row, rec in zip(rows, RECORDS):
        assert (row["instruction"], row["input"], row["reference"]) == (rec.instruction, rec.input, rec.output)
        for name in ("base", "finetuned"):
            m = row[name]
            assert {"response", "rouge_l", "exact_match", "length_tokens", "judge_score", "judge_raw"} <= set(m)
            assert isinstance(m["response"], str) and isinstance(m["rouge_l"], float)
            assert m["exact_match"] in (0, 1) and 0 <= m["length_tokens"] <= 6
            assert m["judge_score"] is None and m["judge_raw"] is None
    assert json.loads(run.summary.read_text()) == summary
    assert summary["run"] == str(run.root) and summary["num_records"] == 6
    assert summary["checkpoint"]["sha256"] == load_checkpoint(run.final)[1].sha256
    assert (summary["base_model"], summary["prompt_style"], summary["judge"]) == ("random:tiny", "alpaca", None)
    assert summary["generation"] == {
        "max_new_tokens": 6,
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
        "seed": None,
        "batch_size": 2,
        "refill": False,
    }
    keys = {
        "reference_loss",
        "perplexity",
        "rouge_l",
        "exact_match",
        "mean_length_tokens",
        "empty_share",
        "judge_mean",
        "judge_unparsed",
        "generation_seconds",
        "tokens_per_second",
    }
    for name in ("base", "finetuned"):
        agg = summary["models"][name]
        assert keys <= set(agg)
        assert agg["mean_length_tokens"] == pytest.approx(sum(r[name]["length_tokens"] for r in rows) / 6)
        assert agg["judge_mean"] is None and agg["judge_unparsed"] == 0


def test_each_model_is_the_right_one_and_matches_direct_generation(run):
    summary = evaluate_run(run, EvalSettings(**FAST))
    rows = [json.loads(line) for line in run.predictions.read_text().splitlines()]
    style = get_prompt_style("alpaca")
    examples = [encode_record(r, style) for r in RECORDS]
    for name, (model, _) in {"base": load_model("random:tiny"), "finetuned": load_checkpoint(run.final)}.items():
        assert summary["models"][name]["reference_loss"] == pytest.approx(reference_loss(model, examples)[0], rel=1e-5)
        for row, rec in zip(rows, RECORDS):
            ids = generate(model, [encode(style.format(rec.instruction, rec.input))], FAST["sampling"])[0]
            assert row[name]["response"] == decode(ids)  # each prompt alone gives the batched result
            assert row[name]["length_tokens"] == len(ids)
    assert summary["models"]["base"]["reference_loss"] != summary["models"]["finetuned"]["reference_loss"]


def test_plan_batches_groups_by_length_longest_first():
    assert plan_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]


def test_interrupted_run_resumes_to_identical_files(run, tmp_path, monkeypatch):
    reference = make_run(tmp_path / "reference")
    expected = evaluate_run(reference, EvalSettings(**FAST))

    calls = []

    def crash_after_first_batch(model, prompts, settings, stop_ids):
        if calls:
            raise KeyboardInterrupt  # what a Ctrl-C in the second batch looks like
        calls.append(len(prompts))
        return generate(model, prompts, settings, stop_ids)

    monkeypatch.setattr(batched, "generate", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run, EvalSettings(**FAST))
    assert not run.predictions.exists() and not run.summary.exists()
    partial = run.eval_dir / "partial_base.jsonl"
    assert len(partial.read_text().splitlines()) == 2  # header + the one finished batch
    with open(partial, "a") as f:
        f.write('{"batch": 1, "indices": [0, 5], "outp')  # a line cut short by the kill

    resumed = []

    def counting(model, prompts, settings, stop_ids):
        resumed.append(len(prompts))
        return generate(model, prompts, settings, stop_ids)

    monkeypatch.setattr(batched, "generate", counting)
    got = evaluate_run(run, EvalSettings(**FAST))
    assert resumed == [2, 2, 2, 2, 2]  # base: 2 batches left of 3; finetuned: all 3
    assert run.predictions.read_bytes() == reference.predictions.read_bytes()
    assert without_timing(got) == without_timing(expected)
    assert got["checkpoint"]["sha256"] != "" and got["models"]["base"]["generation_seconds"] > 0

    # A finished evaluation rerun generates nothing and writes the same predictions.
    resumed.clear()
    evaluate_run(run, EvalSettings(**FAST))
    assert resumed == [] and run.predictions.read_bytes() == reference.predictions.read_bytes()


def test_changed_settings_do_not_mix(run, monkeypatch):
    interrupt_after_first_batch(run, EvalSettings(**{**FAST, "models": ("finetuned",)}), monkeypatch)
    with pytest.raises(SettingsMismatch, match=r"max new tokens 6 \(now 5\)"):
        evaluate_run(
            run, EvalSettings(**{**FAST, "models": ("finetuned",), "sampling": SamplingSettings(max_new_tokens=5)})
        )
    # Other weights under the same run: the checkpoint's sha256 differs.
    model, _ = load_checkpoint(run.final)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] += 1.0
    save_checkpoint(run.final, model, prompt_style="alpaca")
    with pytest.raises(SettingsMismatch, match="the model's weights differ"):
        evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",)}))
    summary = evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",), "restart": True}))
    assert list(summary["models"]) == ["finetuned"]
    row = json.loads(run.predictions.read_text().splitlines()[0])
    assert "finetuned" in row and "base" not in row


def test_judge_scores_are_recorded(run, judge_server):
    server = judge_server
    server.queue += [
        (200, "80", 0.0),
        (200, "no idea", 0.0),
        (500, "boom", 0.0),
        (200, "40", 0.0),
        (200, "60", 0.0),
        (200, "100", 0.0),
    ]
    judge = JudgeConfig(url=server.url, model="judge-model", retries=0, backoff=0.0)
    summary = evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",), "judge": judge}))
    rows = [json.loads(line)["finetuned"] for line in run.predictions.read_text().splitlines()]
    assert [r["judge_score"] for r in rows] == [80, None, None, 40, 60, 100]
    assert rows[1]["judge_raw"] == "no idea" and not rows[1]["judge_error"]
    assert "HTTP 500" in rows[2]["judge_raw"] and rows[2]["judge_error"]
    agg = summary["models"]["finetuned"]
    assert agg["judge_mean"] == pytest.approx((80 + 40 + 60 + 100) / 4)
    assert (agg["judge_unparsed"], agg["judge_errors"]) == (2, 1)
    assert summary["judge"]["url"] == server.url and summary["judge"]["model"] == "judge-model"
    # The judge saw the formatted prompt, the reference and the stripped response.
    first = server.requests[0]["body"]["messages"][0]["content"]
    style = get_prompt_style("alpaca")
    assert f"`{style.format(RECORDS[0].instruction, RECORDS[0].input)}`" in first and "`Blue.`" in first
    assert f"`{rows[0]['response'].strip()}`" in first


def test_a_finished_evaluation_does_not_block_new_settings(run, capsys):
    evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",)}))
    assert json.loads(run.predictions.read_text().splitlines()[0])["finetuned"]["length_tokens"] == 6
    summary = evaluate_run(
        run,
        EvalSettings(
            **{**FAST, "models": ("finetuned",), "sampling": SamplingSettings(max_new_tokens=3), "replace": True}
        ),
    )
    err = capsys.readouterr().err
    assert "note: replacing the finished evaluation" in err and "max new tokens 6 (now 3)" in err
    assert summary["generation"]["max_new_tokens"] == 3
    assert [json.loads(line)["finetuned"]["length_tokens"] for line in run.predictions.read_text().splitlines()] == [
        3
    ] * 6


def test_max_new_tokens_are_capped_to_the_context_with_a_note(run, capsys):
    # random:tiny has a 256-token context; the longest test prompt leaves less than that for the response.
    longest = len(encode(get_prompt_style("alpaca").format(RECORDS[0].instruction, RECORDS[0].input)))  # --limit 1
    assert (
        evaluate_cli.main(
            [
                "--run",
                str(run.root),
                "--models",
                "finetuned",
                "--max-new-tokens",
                "256",
                "--limit",
                "1",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"note: max new tokens 256 capped at {256 - longest}" in err
    assert json.loads(run.summary.read_text())["generation"]["max_new_tokens"] == 256 - longest


def test_dtype_is_used_and_recorded(run, monkeypatch):
    from gpt2_scratch import inference

    summary = evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",), "dtype": "bfloat16"}))
    assert summary["dtype"] == "bfloat16"
    float32 = make_run(run.root.parent / "float32")
    reference = evaluate_run(float32, EvalSettings(**{**FAST, "models": ("finetuned",)}))
    assert reference["dtype"] == "float32"
    bf16_loss, f32_loss = (s["models"]["finetuned"]["reference_loss"] for s in (summary, reference))
    assert bf16_loss != f32_loss and bf16_loss == pytest.approx(f32_loss, rel=0.01)
    # "auto" is recorded as what it chose, and results made in another format are not mixed in.
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: False)
    with pytest.raises(SettingsMismatch, match="dtype bfloat16 \\(now float32\\)"):
        evaluate_run(run, EvalSettings(**{**FAST, "models": ("finetuned",), "dtype": "auto"}))


def test_refilled_rows_give_the_fixed_batches_results_and_resume(run, tmp_path, monkeypatch):
    fixed = make_run(tmp_path / "fixed")
    expected = evaluate_run(fixed, EvalSettings(**FAST))
    refill = EvalSettings(**{**FAST, "refill": True})
    interrupt_after_first_batch(run, refill, monkeypatch)
    partial = run.eval_dir / "partial_base.jsonl"
    assert len(partial.read_text().splitlines()) == 2  # header + the one saved batch
    got = evaluate_run(run, refill)
    assert run.predictions.read_bytes() == fixed.predictions.read_bytes()
    assert got["generation"]["refill"] is True and expected["generation"]["refill"] is False
    assert got["models"]["base"]["rouge_l"] == expected["models"]["base"]["rouge_l"]


def test_repetition_penalty_is_part_of_the_settings_and_older_files_read_as_off(run, monkeypatch):
    only = {**FAST, "models": ("finetuned",)}
    interrupt_after_first_batch(run, EvalSettings(**only), monkeypatch)
    partial = run.eval_dir / "partial_finetuned.jsonl"
    header = json.loads(partial.read_text().splitlines()[0])["header"]
    # Penalty off is recorded as files were before the option existed: those files still resume.
    assert list(header["generation"]) == ["max_new_tokens", "temperature", "top_k", "top_p", "seed"] + [
        "batch_size",
        "refill",
    ]
    penalized = SamplingSettings(max_new_tokens=6, repetition_penalty=1.3)
    with pytest.raises(SettingsMismatch, match=r"repetition penalty none \(now 1.3\)"):
        evaluate_run(run, EvalSettings(**{**only, "sampling": penalized}))
    summary = evaluate_run(run, EvalSettings(**{**only, "sampling": penalized, "restart": True}))
    assert summary["generation"]["repetition_penalty"] == 1.3
    model, _ = load_model(str(run.final))
    style = get_prompt_style("alpaca")
    prompts = [encode(style.format(r.instruction, r.input)) for r in RECORDS]
    rows = [json.loads(line) for line in run.predictions.read_text().splitlines()]
    assert [row["finetuned"]["response"] for row in rows] == [decode(o) for o in generate(model, prompts, penalized)]
    # evaluate.py --repetition-penalty fills the setting.
    argv = ["--run", str(run.root), "--models", "finetuned", "--max-new-tokens", "6", "--batch-size", "2"]
    assert evaluate_cli.main([*argv, "--no-progress", "--repetition-penalty", "1.5", "--replace"]) == 0
    assert json.loads(run.summary.read_text())["generation"]["repetition_penalty"] == 1.5

"""The evaluation's progress files: a line of the wrong shape is a one-line error naming its line."""

import pytest

import evaluate as evaluate_cli
from gpt2_scratch.eval.evaluation import EvalSettings, evaluate_run
from tests.fixtures.evaluation import FAST, interrupt_after_first_batch

# Tiny models run fastest on one thread, and do not crawl when other processes share the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"batch": 0}', '"indices" must be a list of integers'),
        ("[1, 2]", "expected an object, got list"),
        (
            '{"batch": 0, "indices": [0, 5], "outputs": [[1]], "seconds": 1}',
            '"outputs" must be one list of token ids per index',
        ),
        ('{"batch": "0", "indices": [], "outputs": [], "seconds": 1}', '"batch" must be an integer'),
    ],
)
def test_a_progress_line_of_the_wrong_shape_is_one_line_error(run, monkeypatch, capsys, line, problem):
    interrupt_after_first_batch(run, EvalSettings(**FAST), monkeypatch)
    partial = run.eval_dir / "partial_base.jsonl"
    with open(partial, "a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=f"{partial}: line 3 is not a progress entry \\({problem}\\)"):
        evaluate_run(run, EvalSettings(**FAST))
    assert (
        evaluate_cli.main(
            ["--run", str(run.root), "--max-new-tokens", "6", "--batch-size", "2", "--no-progress", "--device", "cpu"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: {partial}: line 3 is not a progress entry") and err.count("\n") == 1


def test_a_finished_evaluation_leaves_no_progress_file(run):
    evaluate_run(run, EvalSettings(**FAST))
    assert sorted(p.name for p in run.eval_dir.iterdir()) == ["predictions.jsonl", "summary.json"]


def test_a_bad_line_after_an_earlier_versions_done_mark_is_named_by_its_own_line(run, monkeypatch):
    interrupt_after_first_batch(run, EvalSettings(**FAST), monkeypatch)
    partial = run.eval_dir / "partial_base.jsonl"
    with open(partial, "a") as f:  # earlier versions kept a finished file, with this mark at its end
        f.write('{"done": true}\n{"batch": 0}\n')
    with pytest.raises(ValueError, match=f"{partial}: line 4 is not a progress entry"):
        evaluate_run(run, EvalSettings(**FAST))

"""Issue 19, items 1-5: interrupted and unfinished runs.

One place (``runs.unfinished_problem`` / ``require_finished``) says that a run is not
finished and how to finish it; Ctrl-C in training writes ``interrupted`` and the step of
the last saved state into run.json; Ctrl-C in evaluate.py is one line; run.json stores
the dataset so that ``--resume`` works from another folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import evaluate as evaluate_cli
import publish as publish_cli
from gpt2_scratch.data.records import Record, write_records
from gpt2_scratch.demo import DemoApp
from gpt2_scratch.demo.results.compare import RunResults, compare, option_differences
from gpt2_scratch.eval import evaluation
from gpt2_scratch.eval.evaluation import EvalSettings, evaluate_run
from gpt2_scratch.eval.summary import EvalResults
from gpt2_scratch.generate.progress import interrupted_message
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunInfo, RunNotFinished, RunPaths
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.loop import TrainingInterrupted, train
from gpt2_scratch.train.step import StepRunner
from tests.fixtures.runs import write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(dataset: str, out_dir: str, name: str) -> TrainConfig:
    """6 steps (2 epochs x 3 batches of 4 over 13 training records), a resume state every 2 steps."""
    return TrainConfig(
        prompt_style="phi3",
        base="random:tiny",
        dataset=dataset,
        out_dir=out_dir,
        name=name,
        batch_size=4,
        epochs=2,
        eval_every=2,
        eval_batches=1,
        save_every=2,
        sample_tokens=2,
        seed=7,
    )


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C during the optimizer step ``step`` (1-based): ``step - 1`` steps are done."""
    original, calls = StepRunner.train_step, []

    def train_step(self, batch, lr):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return original(self, batch, lr)

    monkeypatch.setattr(StepRunner, "train_step", train_step)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, write_dataset):
    """A run stopped by Ctrl-C after step 3 of 6 (its last saved state is step 2), and the interrupt's message."""
    tmp = tmp_path_factory.mktemp("interrupted")
    dataset = write_dataset(tmp / "fixture.json")
    with pytest.MonkeyPatch.context() as m:
        interrupt_at_step(m, 4)
        with pytest.raises(TrainingInterrupted) as e:
            train(tiny_config(str(dataset), str(tmp / "runs"), "sig3"))
    return RunPaths(tmp / "runs" / "sig3"), str(e.value)


def expected_problem(run: RunPaths) -> str:
    return (
        f"{run.root} is not finished (run.json status is 'interrupted', last saved state: step 2 of 6); "
        f"finish it first: python finetune.py --resume {run.root}"
    )


def test_ctrl_c_in_training_writes_interrupted_and_the_saved_step(interrupted):
    """Item 4."""
    run, message = interrupted
    assert message == (
        f"interrupted at step 3 of 6; the last saved state is from step 2 (1 step will be redone): "
        f"continue with --resume {run.root}"
    )
    info = json.loads(run.run_json.read_text())
    assert (info["status"], info["saved_step"], info["total_steps"]) == ("interrupted", 2, 6)


def test_evaluate_publish_and_export_say_the_same_line(interrupted, capsys, tmp_path):
    """Item 1: evaluate.py no longer talks about a final/ folder that does not exist."""
    run, _ = interrupted
    assert evaluate_cli.main(["--run", str(run.root), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {expected_problem(run)}\n"
    assert publish_cli.main(["--run", str(run.root), "--repo", "me/x", "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: {expected_problem(run)}\n"
    with pytest.raises(RunNotFinished) as e:
        export_run(run.root, tmp_path / "export")
    assert str(e.value) == expected_problem(run)


def test_the_app_says_resume_not_a_new_run(interrupted, tmp_path):
    """Item 2: the finetuned tabs and the results tab advise --resume <run>, not a new run nor evaluate.py."""
    run, _ = interrupted
    command = f"python finetune.py --resume {run.root}"
    app = DemoApp.from_run(run)
    assert app.finetuned.source == str(run.best)  # best/ of step 2 is served meanwhile, and the note says why
    assert app.checkpoint_note == (
        f"Serving `best/` (the lowest validation loss so far): {run.root} is not finished (run.json status is "
        f"'interrupted', last saved state: step 2 of 6); finish it first: `{command}`."
    )
    results = EvalResults.load(run, "")
    assert (
        results.problem == f"No evaluation results: {expected_problem(run)}." and "evaluate.py" not in results.problem
    )

    copy = RunPaths(tmp_path / "sig3")  # the same run without best/: nothing to serve
    shutil.copytree(run.root, copy.root)
    shutil.rmtree(copy.best)
    app = DemoApp.from_run(copy)
    assert app.finetuned.source is None
    assert app.finetuned_problem.endswith(f"finish it first: `python finetune.py --resume {copy.root}`.")
    assert "Create one with `python finetune.py`" not in app.finetuned_problem


def test_resume_from_another_folder_and_the_dataset_path(tmp_path, write_dataset, monkeypatch):
    """Items 4 and 5: run.json stores the dataset's absolute path; a resume from elsewhere finishes the run."""
    (tmp_path / "project").mkdir()
    write_dataset(tmp_path / "project" / "data.json")
    monkeypatch.chdir(tmp_path / "project")
    with monkeypatch.context() as m:
        interrupt_at_step(m, 4)
        with pytest.raises(TrainingInterrupted):
            train(tiny_config("data.json", "runs", "rel"))
    info = json.loads((tmp_path / "project" / "runs" / "rel" / "run.json").read_text())
    absolute = str(tmp_path / "project" / "data.json")
    assert info["dataset"]["source"] == absolute and info["training"]["dataset"] == absolute
    monkeypatch.chdir(tmp_path)  # python project/finetune.py --resume project/runs/rel, from the parent folder
    paths = train(TrainConfig(resume="project/runs/rel"))
    info = json.loads(paths.run_json.read_text())
    assert (info["status"], info["saved_step"], info["total_steps"]) == ("finished", None, 6)


def test_ctrl_c_in_evaluate_is_one_line_saying_what_was_kept(tmp_path, monkeypatch, capsys):
    """Item 3: Ctrl-C while the finetuned model loads, after the base model's answers were saved."""
    run = write_tiny_run(tmp_path / "run", with_eval=False, with_metrics=False)
    write_records(run.test_records, [Record(i, f"Say {i}.", "", f"{i}") for i in range(5)])
    original = evaluation.load_model

    def load_model(source, **kw):
        if source == str(run.final):
            raise KeyboardInterrupt
        return original(source, **kw)

    monkeypatch.setattr(evaluation, "load_model", load_model)
    argv = ["--run", str(run.root), "--max-new-tokens", "3", "--batch-size", "2", "--no-progress"]
    assert evaluate_cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == (
        f"\ninterrupted; kept 5 answers of the base model in {run.eval_dir}/: "
        "rerun the same command (same settings) to continue where it stopped\n"
    )
    monkeypatch.undo()  # rerun: the base model's answers are reused, the finetuned model's generated
    summary = evaluate_run(run, EvalSettings(sampling=SamplingSettings(max_new_tokens=3), batch_size=2, progress=False))
    assert set(summary["models"]) == {"base", "finetuned"}


def test_ctrl_c_before_anything_was_saved(tmp_path):
    assert interrupted_message(None) == "interrupted before any answer was saved; rerun the same command to start again"
    assert interrupted_message(Path(tmp_path)) == interrupted_message(None)


def test_the_app_shows_a_readable_dataset_source():
    """Item 5: run.json's absolute dataset path is shown by its file name in the app's options table."""
    runs = [
        RunResults(label, RunInfo(name=label, base_model="gpt2", prompt_style="alpaca", dataset={"source": source}))
        for label, source in (("a", "/home/me/data/instruction-data.json"), ("b", "https://example.org/d/other.json"))
    ]
    frame = option_differences(compare(runs)).frame.set_index("option")
    assert frame.loc["dataset.source"].tolist() == ["instruction-data.json", "https://example.org/d/other.json"]

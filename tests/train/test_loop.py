"""Tests of gpt2_scratch.train.loop: overfitting, exact resume, gradient accumulation, run folders, Ctrl-C.

Every run uses ``random:tiny`` (2 layers, 64 dims) on the 16-record fixture
(tests/train/conftest.py), so nothing touches the network. One uninterrupted
reference run (a package fixture) serves the resume, accumulation and DDP tests.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from gpt2_scratch.checkpoint import load_checkpoint, read_checkpoint_info, read_safetensors
from gpt2_scratch.files import MARKER, read_jsonl
from gpt2_scratch.loss import IGNORE_INDEX
from gpt2_scratch.train import loop as training
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.distributed import DistContext
from gpt2_scratch.train.loop import Trainer, TrainingInterrupted, train
from gpt2_scratch.train.step import StepRunner
from tests.fixtures.training import events, losses, small_config


@pytest.mark.slow
def test_overfits_sixteen_examples(tmp_path, fixture_json):
    paths = train(
        small_config(
            tmp_path, fixture_json, name="overfit", batch_size=2, epochs=3, lr=1e-2, eval_every=100, save_every=0
        )
    )
    evals = events(paths.metrics, "eval")
    assert [e["step"] for e in evals] == [0, 18]  # 6 steps per epoch (13 records, batch 2)
    assert evals[0]["train_loss"] > 10.5  # random init: about ln(50257) = 10.8
    # Measured after 18 steps: train 2.68, validation 3.89. A model that does not learn stays near 10.8.
    assert evals[-1]["train_loss"] < 3.2
    assert evals[-1]["train_loss"] < evals[-1]["val_loss"] - 0.5  # it learns its training examples best


def test_reference_run_folder(reference_run, fixture_json):
    paths = reference_run
    run = json.loads(paths.run_json.read_text())
    assert run["status"] == "finished" and run["base_model"] == "random:tiny" and run["prompt_style"] == "phi3"
    assert run["dataset"]["num_records"] == 16
    assert run["dataset"]["split"] == {"train": 13, "test": 1, "val": 2, "shuffle": False, "seed": 7}
    assert run["training"]["batch_size"] == 4 and run["training"]["name"] == "ref"
    rows = read_jsonl(paths.metrics)
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["event"] == "eval"] == [0, 2, 4, 6]
    assert [r["step"] for r in rows if r["event"] == "sample"] == [3, 6]  # one per epoch
    (baseline,) = [r for r in rows if r["event"] == "baseline"]  # the fixture has one test record
    assert baseline["id"] == 13 and baseline["instruction"] == "What is 16 plus 33?"
    # tokens_seen counts real tokens only: it grows by each step's non-padding input tokens.
    tokens = [r["tokens_seen"] for r in rows if r["event"] == "train"]
    assert all(b > a for a, b in zip(tokens, tokens[1:]))
    model, info = load_checkpoint(paths.final)
    assert info.prompt_style == "phi3" and info.metadata["step"] == 6
    assert info.metadata["training"]["lr"] == 3e-3 and info.metadata["dataset"]["split"]["train"] == 13
    best = load_checkpoint(paths.best)[1]
    evals = events(paths.metrics, "eval")
    best_eval = min(evals, key=lambda e: e["val_loss"])
    assert best.metadata["step"] == best_eval["step"] and best.metadata["val_loss"] == best_eval["val_loss"]
    assert not paths.train_state.exists()  # removed once the run is finished
    assert paths.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_gives_identical_weights(tmp_path, reference_run, fixture_json):
    cfg = small_config(tmp_path, fixture_json, name="interrupted")
    paths = train(cfg, stop_after=5)  # "killed" after step 5; the last state is from step 4
    assert not paths.final.exists()
    state = json.loads((paths.train_state / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (4, 1, 1)
    assert max(r["step"] for r in read_jsonl(paths.metrics)) == 5

    train(TrainConfig(resume=str(paths.root)))
    ref_model, _ = load_checkpoint(reference_run.final)
    model, info = load_checkpoint(paths.final)
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert info.metadata["step"] == 6
    # Same losses, and no step logged twice although step 5 ran twice.
    assert losses(paths.metrics) == losses(reference_run.metrics)
    assert [r["step"] for r in events(paths.metrics, "resume")] == [4]
    for a, b in zip(saved_tensors(reference_run.best), saved_tensors(paths.best)):
        assert torch.equal(a, b)
    assert json.loads(paths.run_json.read_text())["status"] == "finished"


def saved_tensors(folder: Path) -> list[torch.Tensor]:
    return list(read_safetensors(folder / "model.safetensors").values())


def test_grad_accum_gives_the_same_steps(tmp_path, reference_run, fixture_json):
    paths = train(small_config(tmp_path, fixture_json, name="accum", grad_accum=2, epochs=1, save_every=0))
    ref = losses(reference_run.metrics)
    got = losses(paths.metrics)
    assert [s for s, _ in got["train"]] == [1, 2, 3]
    torch.testing.assert_close(
        torch.tensor([loss for _, loss in got["train"]]),
        torch.tensor([loss for _, loss in ref["train"][:3]]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_refuses_to_overwrite_a_run(tmp_path, reference_run):
    cfg = TrainConfig(base="random:tiny", out_dir=str(reference_run.root.parent), name="ref")
    with pytest.raises(ValueError, match="already exists"):
        train(cfg)
    with pytest.raises(ValueError, match="already finished"):
        train(TrainConfig(resume=str(reference_run.root)))


def dot_entries(paths) -> list[str]:
    return sorted(
        p.name
        for folder in (paths.root, paths.root / "data")
        for p in folder.iterdir()
        if p.name.startswith(".") and p != paths.lock_file
    )


def test_leftovers_of_killed_saves_are_removed(tmp_path, fixture_json, monkeypatch, capsys):
    paths = train(small_config(tmp_path, fixture_json, name="killed", epochs=1), stop_after=2)  # state of step 2
    assert (paths.best / "config.json").is_file() and (paths.train_state / "state.json").is_file()
    # What kill -9 during saves leaves: temporary folders and files, a swapped-out old folder.
    for name in (".train_state.k1.tmp", ".best.k2.tmp", ".final.k3.tmp", ".best.old"):
        (paths.root / name).mkdir()
        (paths.root / name / "model.safetensors").write_bytes(b"0" * 1000)
    (paths.root / "data" / ".val.jsonl.k4.tmp").write_text("{}")
    # And one left while the resumed run writes its files: the end of the run removes it.
    plot = training.plot_losses

    def plot_and_leave_a_temporary(*args):
        plot(*args)
        (paths.root / ".loss.png.k5.tmp").write_bytes(b"")

    monkeypatch.setattr(training, "plot_losses", plot_and_leave_a_temporary)
    capsys.readouterr()
    train(TrainConfig(resume=str(paths.root)))
    out = capsys.readouterr().out
    assert (
        "removed the leftovers of an interrupted save" in out
        and ".train_state.k1.tmp" in out
        and ".val.jsonl.k4.tmp" in out
    )
    assert dot_entries(paths) == []
    assert json.loads(paths.run_json.read_text())["status"] == "finished"
    load_checkpoint(paths.best)


def test_best_is_a_hard_link_of_final_when_the_best_step_is_the_last(tmp_path, fixture_json, reference_run):
    # Evaluated at steps 0 and 3 only: the loss falls from random init, so step 3 is the best.
    paths = train(small_config(tmp_path, fixture_json, name="linked", epochs=1, eval_every=100, save_every=0))
    best_model, best = load_checkpoint(paths.best)
    final_model, final = load_checkpoint(paths.final)
    assert best.metadata["step"] == final.metadata["step"] == 3 and best.metadata == final.metadata
    assert read_checkpoint_info(paths.best).sha256 == read_checkpoint_info(paths.final).sha256
    for name in ("model.safetensors", "config.json"):
        assert os.stat(paths.best / name).st_ino == os.stat(paths.final / name).st_ino, name  # stored once
    # A best step before the last one is a checkpoint of its own.
    ref_best, ref_final = read_checkpoint_info(reference_run.best), read_checkpoint_info(reference_run.final)
    linked = (
        os.stat(reference_run.best / "model.safetensors").st_ino
        == os.stat(reference_run.final / "model.safetensors").st_ino
    )
    assert linked == (ref_best.metadata["step"] == ref_final.metadata["step"])


def test_checkpoint_files_follow_the_umask(reference_run):
    umask = os.umask(0)
    os.umask(umask)
    files = [p for folder in (reference_run.final, reference_run.best) for p in folder.iterdir()]
    assert {p.name for p in files} == {"model.safetensors", "config.json", MARKER}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}
    assert stat.S_IMODE(reference_run.final.stat().st_mode) == 0o777 & ~umask


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C during the optimizer step ``step`` (1-based)."""
    original, calls = StepRunner.train_step, []

    def train_step(self, batch, lr):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return original(self, batch, lr)

    monkeypatch.setattr(StepRunner, "train_step", train_step)


def test_ctrl_c_before_the_first_state_names_the_folder_and_resume_starts_over(
    tmp_path, fixture_json, reference_run, monkeypatch
):
    interrupt_at_step(monkeypatch, 2)  # the first state would be saved after step 2
    with pytest.raises(TrainingInterrupted) as e:
        train(small_config(tmp_path, fixture_json, name="stopped"))
    root = tmp_path / "runs" / "stopped"
    assert e.value.run_folder == root
    assert (
        str(e.value) == f"interrupted at step 1 of 6, before the first saved state; --resume {root} starts the run over"
    )
    assert (
        json.loads((root / "run.json").read_text())["status"] == "interrupted" and not (root / "train_state").exists()
    )

    monkeypatch.undo()
    paths = train(TrainConfig(resume=str(root)))
    # Started over: the same run as the uninterrupted reference, and no line of the first attempt left.
    for a, b in zip(saved_tensors(reference_run.final), saved_tensors(paths.final)):
        assert torch.equal(a, b)
    assert losses(paths.metrics) == losses(reference_run.metrics)
    assert len(events(paths.metrics, "baseline")) == 1 and events(paths.metrics, "resume") == []
    assert json.loads(paths.run_json.read_text())["status"] == "finished"


def test_ctrl_c_after_a_saved_state_says_continue(tmp_path, fixture_json, monkeypatch):
    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted) as e:
        train(small_config(tmp_path, fixture_json, name="saved"))
    root = tmp_path / "runs" / "saved"
    assert str(e.value) == f"interrupted at step 2 of 6, its state saved at that step: continue with --resume {root}"


def test_max_steps_stops_early_and_finishes_the_run(tmp_path, fixture_json):
    paths = train(small_config(tmp_path, fixture_json, name="capped", max_steps=4))  # 2 epochs would be 6 steps
    assert [r["step"] for r in events(paths.metrics, "train")] == [1, 2, 3, 4]
    assert [r["step"] for r in events(paths.metrics, "eval")] == [0, 2, 4]
    assert [r["step"] for r in events(paths.metrics, "done")] == [4]
    assert load_checkpoint(paths.final)[1].metadata["step"] == 4
    run = json.loads(paths.run_json.read_text())
    assert run["status"] == "finished" and run["training"]["max_steps"] == 4
    assert not paths.train_state.exists()
    with pytest.raises(ValueError, match="--max-steps must be a positive integer"):
        TrainConfig(max_steps=0)


def test_the_prompt_is_masked_by_default(tmp_path, fixture_json):
    assert TrainConfig().mask_prompt is True
    config = TrainConfig(base="random:tiny", dataset=str(fixture_json), out_dir=str(tmp_path / "runs"), batch_size=4)
    trainer = Trainer(config, DistContext(), torch.device("cpu"))
    example = trainer.train_examples[0]
    _, targets = trainer.steps.collate([example])
    # Target j predicts token j + 1: the prompt's tokens 1..prompt_len-1 are targets 0..prompt_len-2.
    cut = example.prompt_len - 1
    assert cut > 10 and (targets[0, :cut] == IGNORE_INDEX).all()
    assert (targets[0, cut:] != IGNORE_INDEX).all()  # the response and its EOS are learned
    assert not (tmp_path / "runs").exists()  # loading data and model creates no run folder


def test_a_resume_state_is_saved_by_time_as_well_as_by_steps(tmp_path, fixture_json, monkeypatch):
    clock = iter(range(0, 10_000, 50))  # every call to the clock: 50 s later
    monkeypatch.setattr(training, "_clock", lambda: next(clock))
    # No step save before step 100; 50 s a step against a 1.5 minute budget: a save every second step.
    cfg = small_config(tmp_path, fixture_json, name="timed", epochs=2, save_every=100, save_every_minutes=1.5)
    paths = train(cfg, stop_after=5)
    assert json.loads(paths.run_json.read_text())["saved_step"] == 4
    assert json.loads((paths.train_state / "state.json").read_text())["step"] == 4
    never = train(
        small_config(tmp_path, fixture_json, name="never", save_every=100, save_every_minutes=0), stop_after=5
    )
    assert not never.train_state.exists()


def test_save_every_minutes_must_not_be_negative(tmp_path, fixture_json):
    with pytest.raises(ValueError, match=r"^--save-every-minutes must be a non-negative number, got -1$"):
        small_config(tmp_path, fixture_json, save_every_minutes=-1)


def test_a_local_base_is_recorded_as_an_absolute_path(tmp_path, fixture_json, monkeypatch):
    from gpt2_scratch.checkpoint import save_checkpoint
    from gpt2_scratch.inference import load_model

    save_checkpoint(tmp_path / "models" / "tiny", load_model("random:tiny")[0], prompt_style="phi3")
    monkeypatch.chdir(tmp_path)
    paths = train(small_config(tmp_path, fixture_json, name="local", base="models/tiny", max_steps=1))
    expected = str((tmp_path / "models" / "tiny").resolve())
    assert json.loads(paths.run_json.read_text())["base_model"] == expected
    assert json.loads(paths.run_json.read_text())["training"]["base"] == expected
    assert TrainConfig(base="gpt2").base == "gpt2"  # a Hub id stays an id (made absolute only when it is a path)

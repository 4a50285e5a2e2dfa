"""Tests of DPO (gpt2_scratch.train.dpo and --method dpo): the loss, log-probs, the reference, learning, resume.

The runs use ``random:tiny`` on 400 preference records built here in the book's layout
(tests.fixtures.preferences: 340 train (2 skipped: chosen == rejected) / 40 test / 20 validation pairs), phi3
prompts (shorter), so nothing touches the network. One uninterrupted run (module fixture) serves most tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2_scratch.checkpoint import load_checkpoint, read_safetensors
from gpt2_scratch.data.batches import LengthGroupedBatchSampler
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.inference import load_model
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.loss import IGNORE_INDEX
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.datasets import load_train_data
from gpt2_scratch.train.distributed import DistContext
from gpt2_scratch.train.dpo import LiveReference, ReferenceLogps, collate_pairs, dpo_loss, pair_logps, sequence_logps
from gpt2_scratch.train.loop import Trainer, train
from tests.fixtures.preferences import instruction_entries, preference_entries, write_json

LOG2 = math.log(2)


def preference_file(tmp: Path) -> Path:
    """The 400 preference records, written once under ``tmp`` (the same bytes every time)."""
    path = tmp / "data" / "preferences.json"
    return path if path.is_file() else write_json(path, preference_entries(400))


def dpo_config(tmp: Path, **overrides) -> TrainConfig:
    # Measured (this config): validation reward accuracy 1.0, margin 1.06, loss 0.327 at step 8.
    base = dict(
        method="dpo",
        base="random:tiny",
        dataset=str(preference_file(tmp)),
        limit=400,
        prompt_style="phi3",
        out_dir=str(tmp / "runs"),
        lr=1e-3,
        max_steps=8,
        eval_every=4,
        eval_batches=3,  # 24 >= the 20 validation pairs: all of them
        save_every=4,
        sample_tokens=2,
        precision="fp32",  # the numbers compared are fp32's: auto may pick bf16 on some CPUs
        seed=3,
    )
    return TrainConfig(**{**base, **overrides})


def events(paths, kind: str) -> list[dict]:
    return [r for r in read_jsonl(paths.metrics) if r["event"] == kind]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    torch.set_num_threads(2)
    return train(dpo_config(tmp_path_factory.mktemp("dpo"), name="ref"))


# --------------------------------------------------------------------------- the math


def test_loss_equals_the_formula():
    beta = 0.1
    pc, pr = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -15.0, -5.5])
    rc, rr = torch.tensor([-11.0, -18.0, -6.0]), torch.tensor([-11.5, -16.0, -4.0])
    stats = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(3):
        z = beta * ((pc[i] - pr[i]) - (rc[i] - rr[i])).item()
        assert stats.losses[i].item() == pytest.approx(-math.log(1 / (1 + math.exp(-z))), rel=1e-6)
        assert stats.chosen_rewards[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())  # beta included
        assert stats.rejected_rewards[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item())
    # margins 0.15, -0.3, 0.25: two of three positive
    torch.testing.assert_close(stats.margins, torch.tensor([0.15, -0.3, 0.25]))
    sums = stats.sums()
    assert sums[1].item() == 2 and sums[2].item() == pytest.approx(0.1)


def test_policy_equal_to_reference_gives_log_2_and_zero_margins():
    logps = torch.tensor([-3.0, -40.0, -7.5])
    stats = dpo_loss(logps, logps - 1, logps, logps - 1, 0.1)
    assert torch.equal(stats.margins, torch.zeros(3)) and torch.equal(stats.chosen_rewards, torch.zeros(3))
    torch.testing.assert_close(stats.losses, torch.full((3,), LOG2))


def test_sequence_logps_sum_and_mean_over_the_scored_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 1, 2, 0]])
    logp = F.log_softmax(logits, -1)
    want = torch.stack([logp[0, 1, 3] + logp[0, 2, 4], logp[1, 2, 1] + logp[1, 3, 2] + logp[1, 4, 0]])
    torch.testing.assert_close(sequence_logps(logits, targets), want)
    torch.testing.assert_close(sequence_logps(logits, targets, average=True), want / torch.tensor([2.0, 3.0]))
    # Logits at the scored positions only (GPT.forward(logits_at=...)) give the same numbers.
    torch.testing.assert_close(sequence_logps(logits[targets != IGNORE_INDEX], targets), want)


def test_the_head_on_response_tokens_only_matches_the_full_forward(tmp_path):
    model, _ = load_model("random:tiny")
    data = load_train_data(dpo_config(tmp_path), DistContext(), None)
    x, y = collate_pairs(data.examples[:4], 256)
    with torch.no_grad():
        full = sequence_logps(model(x), y)
        fast = pair_logps(model, x, y, average=False).flatten()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- the run


def test_step_0_is_log_2_with_zero_margins(dpo_run):
    first = events(dpo_run, "eval")[0]
    assert first["step"] == 0
    for split in ("train", "val"):  # the evaluation recomputes the precomputed batches bit for bit
        assert first[f"{split}_loss"] == pytest.approx(LOG2, abs=1e-7)
        assert first[f"{split}_reward_margin"] == 0.0 and first[f"{split}_reward_accuracy"] == 0.0
        assert first[f"{split}_chosen_reward"] == 0.0 and first[f"{split}_rejected_reward"] == 0.0
    step1 = events(dpo_run, "train")[0]  # policy = reference, in other (length-grouped) batches
    assert step1["step"] == 1 and step1["loss"] == pytest.approx(LOG2, abs=1e-5)
    assert abs(step1["reward_margin"]) < 1e-5


def test_a_few_steps_learn_the_preference(dpo_run):
    last = events(dpo_run, "eval")[-1]
    assert last["step"] == 8
    assert last["val_reward_accuracy"] >= 0.9  # measured 1.0 (20 of 20 pairs)
    assert last["val_reward_margin"] > 0.5  # measured 1.06
    assert last["val_loss"] < 0.5  # measured 0.327
    assert last["val_chosen_reward"] > last["val_rejected_reward"]
    run = json.loads(dpo_run.run_json.read_text())
    assert run["status"] == "finished" and run["training"]["method"] == "dpo" and run["training"]["beta"] == 0.1
    assert run["dataset"]["split"]["skipped"] == {"train": {"identical": 2}, "val": {}}  # records 122 and 226
    assert run["dataset"]["split"]["train"] == 338 and run["dataset"]["split"]["val"] == 20
    train_rows = events(dpo_run, "train")
    assert set(train_rows[0]) >= {"loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"}
    assert dpo_run.loss_plot.read_bytes()[:4] == b"\x89PNG"


def test_precomputed_reference_equals_the_live_reference(dpo_run):
    table = read_safetensors(dpo_run.reference_logps)
    assert table["logps"].shape == (358, 2)  # 338 training pairs + the 20 validation pairs
    reference = ReferenceLogps(table["ids"].tolist(), table["logps"], "")
    live = LiveReference(load_gpt("random:tiny")[0], average=False)  # the plain model, as training computes it
    data = load_train_data(dpo_config(dpo_run.root.parent), DistContext(), None)
    sampler = LengthGroupedBatchSampler(data.lengths, 8, seed=3, drop_last=True)  # the run's training batches
    for indices in list(sampler)[:3]:  # other compositions than the precompute's
        pairs = [data.examples[i] for i in indices]
        x, y = collate_pairs(pairs, 256)
        torch.testing.assert_close(reference.lookup(pairs, x, y), live.lookup(pairs, x, y), rtol=1e-5, atol=1e-4)
    pairs = data.eval_batches["val"][0]  # the precompute's own batches: bit for bit
    x, y = collate_pairs(pairs, 256)
    assert torch.equal(reference.lookup(pairs, x, y), live.lookup(pairs, x, y))


def test_kill_and_resume_give_identical_weights(tmp_path, dpo_run, capsys):
    paths = train(dpo_config(tmp_path, name="interrupted"), stop_after=6)  # "killed" after step 6; state of 4
    assert not paths.final.exists() and paths.reference_logps.is_file()
    saved = paths.reference_logps.read_bytes()
    capsys.readouterr()
    train(TrainConfig(resume=str(paths.root)))
    assert "reference log-probabilities" not in str(capsys.readouterr())  # read back, not computed again
    assert paths.reference_logps.read_bytes() == saved
    ref_model, _ = load_checkpoint(dpo_run.final)
    model, info = load_checkpoint(paths.final)
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert info.metadata["step"] == 8
    strip = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_second")} for r in events(paths, "eval")]
    want = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_second")} for r in events(dpo_run, "eval")]
    assert strip == want
    assert [r["loss"] for r in events(paths, "train")] == [r["loss"] for r in events(dpo_run, "train")]


@pytest.mark.slow
def test_a_resume_without_the_saved_reference_computes_it_from_the_base_again(tmp_path):
    paths = train(dpo_config(tmp_path, name="lost", max_steps=4, save_every=2, eval_every=2), stop_after=3)
    saved = read_safetensors(paths.reference_logps)
    paths.reference_logps.unlink()
    train(TrainConfig(resume=str(paths.root)))  # the policy has trained 2 steps: the base model is loaded again
    again = read_safetensors(paths.reference_logps)
    assert torch.equal(saved["ids"], again["ids"]) and torch.equal(saved["logps"], again["logps"])


@pytest.mark.slow
def test_with_lora_the_reference_is_the_policy_with_its_adapters_off(tmp_path, monkeypatch):
    cfg = dpo_config(tmp_path, name="lora", max_steps=4, save_every=2, eval_every=2, lora_rank=4)
    paths = train(cfg, stop_after=3)
    saved = read_safetensors(paths.reference_logps)
    paths.reference_logps.unlink()

    def no_second_model(*args, **kwargs):
        raise AssertionError("a LoRA run must not load its base again for the reference")

    monkeypatch.setattr("gpt2_scratch.train.dpo.load_gpt", no_second_model)
    train(TrainConfig(resume=str(paths.root)))  # adapters trained 2 steps: the reference is them switched off
    again = read_safetensors(paths.reference_logps)
    assert torch.equal(saved["ids"], again["ids"]) and torch.equal(saved["logps"], again["logps"])


# --------------------------------------------------------------------------- options and the base model


def test_dpo_defaults_follow_the_books_run():
    cfg = TrainConfig(method="dpo")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.beta, cfg.dpo_logps) == (5e-6, 1, 8, 0.1, "sum")
    assert cfg.dataset.endswith("ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json")
    sft = TrainConfig()
    assert (sft.lr, sft.epochs, sft.method) == (5e-5, 2, "sft")
    assert sft.dataset.endswith("ch07/01_main-chapter-code/instruction-data.json")
    assert TrainConfig(method="dpo", lr=1e-4, epochs=3).lr == 1e-4  # each overridable


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "ppo"}, "--method must be one of sft, dpo, got 'ppo'"),
        ({"method": "dpo", "beta": 0}, "--beta must be a positive number, got 0"),
        ({"method": "dpo", "beta": float("nan")}, "--beta must be a positive number"),
        ({"method": "dpo", "dpo_logps": "max"}, "--dpo-logps must be one of sum, mean, got 'max'"),
        ({"method": "dpo", "mask_prompt": False}, "--no-mask-prompt is for --method sft"),
    ],
)
def test_bad_dpo_options(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**overrides)


@pytest.mark.slow
def test_an_sft_run_folder_is_the_base_and_its_prompt_style_must_match(tmp_path):
    sft = train(
        TrainConfig(
            base="random:tiny",
            dataset=str(write_json(tmp_path / "data" / "instructions.json", instruction_entries(100))),
            limit=100,
            prompt_style="phi3",
            out_dir=str(tmp_path / "runs"),
            name="sft",
            max_steps=1,
            eval_batches=1,
            save_every=0,
            sample_tokens=2,
        )
    )
    with pytest.raises(ValueError, match=f"--base {sft.root} was finetuned with --prompt-style phi3"):
        Trainer(dpo_config(tmp_path, base=str(sft.root), prompt_style="alpaca"), DistContext(), torch.device("cpu"))
    dpo = train(dpo_config(tmp_path, base=str(sft.root), name="dpo", limit=100, max_steps=1, eval_every=1))
    run = json.loads(dpo.run_json.read_text())
    assert run["base_model"] == str(sft.root)
    # Same records in the same order: the DPO run holds out the SFT run's test set.
    assert dpo.test_records.read_text() == sft.test_records.read_text()
    first = events(dpo, "eval")[0]
    assert first["val_loss"] == pytest.approx(LOG2, abs=1e-7)  # the reference is the SFT model's final weights
    model, info = load_checkpoint(dpo.final)
    assert info.metadata["training"]["method"] == "dpo" and info.metadata["base_model"] == str(sft.root)

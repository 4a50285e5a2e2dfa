"""Mixed precision (``--precision``): what auto and bf16 resolve to on a CPU, bf16 steps keep float32
master weights, optimizer state and loss, LoRA's own backward under CPU autocast, and an exact
kill-and-resume in bf16.

Runs use ``random:tiny`` on the 16-record fixture (tests/train/conftest.py), as the fp32 resume tests do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json

import pytest
import torch

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import load_checkpoint, read_adapter, read_safetensors
from gpt2_scratch.devices import native_bfloat16
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.loss import response_loss
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.train import distributed
from gpt2_scratch.train import step as train_step
from gpt2_scratch.train.config import TrainConfig, resume_config
from gpt2_scratch.train.distributed import DistContext, bf16_speedup, check_precision, resolve_precision
from gpt2_scratch.train.loop import Trainer, train
from tests.fixtures.training import events, losses, small_config

CPU = torch.device("cpu")


def test_bf16_on_a_cpu_without_native_bfloat16_runs_with_a_one_line_warning(monkeypatch):
    monkeypatch.setattr(distributed, "native_bfloat16", lambda device: False)
    precision, note = resolve_precision("bf16", CPU, 64)
    assert precision == "bf16"
    assert note.startswith("warning: --precision bf16:") and "emulated" in note and "\n" not in note


def test_auto_on_a_cpu_is_fp32_where_bfloat16_is_emulated(monkeypatch):
    monkeypatch.setattr(distributed, "native_bfloat16", lambda device: False)
    monkeypatch.setattr(distributed, "bf16_speedup", lambda width: pytest.fail("measured emulated bfloat16"))
    assert resolve_precision("auto", CPU, 64) == ("fp32", None)
    assert resolve_precision("fp32", CPU, 64) == ("fp32", None)


@pytest.mark.parametrize("speedup, chosen", [(1.6, "bf16"), (1.05, "fp32"), (0.7, "fp32")])
def test_auto_on_a_native_bfloat16_cpu_takes_bf16_only_where_it_measures_faster(monkeypatch, speedup, chosen):
    monkeypatch.setattr(distributed, "native_bfloat16", lambda device: True)
    widths = []
    monkeypatch.setattr(distributed, "bf16_speedup", lambda width: widths.append(width) or speedup)
    precision, note = resolve_precision("auto", CPU, 768)
    assert precision == chosen and widths == [768]  # measured on the model's width
    assert note == f"--precision auto: {chosen} (bfloat16 products measured {speedup:.2f}x as fast as fp32 here)"
    assert resolve_precision("bf16", CPU, 768) == ("bf16", None)  # native: no warning


def test_bf16_speedup_times_both_sides_on_this_cpu():
    speedup = bf16_speedup(32, rows=16, rounds=1)
    assert 0 < speedup < float("inf")


def test_bf16_on_a_device_without_it_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^--precision bf16 is for CUDA and CPU devices, not meta; use fp32$"):
        check_precision("bf16", torch.device("meta"))
    check_precision("auto", torch.device("meta"))  # auto falls back to fp32 there
    assert resolve_precision("auto", torch.device("meta"), 64) == ("fp32", None)


def test_a_resume_with_auto_keeps_the_precision_the_run_started_with(tmp_path):
    stored = TrainConfig(precision="bf16")
    RunPaths(tmp_path).write_info(
        RunInfo(name="r", base_model="gpt2", prompt_style="alpaca", training=stored.to_dict())
    )
    assert resume_config(TrainConfig(resume=str(tmp_path)))[0].precision == "bf16"
    assert resume_config(TrainConfig(resume=str(tmp_path), precision="fp32"))[0].precision == "fp32"


def test_a_bf16_step_keeps_float32_master_weights_optimizer_state_and_loss(tmp_path, fixture_json, capsys, monkeypatch):
    trainer = Trainer(small_config(tmp_path, fixture_json, precision="bf16"), DistContext(), CPU)
    out = capsys.readouterr().out
    assert ("bfloat16 is emulated here" in out) == (not native_bfloat16(CPU))  # the warning, where it applies
    assert trainer.config.precision == "bf16" and trainer.steps.amp_dtype == torch.bfloat16
    products, loss_dtypes = [], []
    trainer.model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: products.append(o.dtype))

    def recorded_loss(*args, **kwargs):
        loss = response_loss(*args, **kwargs)
        loss_dtypes.append(loss.dtype)
        return loss

    monkeypatch.setattr(train_step, "response_loss", recorded_loss)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batch = [trainer.train_examples[i] for i in range(4)]
    for _ in range(2):
        loss, _, _ = trainer.steps.step(batch, 1e-3)
    assert products == [torch.bfloat16] * 2  # the products ran in bfloat16 ...
    assert loss_dtypes == [torch.float32] * 2 and 5 < loss < 12  # ... the loss in float32 (about ln 50257 here)
    for name, p in trainer.model.named_parameters():  # ... the master weights stay float32 and were updated
        assert p.dtype == torch.float32 and p.grad is None, name
        assert not torch.equal(p, before[name]), name
    state = [t for s in trainer.optimizer.state.values() for t in s.values()]
    assert len(state) == 3 * len(before)  # exp_avg, exp_avg_sq and step of every parameter
    assert {t.dtype for t in state} == {torch.float32}
    assert {(trainer.optimizer.state[p]["step"]).item() for p in trainer.model.parameters()} == {2.0}


def test_lora_backward_under_cpu_autocast_gives_float32_gradients_close_to_fp32(monkeypatch):
    model, _ = load_gpt("random:tiny")  # the plain model, as training loads it
    lora.inject(model, lora.LoRAConfig(4, 8.0, 0.1), torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):  # B starts at zero: give the products something to carry back
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    model.train()
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(3))
    grads = {}
    for amp in (None, torch.bfloat16):
        torch.manual_seed(4)  # the same dropout masks on both sides
        model.zero_grad(set_to_none=True)
        autocast = functools.partial(torch.autocast, "cpu", dtype=amp) if amp else contextlib.nullcontext
        loss = response_loss(model, x, y, "mean", autocast)
        assert loss.dtype == torch.float32
        loss.backward()
        grads[amp] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads[None]) == 2 * 4 * 2  # A and B of 4 targets in 2 blocks
    for name, exact in grads[None].items():
        got = grads[torch.bfloat16][name]
        assert got.dtype == torch.float32, name
        error = ((got - exact).norm() / exact.norm()).item()
        assert 0 < error < 3e-2, (name, error)  # bfloat16's rounding (8 bits), not a wrong gradient


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_a_bf16_run_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, fixture_json, lora_rank):
    torch.set_num_threads(2)  # as the uninterrupted run
    extra = dict(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, lr=1e-2) if lora_rank else {}
    cfg = small_config(tmp_path, fixture_json, precision="bf16", **extra)
    reference = train(dataclasses.replace(cfg, name="uninterrupted"))
    paths = train(dataclasses.replace(cfg, name="interrupted"), stop_after=5)  # "killed" after step 5; state of 4
    assert not paths.final.exists()
    assert json.loads(paths.run_json.read_text())["training"]["precision"] == "bf16"
    train(TrainConfig(resume=str(paths.root)))  # auto: the run's own bf16
    if lora_rank:
        expected, got = read_adapter(reference.final)[1], read_adapter(paths.final)[1]
    else:
        expected = read_safetensors(reference.final / "model.safetensors")
        got = read_safetensors(paths.final / "model.safetensors")
    assert set(expected) == set(got) and expected
    for key in expected:
        assert got[key].dtype == torch.float32 and torch.equal(expected[key], got[key]), key
    assert losses(paths.metrics) == losses(reference.metrics)
    assert [r["step"] for r in events(paths.metrics, "resume")] == [4]
    if not lora_rank:  # bf16 really ran: fp32 steps from the same start end elsewhere
        fp32 = train(dataclasses.replace(cfg, name="fp32", precision="fp32", epochs=1, save_every=0))
        bf16_losses = [loss for _, loss in losses(reference.metrics)["train"][:3]]
        fp32_losses = [loss for _, loss in losses(fp32.metrics)["train"]]
        assert bf16_losses != fp32_losses
        torch.testing.assert_close(torch.tensor(bf16_losses), torch.tensor(fp32_losses), rtol=2e-2, atol=0)
        load_checkpoint(fp32.final)

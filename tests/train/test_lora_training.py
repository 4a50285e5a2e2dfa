"""LoRA finetuning (``--lora-rank``): only the adapters train and are saved, resume is exact, accumulation
and DDP compute the same steps, bad options are one-line errors with nothing written.

Every run: ``random:tiny`` or a tiny Hub-layout base, a 16-record dataset written here, 2 epochs
of 3 steps (batch 4), as the full-finetuning tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import finetune
from gpt2_scratch import lora
from gpt2_scratch.checkpoint import read_adapter, read_checkpoint_info, read_safetensors
from gpt2_scratch.files import MARKER, read_jsonl
from gpt2_scratch.inference import load_model
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.distributed import DistContext
from gpt2_scratch.train.loop import Trainer, train

REPO = Path(__file__).resolve().parents[2]
LORA = dict(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1)


def write_dataset(path: Path, n: int = 16) -> Path:
    records = [
        {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
        for a, b in zip(range(3, 3 + n), range(20, 20 + n))
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def lora_config(tmp: Path, dataset: Path, **overrides) -> TrainConfig:
    # batch 4 over 13 training records: 3 steps per epoch. A LoRA-sized learning rate.
    base = dict(
        prompt_style="phi3",
        mask_prompt=False,
        base="random:tiny",
        dataset=str(dataset),
        out_dir=str(tmp / "runs"),
        batch_size=4,
        lr=1e-2,
        epochs=2,
        eval_every=2,
        eval_batches=2,
        save_every=2,
        sample_tokens=2,
        precision="fp32",  # the numbers compared are fp32's: auto may pick bf16 on some CPUs
        seed=7,
        **LORA,
    )
    return TrainConfig(**{**base, **overrides})


def losses(metrics: Path) -> dict[str, list]:
    rows = read_jsonl(metrics)
    return {
        "train": [(r["step"], r["loss"]) for r in rows if r["event"] == "train"],
        "eval": [(r["step"], r["train_loss"], r["val_loss"]) for r in rows if r["event"] == "eval"],
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "fixture.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    """An uninterrupted 6-step LoRA run, through a Trainer so that its model can be inspected: (trainer, paths)."""
    tmp = tmp_path_factory.mktemp("lora-reference")
    torch.set_num_threads(2)
    trainer = Trainer(lora_config(tmp, dataset, name="ref"), DistContext(), torch.device("cpu"))
    return trainer, trainer.run_training()


def test_only_the_adapters_train_and_the_base_stays_bit_identical(reference):
    trainer, _ = reference
    base, _ = load_model("random:tiny")
    state, base_state = trainer.model.state_dict(), base.state_dict()
    adapter_keys = {k for k in state if k.endswith(("lora_A", "lora_B"))}
    assert set(state) - adapter_keys == set(base_state)
    for key, tensor in base_state.items():
        assert torch.equal(state[key], tensor), key
    assert all(torch.count_nonzero(state[k]) > 0 for k in adapter_keys if k.endswith("lora_B"))  # B has moved
    # Training runs the plain model: no inference layer (nor its packed copy of the frozen base) under the adapters.
    assert all(type(layer.base_layer) is nn.Linear for _, layer in lora.lora_layers(trainer.model))
    # AdamW holds the adapters and nothing else: no state for the frozen base.
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    # rank 4 x 2 blocks x (c_attn 64+192, attn.c_proj 64+64, c_fc 64+256, mlp.c_proj 256+64)
    assert sum(p.numel() for p in params) == lora.trainable_parameters(trainer.model) == 4 * 2 * 1024
    assert {id(p) for p in params} == {id(trainer.model.get_parameter(k)) for k in adapter_keys}


def test_final_and_best_hold_the_adapter_only(reference):
    trainer, paths = reference
    for folder in (paths.final, paths.best):
        assert sorted(p.name for p in folder.iterdir()) == [MARKER, "adapter.safetensors", "config.json"]
        info, tensors = read_adapter(folder)
        assert all(k.endswith(("lora_A", "lora_B")) for k in tensors) and len(tensors) == 2 * 4 * 2
        assert info.adapter.lora == lora.LoRAConfig(rank=4, alpha=8.0, dropout=0.1)
        assert info.adapter.base_model == "random:tiny" and info.prompt_style == "phi3"
        assert info.adapter.base_sha256 == lora.base_sha256(load_model("random:tiny")[0])
    assert read_checkpoint_info(paths.final).metadata["step"] == 6
    final = read_adapter(paths.final)[1]
    for key, tensor in lora.adapter_state_dict(trainer.model).items():
        assert torch.equal(final[key], tensor)
    run = json.loads(paths.run_json.read_text())
    assert run["training"]["lora_rank"] == 4 and run["training"]["lora_targets"] == list(lora.TARGETS)
    assert run["status"] == "finished" and not paths.train_state.exists()


def test_the_merged_checkpoint_computes_the_trained_model(reference):
    trainer, paths = reference
    x = torch.tensor([[50256, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290]])
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(x)
        merged, _ = load_model(str(paths.final))
        assert not lora.has_adapters(merged)
        torch.testing.assert_close(merged(x), trained, atol=1e-5, rtol=0)
        base = load_model("random:tiny")[0](x)
    assert (trained - base).abs().max() > 1e-3  # training changed the model


def test_resume_gives_bit_identical_adapters(tmp_path, reference, dataset):
    _, ref = reference
    paths = train(lora_config(tmp_path, dataset, name="interrupted"), stop_after=5)  # "killed" after step 5
    assert not paths.final.exists()
    saved = read_safetensors(paths.train_state / "model.safetensors")
    assert saved and all(k.endswith(("lora_A", "lora_B")) for k in saved)  # the resume state: adapters only
    state = json.loads((paths.train_state / "state.json").read_text())
    assert (state["step"], state["base_sha256"]) == (4, lora.base_sha256(load_model("random:tiny")[0]))

    train(TrainConfig(resume=str(paths.root)))
    expected, got = read_adapter(ref.final)[1], read_adapter(paths.final)[1]
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for key, tensor in read_adapter(ref.best)[1].items():
        assert torch.equal(read_adapter(paths.best)[1][key], tensor)
    assert losses(paths.metrics) == losses(ref.metrics)


def test_grad_accum_gives_the_same_steps(tmp_path, reference, dataset):
    _, ref = reference
    paths = train(lora_config(tmp_path, dataset, name="accum", grad_accum=2, epochs=1, save_every=0, lora_dropout=0.0))
    same = train(lora_config(tmp_path, dataset, name="one", epochs=1, save_every=0, lora_dropout=0.0))
    got, expected = losses(paths.metrics)["train"], losses(same.metrics)["train"]
    assert [s for s, _ in got] == [1, 2, 3]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_resume_on_changed_base_weights_is_refused(tmp_path, dataset, hf_tiny):
    base = tmp_path / "base"
    shutil.copytree(hf_tiny[1], base)
    paths = train(lora_config(tmp_path, dataset, name="moved", base=str(base)), stop_after=2)
    weights = read_safetensors(base / "model.safetensors")
    weights["h.0.ln_1.weight"] = weights["h.0.ln_1.weight"] + 1.0
    from safetensors.torch import save_file

    save_file(weights, str(base / "model.safetensors"))
    before = sorted(p.name for p in paths.root.iterdir())
    with pytest.raises(ValueError, match="not those the run started from .sha256 differs.; cannot resume"):
        train(TrainConfig(resume=str(paths.root)))
    assert sorted(p.name for p in paths.root.iterdir()) == before and not paths.final.exists()


def test_resume_with_another_rank_is_one_line_and_writes_nothing(tmp_path, dataset, capsys):
    paths = train(lora_config(tmp_path, dataset, name="r4", save_every=0), stop_after=1)
    before = {p: p.stat().st_mtime_ns for p in paths.root.rglob("*")}
    capsys.readouterr()  # the run's own output
    with pytest.raises(SystemExit) as e:
        finetune.main(["--resume", str(paths.root), "--lora-rank", "8"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --resume continues a run with the settings in its run.json; drop --lora-rank "
        "(a run keeps its LoRA rank: 4)"
    )
    assert {p: p.stat().st_mtime_ns for p in paths.root.rglob("*")} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lora-rank", "-1"], "error: --lora-rank must be a positive integer (0: full finetuning), got -1"),
        (["--lora-rank", "two"], "error: argument --lora-rank: invalid int value: 'two'"),
        (["--lora-rank", "4", "--lora-alpha", "0"], "error: --lora-alpha must be a positive number, got 0.0"),
        (["--lora-rank", "4", "--lora-targets", "attn.c_attn", "lm_head"], "error: argument --lora-targets: invalid"),
        (["--lora-alpha", "16"], "error: --lora-alpha needs --lora-rank (a positive rank); without it nothing uses it"),
        (["--lora-rank", "4", "--lora-dropout", "1.5"], "error: --lora-dropout must be in [0, 1), got 1.5"),
    ],
)
def test_bad_lora_options_are_one_line_errors_and_nothing_is_written(tmp_path, dataset, capsys, args, message):
    out = tmp_path / "runs"
    argv = ["--base", "random:tiny", "--dataset", str(dataset), "--out-dir", str(out), *args]
    try:
        code = finetune.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not out.exists()


def test_help_names_the_lora_options_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--lora-rank R", "--lora-alpha", "--lora-dropout", "--lora-targets"):
        assert option in text
    assert "(0: full finetuning)" in text and "default: 2 x R" in text and "(default: 0.05)" in text
    assert "attn.c_attn attn.c_proj mlp.c_fc mlp.c_proj" in text


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, dataset):
    """torchrun with 2 gloo processes computes the same LoRA steps as one process (only adapters are reduced)."""
    common = ["--base", "random:tiny", "--dataset", str(dataset), "--out-dir", str(tmp_path), "--batch-size", "4"]
    common += ["--lr", "1e-2", "--epochs", "1", "--eval-every", "2", "--eval-batches", "2", "--save-every", "0"]
    common += ["--sample-tokens", "2", "--seed", "7", "--prompt-style", "phi3", "--no-mask-prompt"]
    common += ["--lora-rank", "4", "--lora-dropout", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launcher, str(REPO / "finetune.py"), *common, "--name", "ddp"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finetune.main([*common, "--name", "one"]) == 0
    got, ref = losses(tmp_path / "ddp" / "metrics.jsonl"), losses(tmp_path / "one" / "metrics.jsonl")
    torch.testing.assert_close(torch.tensor(got["train"]), torch.tensor(ref["train"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["eval"]), torch.tensor(ref["eval"]), rtol=1e-5, atol=1e-5)
    a, b = read_adapter(tmp_path / "ddp" / "final")[1], read_adapter(tmp_path / "one" / "final")[1]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

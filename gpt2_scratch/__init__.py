"""gpt2_scratch: GPT-2 written from scratch in PyTorch.

The package is split by concept, each with one home:

- ``config``      model hyperparameters (``GPTConfig``) and the four OpenAI presets
- ``model``       every layer of GPT-2, with a KV cache for generation
- ``hub``         loading OpenAI's pretrained weights (Hub id or local file)
- ``tokenizer``   tiktoken's GPT-2 BPE, offline from local files when needed
- ``prompts``     prompt styles (Alpaca, ...) used for finetuning and inference
- ``generation``  sampling, streaming and batched generation
- ``checkpoint``  saving and loading our own checkpoint folders
- ``loss``        the language-modelling loss and its ignore index
- ``files``       atomic file writes shared by everything that saves
- ``data``        instruction datasets: loading, validation, split, collate, batching
- ``training``    the finetuning loop (resume, DDP) behind ``finetune.py``
- ``runs``        the layout of a run folder
- ``metrics``     ROUGE-L, exact match, reference loss
- ``judge``       optional LLM judge over an OpenAI-compatible endpoint
- ``evaluation``  base vs finetuned on the test set, behind ``evaluate.py``
- ``demo``        the Gradio app behind ``app.py``
"""

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer

__all__ = ["GPTConfig", "GPT", "EOS_ID", "get_tokenizer"]

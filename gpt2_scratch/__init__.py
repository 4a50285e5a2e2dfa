"""gpt2_scratch: GPT-2 written from scratch in PyTorch.

The package is split by concept, each with one home:

- ``config``      model hyperparameters (``GPTConfig``) and the four OpenAI presets
- ``model``       every layer of GPT-2, with a KV cache for generation
- ``hub``         loading OpenAI's pretrained weights (Hub id or local file)
- ``tokenizer``   tiktoken's GPT-2 BPE, offline from local files when needed
- ``prompts``     prompt styles (Alpaca, ...) used for finetuning and inference
- ``generation``  sampling, streaming and batched generation
- ``checkpoint``  saving and loading our own checkpoint folders
- ``files``       atomic file writes shared by everything that saves
"""

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import EOS_ID, get_tokenizer

__all__ = ["GPTConfig", "GPT", "EOS_ID", "get_tokenizer"]

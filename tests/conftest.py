"""Fixtures for every test: offline settings, and tiny ``transformers`` models in the Hub's layout."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the network fails fast
if "GPT2_SCRATCH_CACHE" not in os.environ:  # the kernel choices of this session only: nothing written to ~/.cache
    import tempfile

    os.environ["GPT2_SCRATCH_CACHE"] = tempfile.mkdtemp(prefix="gpt2-scratch-test-cache-")

import pytest
import torch

from tests.fixtures.hub import SMALL, TINY, make_hf_model, save_hub_layout


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(transformers model, folder in the Hub layout) at a tiny shape."""
    model = make_hf_model(**TINY)
    folder = save_hub_layout(model, tmp_path_factory.mktemp("hf_tiny"))
    return model, folder


@pytest.fixture(scope="session")
def hf_124m(tmp_path_factory):
    """(transformers model, folder in the Hub layout) at the full 124M GPT-2 shape."""
    model = make_hf_model(**SMALL)
    folder = save_hub_layout(model, tmp_path_factory.mktemp("hf_124m"))
    return model, folder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

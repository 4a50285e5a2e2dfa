"""Evaluation fixtures: the fake judge server, one torch thread, a tiny run to evaluate."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.evaluation import make_run
from tests.fixtures.judge import FakeChatServer


@pytest.fixture
def judge_server():
    """A local OpenAI-compatible chat server (``FakeChatServer``), closed after the test."""
    s = FakeChatServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")

"""Evaluation fixtures: the fake judge server, one torch thread, a tiny run to evaluate."""

from __future__ import annotations

import pytest

from tests.fixtures.evaluation import make_run
from tests.fixtures.judge import FakeChatServer


@pytest.fixture
def judge_server():
    """A local OpenAI-compatible chat server (``FakeChatServer``), closed after the test."""
    s = FakeChatServer()
    yield s
    s.close()


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")

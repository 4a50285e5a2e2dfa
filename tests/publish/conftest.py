"""Publishing fixtures: the local stand-in for the Hugging Face Hub (``FakeHub``)."""

from __future__ import annotations

import pytest

from tests.fixtures.publish import TOKEN, FakeHub


@pytest.fixture
def hub(monkeypatch):
    """A FakeHub that huggingface_hub talks to: offline mode off for this test (the server is local)."""
    from huggingface_hub import constants

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)  # what a plain HfApi() uses, as publish.py's does
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield fake
    fake.close()

"""Shared fixtures: models in the Hugging Face Hub's layout, written locally (no network)."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the network fails fast

from pathlib import Path

import pytest
import torch


def save_hub_layout(hf_model, folder: Path, *, prefix: str = "", with_buffers: bool = True) -> Path:
    """Save a ``transformers.GPT2LMHeadModel`` the way ``openai-community/gpt2`` stores it.

    The Hub file has no ``transformer.`` prefix, holds the ``h.N.attn.bias``
    causal-mask buffers and Conv1D ``(in, out)`` weights; the tied head is not stored.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in hf_model.state_dict().items():
        if k == "lm_head.weight":
            continue
        state[prefix + k.removeprefix("transformer.")] = v.contiguous()
    if with_buffers:
        n = hf_model.config.n_positions
        for i in range(hf_model.config.n_layer):
            state[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_model.config.to_json_file(str(folder / "config.json"))
    return folder


def make_hf_model(seed: int = 0, **config):
    """A randomly initialised ``transformers`` GPT-2 in eval mode (SDPA attention, fp32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**config)
    model = GPT2LMHeadModel(cfg).eval()
    # Random init makes every weight tiny; widen the biases and LayerNorms so parity is not trivially met.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


TINY = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257)
SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)


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


# --------------------------------------------------------------------------- the fake LLM judge


class FakeChatServer:
    """Answers POST /v1/chat/completions with queued (status, reply) pairs; records every request."""

    def __init__(self):
        self.queue: list[tuple[int, str, float]] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, reply, delay = server.queue.pop(0) if server.queue else (200, "0", 0.0)
                time.sleep(delay)
                if status == 200:
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
                else:
                    payload = {"error": {"message": reply}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge_server():
    """A local OpenAI-compatible chat server (``FakeChatServer``), closed after the test."""
    s = FakeChatServer()
    yield s
    s.close()

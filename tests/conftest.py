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


# --------------------------------------------------------------------------- a tiny finished run (the demo's tests)

GREEDY_TOKENS = 24  # new tokens of the demo tests' greedy answers


def _model_result(response: str, rouge: float, judge: int | None, exact: int = 0) -> dict:
    return {
        "response": response,
        "rouge_l": rouge,
        "exact_match": exact,
        "length_tokens": len(response.split()),
        "judge_score": judge,
        "judge_raw": None if judge is None else str(judge),
    }


# eval/predictions.jsonl of the tiny run, in the schema evaluate.py writes.
RUN_PREDICTIONS = [
    {
        "id": 7,
        "instruction": "Name a primary color.",
        "input": "",
        "reference": "Red.",
        "base": _model_result("The sky is", 0.0, 10),
        "finetuned": _model_result("Red.", 1.0, 95, 1),
    },
    {
        "id": 12,
        "instruction": "Rewrite the sentence using a simile.",
        "input": "The cat is quiet.",
        "reference": "The cat is as quiet as a mouse.",
        "base": _model_result("The dog barks loudly", 0.4, 20),
        "finetuned": _model_result("The cat is as quiet as a whisper.", 0.75, 80),
    },
    {
        "id": 30,
        "instruction": "Convert 5 km to meters.",
        "input": "",
        "reference": "5 km is 5000 meters.",
        "base": _model_result("Convert 6 km", 0.25, None),
        "finetuned": _model_result("5 kilometers is 5000 meters.", 0.6, 70),
    },
    {
        "id": 41,
        "instruction": "What is the opposite of 'quiet'?",
        "input": "",
        "reference": "Loud.",
        "base": _model_result("", 0.0, 0),
        "finetuned": _model_result("Loud.", 1.0, 100, 1),
    },
]

RUN_MODEL_SUMMARY = {
    "base": {
        "reference_loss": 3.5,
        "perplexity": 33.12,
        "rouge_l": 0.1625,
        "exact_match": 0.0,
        "mean_length_tokens": 2.75,
        "empty_share": 0.25,
        "judge_mean": 10.0,
        "judge_unparsed": 1,
        "generation_seconds": 1.5,
        "tokens_per_second": 42.0,
    },
    "finetuned": {
        "reference_loss": 1.25,
        "perplexity": 3.49,
        "rouge_l": 0.8375,
        "exact_match": 0.5,
        "mean_length_tokens": 3.5,
        "empty_share": 0.0,
        "judge_mean": 86.25,
        "judge_unparsed": 0,
        "generation_seconds": 2.0,
        "tokens_per_second": 31.5,
    },
}


def write_tiny_run(
    root: Path,
    *,
    status: str = "finished",
    base_model: str = "random:tiny",
    training: dict | None = None,
    dataset: dict | None = None,
    noise: float = 0.05,
    metadata: dict | None = None,
    with_eval: bool = True,
    with_metrics: bool = True,
):
    """A tiny run folder as finetune.py and evaluate.py write it; the one builder every test uses.

    ``final/``: ``random:tiny`` weights plus seeded noise of size ``noise`` ("finetuning":
    answers differ from the base model's; 0 keeps them equal), prompt style alpaca,
    metadata ``base_model`` and ``metadata``; ``run.json`` with ``status``,
    ``training`` and ``dataset``; with ``with_metrics`` a ``metrics.jsonl`` of six
    evaluations; with ``with_eval`` a handmade ``eval/`` (four records, both models,
    ROUGE-L and judge scores).
    """
    from gpt2_scratch.checkpoint import save_checkpoint
    from gpt2_scratch.files import atomic_write_json, atomic_write_jsonl
    from gpt2_scratch.inference import load_model
    from gpt2_scratch.runs import RunInfo, RunPaths

    run = RunPaths(root)
    model, _ = load_model("random:tiny")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    save_checkpoint(run.final, model, prompt_style="alpaca", metadata={"base_model": base_model, **(metadata or {})})
    run.write_info(
        RunInfo(
            name=root.name,
            created="2026-01-01T00:00:00+00:00",
            base_model=base_model,
            prompt_style="alpaca",
            status=status,
            training=training or {},
            dataset=dataset or {},
        )
    )
    if with_metrics:
        atomic_write_jsonl(
            run.metrics,
            [
                {
                    "event": "eval",
                    "step": s,
                    "tokens_seen": 1000 * s,
                    "train_loss": 4.0 - 0.3 * s,
                    "val_loss": 4.2 - 0.2 * s,
                }
                for s in range(6)
            ],
        )
    if with_eval:
        atomic_write_jsonl(run.predictions, RUN_PREDICTIONS)
        atomic_write_json(
            run.summary,
            {
                "run": str(root),
                "created": "2026-01-02T00:00:00+00:00",
                "num_records": len(RUN_PREDICTIONS),
                "checkpoint": {"path": str(run.final), "sha256": "0123456789abcdef" * 4},
                "base_model": "random:tiny",
                "prompt_style": "alpaca",
                "generation": {
                    "max_new_tokens": 64,
                    "temperature": 0.0,
                    "top_k": None,
                    "top_p": None,
                    "seed": 123,
                    "batch_size": 8,
                },
                "judge": {"url": "http://localhost:11434/v1", "model": "llama3"},
                "models": RUN_MODEL_SUMMARY,
            },
        )
    return run


@pytest.fixture(scope="session")
def make_run():
    """``make_run(root, **options) -> RunPaths``: ``write_tiny_run``, a tiny finished run written at ``root``.

    Base model ``random:tiny``; a "finetuned" checkpoint (prompt style alpaca) whose
    weights differ from it, so a swapped column would show; run.json; metrics.jsonl;
    and a handmade eval/ (four records, both models, ROUGE-L and judge scores).
    """
    return write_tiny_run


@pytest.fixture(scope="session")
def finished_run(make_run, tmp_path_factory):
    """One shared ``make_run`` run (``<tmp>/run1``); tests must not modify it."""
    return make_run(tmp_path_factory.mktemp("finished") / "run1")


@pytest.fixture(scope="session")
def greedy():
    """``greedy(model_source, prompt, n=24) -> str``: the greedy answer that ``generate()`` gives (a reference)."""
    from gpt2_scratch.generate.sampling import SamplingSettings, generate
    from gpt2_scratch.inference import load_model
    from gpt2_scratch.tokenizer import decode, encode

    def answer(model_source: str | Path, prompt: str, n: int = GREEDY_TOKENS) -> str:
        model, _ = load_model(str(model_source))
        return decode(generate(model, [encode(prompt)], SamplingSettings(max_new_tokens=n))[0])

    return answer


# --------------------------------------------------------------------------- a dataset file


def _write_dataset(path: Path, n: int = 16) -> Path:
    records = [
        {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
        for a, b in zip(range(3, 3 + n), range(20, 20 + n))
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_dataset():
    """``write_dataset(path, n=16) -> path``: ``n`` short arithmetic instructions as a dataset .json file.

    Split 85/10/5 in file order: 13 train / 1 test / 2 validation records for n=16,
    34 / 4 / 2 for n=40. Record i asks "What is {3+i} plus {20+i}?".
    """
    return _write_dataset


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- app.py, imported in-process


@pytest.fixture
def app_module():
    """The ``app`` module (app.py at the repository root)."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        import app
    finally:
        sys.path.remove(root)
    return app


@pytest.fixture
def launch_app(app_module, monkeypatch):
    """``launch_app(argv) -> (Blocks, launch's keyword arguments)``: ``app.main(argv)`` with the server not started."""
    import gradio as gr

    def run(argv):
        seen = {}

        def launch(self, **kw):
            seen.update(demo=self, **kw)
            return None, "http://127.0.0.1:7860/", None

        monkeypatch.setattr(gr.Blocks, "launch", launch)
        monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
        app_module.main(argv)
        return seen.pop("demo"), seen

    return run

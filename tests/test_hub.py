"""Loading OpenAI-format weights: layouts, and a one-line error for every kind of bad file."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2_scratch.hub import load_pretrained, resolve_hub_id
from tests.fixtures.hub import TINY, make_hf_model, save_hub_layout


def test_transformers_prefixed_layout_and_file_path(tmp_path):
    hf = make_hf_model(**TINY)
    folder = save_hub_layout(hf, tmp_path, prefix="transformer.", with_buffers=False)
    ours = load_pretrained(str(folder / "model.safetensors"))  # a file path, config.json beside it
    idx = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4


def test_save_pretrained_output_loads(tmp_path):
    hf = make_hf_model(**TINY)
    hf.save_pretrained(tmp_path)  # transformers' own writer
    ours = load_pretrained(str(tmp_path))
    idx = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4


def test_short_names_resolve_to_openai_community():
    assert resolve_hub_id("gpt2") == "openai-community/gpt2"
    assert resolve_hub_id("gpt2-xl") == "openai-community/gpt2-xl"
    assert resolve_hub_id("someone/my-gpt2") == "someone/my-gpt2"


def _rewrite(folder, edit):
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.fixture
def hub_copy(tmp_path, hf_tiny):
    _, src = hf_tiny
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    return tmp_path


def test_wrong_shape_is_named(hub_copy):
    _rewrite(hub_copy, lambda s: s.__setitem__("h.1.mlp.c_fc.bias", torch.zeros(7)))
    with pytest.raises(ValueError, match=r"'transformer.h.1.mlp.c_fc.bias' has shape \(7,\), expected \(256,\)"):
        load_pretrained(str(hub_copy))


def test_missing_key_is_named(hub_copy):
    _rewrite(hub_copy, lambda s: s.pop("ln_f.weight"))
    with pytest.raises(ValueError, match="missing tensor 'transformer.ln_f.weight'"):
        load_pretrained(str(hub_copy))


def test_unexpected_key_is_named(hub_copy):
    _rewrite(hub_copy, lambda s: s.__setitem__("h.0.attn.extra", torch.zeros(3)))
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.h.0.attn.extra'"):
        load_pretrained(str(hub_copy))


def test_untied_head_is_refused(hub_copy):
    _rewrite(hub_copy, lambda s: s.__setitem__("lm_head.weight", torch.zeros_like(s["wte.weight"])))
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_pretrained(str(hub_copy))


def test_truncated_file_is_a_clear_error(hub_copy):
    path = hub_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pretrained(str(hub_copy))


def test_foreign_file_is_a_clear_error(hub_copy):
    (hub_copy / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pretrained(str(hub_copy))


def test_non_gpt2_config_is_refused(hub_copy):
    cfg = json.loads((hub_copy / "config.json").read_text())
    cfg["model_type"] = "llama"
    (hub_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="describes a 'llama' model"):
        load_pretrained(str(hub_copy))


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[1, 2]", r"config\.json is not a GPT-2 config\.json \(AttributeError: "),
        (b'{"model_type": "gpt2"}', r"config\.json is not a GPT-2 config\.json \(KeyError: 'n_embd'\)"),
        (b'{"n_embd": ', r"config\.json is not valid JSON \(Expecting value"),
        (b'{"n_embd": "\xff"}', r"config\.json is not valid JSON \('utf-8' codec can't decode"),
    ],
)
def test_malformed_config_from_a_hub_repo_is_one_line(hub_copy, text, message):
    (hub_copy / "config.json").write_bytes(text)
    with pytest.raises(ValueError, match=message):
        load_pretrained(str(hub_copy))


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_pretrained(str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        load_pretrained(str(tmp_path))


def test_no_network_says_to_pass_a_local_path(monkeypatch, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1, and an empty cache: the download cannot succeed.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match="cannot download 'openai-community/gpt2'.*pass a local path"):
        load_pretrained("gpt2")


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch, tmp_path):
    # Not "offline" by the env var: the endpoint just does not answer (a closed local port), and the cache is empty.
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        load_pretrained("gpt2")
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot download 'openai-community/gpt2' from the Hugging Face Hub (cannot reach 127.0.0.1)"
    )
    assert "pass a local path" in message and "random:tiny" in message

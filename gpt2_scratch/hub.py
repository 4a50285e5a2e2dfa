"""Loading OpenAI's pretrained GPT-2 weights into the scratch model.

``load_pretrained`` takes a Hugging Face Hub id (``openai-community/gpt2``, or a short name such
as ``gpt2-medium``, downloaded into ``huggingface_hub``'s cache) or a local ``model.safetensors``
file or folder. ``convert_hf_state_dict`` maps ``transformers.GPT2LMHeadModel``'s layout (keys with
a ``transformer.`` prefix, ``attn.bias``/``attn.masked_bias`` buffers, ``Conv1D`` ``(in, out)``
weights) to ours (``nn.Linear``'s ``(out, in)``); ``to_hf_state_dict`` maps back.
Invariant: every key and shape is checked; nothing is loaded partially.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from gpt2_scratch.checkpoint import read_safetensors
from gpt2_scratch.config import PRESETS, GPTConfig
from gpt2_scratch.files import read_json
from gpt2_scratch.model import GPT

HUB_IDS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# Weights stored as Conv1D (in, out) in OpenAI's checkpoints.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers of transformers' GPT-2 that hold a causal mask, not weights.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # not c_attn.bias!


def resolve_hub_id(source: str) -> str:
    """``gpt2-medium`` -> ``openai-community/gpt2-medium``; other ids pass through."""
    return HUB_IDS.get(source, source)


OFFLINE_HINT = "pass a local path (a model.safetensors file or a folder holding it), or random:tiny for a smoke run"
REACH_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's endpoint (``HF_ENDPOINT``, default huggingface.co) opens within ``timeout``.

    Why: offline, ``huggingface_hub`` retries every request with backoff for about
    half a minute before it gives up; one connection attempt answers in seconds.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Fail fast, in one line that names ``what``, when the Hub cannot be reached (or ``HF_HUB_OFFLINE`` is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or not hub_reachable():
        host = urlparse(constants.ENDPOINT).hostname
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"cannot reach {host}"
        raise RuntimeError(f"cannot download {what} from the Hugging Face Hub ({why})")


def _download(repo_id: str) -> tuple[Path, Path]:
    """(weights, config.json) of a Hub repo: from the local cache when there, else downloaded."""
    from huggingface_hub import hf_hub_download

    try:  # the cache answers offline too
        return Path(hf_hub_download(repo_id, "model.safetensors", local_files_only=True)), Path(
            hf_hub_download(repo_id, "config.json", local_files_only=True)
        )
    except Exception:
        pass
    try:
        require_hub(repr(repo_id))
        weights = hf_hub_download(repo_id, "model.safetensors")
        config = hf_hub_download(repo_id, "config.json")
    except RuntimeError as e:
        raise RuntimeError(f"{e}; {OFFLINE_HINT}") from None
    except Exception as e:  # unknown repo, gated, ... all end the same way for the user
        raise RuntimeError(
            f"cannot download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}); {OFFLINE_HINT}"
        ) from None
    return Path(weights), Path(config)


def _locate(source: str) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) for a local path or a Hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path} holds no model.safetensors")
        return weights, path / "config.json" if (path / "config.json").is_file() else None
    if path.is_file():
        cfg = path.with_name("config.json")
        return path, cfg if cfg.is_file() else None
    if looks_local(source):
        raise FileNotFoundError(f"no such file or folder: {source}")
    return _download(resolve_hub_id(source))


def absolute_source(source: str) -> str:
    """A model string as a run records it: a local path made absolute (it then resolves from any folder);
    a Hub id, a short name or ``random:<preset>`` as it is."""
    return str(Path(source).expanduser().resolve()) if looks_local(source) else source


def check_local_model(source: str, option: str) -> None:
    """A one-line ``ValueError`` naming ``option`` when ``source`` names a local path that does not exist."""
    if looks_local(source) and not Path(source).expanduser().exists():
        raise ValueError(f"{option} {source}: no such file or folder")


def looks_local(source: str) -> bool:
    """Whether ``source`` names a local path rather than a Hub id, whether or not it exists.

    A path: it starts with ``.``, ``/`` or ``~``, ends with ``.safetensors``, has more than one
    ``/`` (a Hub id has one), or its first part is a folder here (``runs/nonexist`` where ``runs/``
    exists). Else it is read as a Hub id (``gpt2``, ``openai-community/gpt2``).
    """
    if source.startswith((".", "/", "~")) or source.endswith(".safetensors") or source.count("/") > 1:
        return True
    path = Path(source).expanduser()
    return path.exists() or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())


def _infer_config(state: dict[str, torch.Tensor], weights: Path) -> GPTConfig:
    """Config from tensor shapes when there is no config.json: match an OpenAI preset."""
    wte, wpe = state.get("wte.weight"), state.get("wpe.weight")
    if wte is None or wpe is None:
        raise ValueError(f"{weights}: no config.json beside it and no wte/wpe tensors to infer one from")
    n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
    for preset in PRESETS.values():
        if preset["n_embd"] == wte.shape[1] and preset["n_layer"] == n_layer:
            return GPTConfig(**{**preset, "vocab_size": wte.shape[0], "block_size": wpe.shape[0]})
    raise ValueError(f"{weights}: no config.json beside it and its shapes match no GPT-2 preset")


def convert_hf_state_dict(state: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """Rename a transformers GPT-2 state dict to our parameter names and transpose Conv1D weights.

    Key and shape checks happen in ``GPT.load_weights``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():  # (transposed weights are copied contiguous: the model owns them)
        k = key.removeprefix("transformer.")
        if k.endswith(_BUFFER_SUFFIXES):
            continue
        if k == "lm_head.weight":
            # The head is tied to wte; a checkpoint may store the copy. It must really be a copy.
            wte = state.get("transformer.wte.weight", state.get("wte.weight"))
            if wte is None or tensor.shape != wte.shape or not torch.equal(tensor, wte):
                raise ValueError(f"{source}: lm_head.weight differs from wte.weight; only tied heads are supported")
            continue
        transpose = k.endswith(_CONV1D_SUFFIXES) and tensor.ndim == 2
        out[f"transformer.{k}"] = tensor.t().contiguous() if transpose else tensor
    return out


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_hf_state_dict``: our state dict in ``transformers.GPT2LMHeadModel``'s layout.

    Our names already are GPT2LMHeadModel's (``transformer.`` prefix); the four
    projection weights become Conv1D ``(in, out)`` matrices, and the tied head is
    left out, as ``transformers`` saves it (it ties ``lm_head`` to ``wte`` on load).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == "lm_head.weight":
            continue
        if not key.startswith("transformer."):
            raise ValueError(f"unexpected tensor {key!r}: not a parameter of our GPT")
        out[key] = (tensor.t() if key.endswith(_CONV1D_SUFFIXES) and tensor.ndim == 2 else tensor).contiguous()
    return out


def load_pretrained(source: str = "gpt2", *, device: str | torch.device = "cpu", dropout: float = 0.0) -> GPT:
    """GPT-2 with pretrained weights from a Hub id, a short name or a local path."""
    weights, config_path = _locate(source)
    state = read_safetensors(weights)
    if config_path is not None:
        hf = read_json(config_path)  # not UTF-8 JSON: a one-line error naming the file
        try:
            config = GPTConfig.from_hf_config(hf)
        except (KeyError, TypeError, AttributeError) as e:  # a field missing, or of the wrong JSON type
            raise ValueError(f"{config_path} is not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    else:
        config = _infer_config({k.removeprefix("transformer."): v for k, v in state.items()}, weights)
    config.dropout = dropout
    with torch.device("meta"):  # load_weights takes the converted tensors as they are
        model = GPT(config)
    model.load_weights(convert_hf_state_dict(state, str(weights)), str(weights))
    return model.to(device).eval()

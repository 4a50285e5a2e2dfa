"""The options of ``publish.py``: ``PublishConfig``, one field per option (its parser is generated from them).

    config = PublishConfig(**vars(publish.build_parser().parse_args()))

The values are checked where they are used (``hub_upload.prepare_publish``: the run, the repo names,
the export folder), each with a one-line error naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpt2_scratch.publish.export import WEIGHTS_DTYPES
from gpt2_scratch.publish.gguf import GGUF_TYPES

WHERE = "what goes where"
EXPORT = "what the export holds"


@dataclass
class PublishConfig:
    """Everything ``publish.py`` is told: its options, one to one."""

    run: Path = field(
        metadata={"help": "the finished run folder to publish, e.g. runs/<name>", "group": WHERE, "metavar": "RUN"}
    )
    repo: str = field(
        metadata={
            "help": "Hub model repo to publish to, <user>/<name> (created if missing)",
            "group": WHERE,
            "metavar": "REPO",
        }
    )
    space: str | None = field(
        default=None,
        metadata={
            "help": "also push the demo to this Gradio Space, <user>/<space> (created if missing)",
            "group": WHERE,
            "metavar": "SPACE",
            "default_text": "no Space",
        },
    )
    private: bool = field(default=False, metadata={"help": "create the repo (and the Space) private", "group": WHERE})
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "build the export in a temporary folder and print what would go where; write and upload nothing",
            "group": WHERE,
        },
    )
    export_dir: Path | None = field(
        default=None,
        metadata={
            "help": "where to write the export",
            "group": EXPORT,
            "metavar": "DIR",
            "default_text": "<run>/export",
        },
    )
    license: str = field(
        default="mit", metadata={"help": "license in the model card (mit: GPT-2's license)", "group": EXPORT}
    )
    weights_dtype: str = field(
        default=WEIGHTS_DTYPES[0],
        metadata={
            "help": "how model.safetensors is stored: bfloat16 halves what users and the Space download",
            "group": EXPORT,
            "choices": WEIGHTS_DTYPES,
        },
    )
    gguf: list[str] = field(
        default_factory=list,
        metadata={
            "help": "also write model-TYPE.gguf for llama.cpp and Ollama, with an Ollama Modelfile for the first; "
            f"repeat for more types ({', '.join(GGUF_TYPES)}; a LoRA run: its merged weights)",
            "group": EXPORT,
            "choices": tuple(GGUF_TYPES),
            "metavar": "TYPE",
            "repeat": True,
            "default_text": "none",
        },
    )

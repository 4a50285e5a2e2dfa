"""The options of ``app.py``: ``AppConfig``, one field per option (its parser is generated from them).

    config = AppConfig(**vars(app.build_parser().parse_args()))   # counts and port checked here

No Gradio here (nor in what this imports): ``python app.py --help`` builds the parser from this
module alone and stays fast. Whether the run and the runs folder exist and the port is free,
app.py finds out where it uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt2_scratch.demo.generate.backends import DEFAULT_MAX_ROWS, DEFAULT_MAX_WAITING
from gpt2_scratch.inference import DTYPES
from gpt2_scratch.kernels import KERNEL_DEFAULT_TEXT, KERNEL_HELP
from gpt2_scratch.options import check_range, option_name
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, HUB_REPO_ENV

# With --no-batching: requests waiting in Gradio's queue for a generation slot; one more gets Gradio's
# "busy". With batching there is no Gradio queue limit: the engines queue (backends.Batched).
QUEUE_SIZE = 16

WHAT = "what to serve"
SERVER = "server"
INFERENCE = "inference"
COUNTS = ("concurrency", "queue_size", "max_batch", "max_waiting")


@dataclass
class AppConfig:
    """Everything ``app.py`` is told: its options, one to one."""

    run: str | None = field(
        default=None,
        metadata={
            "help": "run folder to serve",
            "group": WHAT,
            "metavar": "RUN_FOLDER",
            "default_text": f"the first of ${HUB_REPO_ENV}, else the newest evaluated run under --runs-dir, "
            "else the newest",
        },
    )
    runs_dir: str | None = field(
        default=None,  # None: runs/, which a fresh clone lacks; a folder given must exist
        metadata={
            "help": "folder of runs: each finished one is offered in the results tab",
            "group": WHAT,
            "metavar": "DIR",
            "default_text": str(DEFAULT_RUNS_DIR),
        },
    )
    base: str | None = field(
        default=None,
        metadata={
            "help": "base model: Hub id, short name, local path or random:<preset>",
            "group": WHAT,
            "metavar": "MODEL",
            "default_text": "the run's base_model",
        },
    )
    host: str | None = field(
        default=None,
        metadata={
            "help": "address to bind",
            "group": SERVER,
            "default_text": "$GRADIO_SERVER_NAME, else 127.0.0.1, or 0.0.0.0 on a Space",
        },
    )
    port: int | None = field(
        default=None,
        metadata={
            "help": "port",
            "group": SERVER,
            "default_text": "$GRADIO_SERVER_PORT, else the first free from 7860",
        },
    )
    concurrency: int = field(
        default=2,
        metadata={
            "help": "generations running at once with --no-batching (with batching: --max-batch + --max-waiting "
            "reach the engines at once), other events always",
            "group": SERVER,
            "metavar": "N",
        },
    )
    queue_size: int = field(
        default=QUEUE_SIZE,
        metadata={
            "help": "with --no-batching: requests that may wait in Gradio's queue for a generation; more are told "
            "the app is busy (with batching, --max-waiting is the queue)",
            "group": SERVER,
            "metavar": "N",
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "inference format of both models: auto (bfloat16 on CUDA and on CPUs with native bfloat16, "
            "else float32), float32, bfloat16, int8 or int4 (weight-only; int4 is llama.cpp's q4_0)",
            "group": INFERENCE,
            "choices": DTYPES,
        },
    )
    kernel: str | None = field(
        default=None,
        metadata={
            "help": KERNEL_HELP,
            "group": INFERENCE,
            "default_text": KERNEL_DEFAULT_TEXT,
        },
    )
    batching: bool = field(
        default=True,
        metadata={
            "help": "share one batched decoding loop per model between all visitors; --no-batching generates "
            "each request on its own, --concurrency at a time (always off on ZeroGPU Spaces)",
            "group": INFERENCE,
        },
    )
    max_batch: int = field(
        default=DEFAULT_MAX_ROWS,
        metadata={"help": "with batching: requests decoded together per model", "group": INFERENCE, "metavar": "N"},
    )
    max_waiting: int = field(
        default=DEFAULT_MAX_WAITING,
        metadata={
            "help": "with batching: requests that may wait for a place in a model's batch, each shown its place; "
            "more are told how long to wait",
            "group": INFERENCE,
            "metavar": "N",
        },
    )

    def __post_init__(self) -> None:
        """Range errors name the option as typed (``options.check_range``): "--concurrency must be at least 1"."""
        for name in COUNTS:
            check_range(option_name(name), getattr(self, name), "at least 1")
        check_range("--port", self.port, "from 1 to 65535", none_ok=True)

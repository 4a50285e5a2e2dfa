"""Launch the Gradio demo of a finetuned run.

    python app.py                                  # the newest evaluated (else newest) finished run under runs/
    python app.py --run runs/<name> [--runs-dir runs] [--base gpt2] [--dtype auto] [--no-batching]

Offers every finished run under --runs-dir (or the runs of the Hub repos named by
GPT2_SCRATCH_HUB_REPO, comma-separated, as on a Space) and serves --run, else the first of those
(the first Hub repo, or the newest evaluated run, else the newest). Binds 127.0.0.1 (0.0.0.0 on a
Space, where SPACE_ID is set); no share link, no uploads, at most --queue-size waiting. Every request to a model joins that
model's running batch (generate/engine.py) unless --no-batching or on ZeroGPU. The app is
gpt2_scratch/demo/; design: docs/design.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # On a ZeroGPU Space, spaces must be imported before torch touches CUDA.
    import spaces  # noqa: F401
except ImportError:
    pass

from gpt2_scratch.inference import DTYPES  # noqa: E402  (after spaces)
from gpt2_scratch.options import ArgumentParser  # noqa: E402

EXAMPLES_FILE = Path(__file__).resolve().parent / "assets" / "examples.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="app.py", description="\n\n".join(__doc__.split("\n\n")[:2]))
    p.add_argument(
        "--run",
        help="run folder to serve (default: the first of $GPT2_SCRATCH_HUB_REPO, else the newest evaluated run "
        "under --runs-dir, else the newest)",
    )
    p.add_argument(
        "--runs-dir",
        default=None,  # None: runs, which may be missing (a fresh clone); a folder given must exist
        help="folder of runs: each finished one is offered in the results tab (default: runs)",
    )
    p.add_argument(
        "--base",
        help="base model: Hub id, short name, local path or random:<preset> (default: the run's base_model)",
    )
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, or 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else the first free from 7860)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="generations running at once with --no-batching (with batching: --max-batch + --max-waiting "
        "reach the engines at once), other events always",
    )
    # The default lives in gpt2_scratch.demo.QUEUE_SIZE (not imported here: --help stays fast, without gradio).
    p.add_argument(
        "--queue-size",
        type=int,
        help="with --no-batching: requests that may wait in Gradio's queue for a generation; more are told "
        "the app is busy (default: 16; with batching, --max-waiting is the queue)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="inference format of both models: auto (bfloat16 on CUDA and on CPUs with native bfloat16, "
        "else float32), float32, bfloat16 or int8 (weight-only)",
    )
    p.add_argument(
        "--kernel",
        help="the product kernel of every linear layer (float32/bfloat16: onednn or mkl; int8: int8pack or "
        "dequant); default: measured per layer shape on this CPU and cached (also GPT2_SCRATCH_KERNEL)",
    )
    # Defaults in gpt2_scratch.demo.backends (DEFAULT_MAX_ROWS, DEFAULT_MAX_WAITING).
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="generate each request on its own, --concurrency at a time (the default shares one batched "
        "decoding loop per model between all visitors; always off on ZeroGPU Spaces)",
    )
    p.add_argument("--max-batch", type=int, help="with batching: requests decoded together per model (default: 16)")
    p.add_argument(
        "--max-waiting",
        type=int,
        help="with batching: requests that may wait for a place in a model's batch, each shown its place; "
        "more are told how long to wait (default: 64)",
    )
    return p.parse_args(argv)


def fail(message: str) -> NoReturn:
    """A one-line error on stderr and exit status 2, as for a bad argument."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def runs_folder(value: str | None) -> str:
    """``--runs-dir``: a folder given must exist, as for ``--run``; not given: ``runs``, which a fresh clone lacks."""
    if value is not None and not Path(value).expanduser().is_dir():
        fail(f"--runs-dir {value}: no such folder")
    return value or "runs"


def port_problem(error: OSError, host: str, port: int | None) -> str | None:
    """The one-line message for Gradio's "no free port" error (None for any other OSError)."""
    found = re.search(r"Cannot find empty port in range: (\d+)-(\d+)", str(error))
    if not found:
        return None
    first, last = found.groups()
    if port is not None or first == last:
        return (
            f"--port {port if port is not None else first}: cannot listen on {host}:{first} "
            "(the port is in use or not allowed); pick another with --port N"
        )
    return f"no free port from {first} to {last} on {host}; pick one with --port N"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    counts = ("concurrency", "queue_size", "max_batch", "max_waiting")
    for option, value in ((f"--{name.replace('_', '-')}", getattr(args, name)) for name in counts):
        if value is not None and value < 1:
            fail(f"{option} must be at least 1, got {value}")
    if args.port is not None and not 1 <= args.port <= 65535:
        fail(f"--port must be from 1 to 65535, got {args.port}")
    runs_dir = runs_folder(args.runs_dir)

    from gpt2_scratch.demo import GRADIO_THREADS, QUEUE_SIZE, DemoApp, build_demo, load_examples, plain, start
    from gpt2_scratch.demo.backends import DEFAULT_MAX_ROWS, DEFAULT_MAX_WAITING, choose_backend
    from gpt2_scratch.demo.discovery import find_runs, resolve_run
    from gpt2_scratch.runs import HUB_REPO_ENV

    try:
        hub_repo = os.environ.get(HUB_REPO_ENV)
        sources = find_runs(runs_dir, hub_repo)
        run, problem = resolve_run(args.run, runs_dir=runs_dir, hub_repo=hub_repo, sources=sources)
        backend, backend_note = choose_backend(
            batching=not args.no_batching,
            max_rows=args.max_batch or DEFAULT_MAX_ROWS,
            max_waiting=args.max_waiting or DEFAULT_MAX_WAITING,
        )
        app = DemoApp.from_run(
            run,
            base=args.base,
            run_problem=problem,
            sources=sources,
            find_sources=lambda: find_runs(runs_dir, hub_repo),  # the results tab's refresh button
            backend=backend,
            dtype=args.dtype,
            kernel=args.kernel,
        )
        examples = load_examples(EXAMPLES_FILE)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    # Each Hub repo that failed is named once, whether or not another one is served.
    failed = [s.problem for s in sources if s.problem]
    for warning in [*failed, None if problem == " ".join(failed) else problem, app.checkpoint_note, backend_note]:
        if warning:
            print(f"warning: {plain(warning)}", file=sys.stderr)  # a terminal shows no Markdown

    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if "SPACE_ID" in os.environ else "127.0.0.1")
    demo = build_demo(app, examples)
    try:
        url = start(
            demo,
            host=host,
            port=args.port,
            concurrency=args.concurrency,
            queue_size=None if backend.batching else args.queue_size or QUEUE_SIZE,  # batching: the engines queue
            max_threads=GRADIO_THREADS + (backend.concurrency_limit or 0),
        )
    except OSError as e:
        message = port_problem(e, host, args.port)
        if message is None:
            raise
        fail(message)
    # Gradio's own lines (with its hint about share=True, an option this app does not have) are silenced.
    served = f"run `{app.run_name}`" if app.run_name else f"no run (only the base model `{app.base.source}`)"
    print(f"Serving {served} at {url} (Ctrl-C to stop)", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()

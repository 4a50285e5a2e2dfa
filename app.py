"""Launch the Gradio demo of a finetuned run.

    python app.py                                  # the newest evaluated (else newest) finished run under runs/
    python app.py --run runs/<name> [--runs-dir runs] [--base gpt2] [--dtype auto] [--no-batching]

Offers every finished run under --runs-dir (or the runs of the Hub repos named by
GPT2_SCRATCH_HUB_REPO, comma-separated, as on a Space) and serves --run, else the first of those
(the first Hub repo, or the newest evaluated run, else the newest). Binds 127.0.0.1 (0.0.0.0 on a
Space, where SPACE_ID is set); no share link, no uploads, at most --queue-size waiting. Every request to a model joins that
model's running batch (generate/engine.py) unless --no-batching or on ZeroGPU. The options are
gpt2_scratch.demo.config.AppConfig's fields; the app is gpt2_scratch/demo/; design: docs/design.md.
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

from gpt2_scratch.demo.config import AppConfig  # noqa: E402  (after spaces; no Gradio: --help stays fast)
from gpt2_scratch.options import ArgumentParser, add_dataclass_options  # noqa: E402

EXAMPLES_FILE = Path(__file__).resolve().parent / "assets" / "examples.json"


def build_parser() -> argparse.ArgumentParser:
    """One option per AppConfig field (help, group, choices and default from the field)."""
    parser = ArgumentParser(prog="app.py", description="\n\n".join(__doc__.split("\n\n")[:2]))
    add_dataclass_options(parser, AppConfig)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
    try:
        config = AppConfig(**vars(parse_args(argv)))  # a count or port out of range: one line naming the option
    except ValueError as e:
        fail(str(e))
    runs_dir = runs_folder(config.runs_dir)

    from gpt2_scratch.demo import GRADIO_THREADS, DemoApp, build_demo, load_examples, plain, start
    from gpt2_scratch.demo.discovery import find_runs, resolve_run
    from gpt2_scratch.demo.generate.backends import choose_backend
    from gpt2_scratch.runs import HUB_REPO_ENV

    try:
        hub_repo = os.environ.get(HUB_REPO_ENV)
        sources = find_runs(runs_dir, hub_repo)
        run, problem = resolve_run(config.run, runs_dir=runs_dir, hub_repo=hub_repo, sources=sources)
        backend, backend_note = choose_backend(
            batching=config.batching,
            max_rows=config.max_batch,
            max_waiting=config.max_waiting,
        )
        app = DemoApp.from_run(
            run,
            base=config.base,
            run_problem=problem,
            sources=sources,
            find_sources=lambda: find_runs(runs_dir, hub_repo),  # the results tab's refresh button
            backend=backend,
            dtype=config.dtype,
            kernel=config.kernel,
        )
        examples = load_examples(EXAMPLES_FILE)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    # Each Hub repo that failed is named once, whether or not another one is served.
    failed = [s.problem for s in sources if s.problem]
    for warning in [*failed, None if problem == " ".join(failed) else problem, app.checkpoint_note, backend_note]:
        if warning:
            print(f"warning: {plain(warning)}", file=sys.stderr)  # a terminal shows no Markdown

    host = (
        config.host or os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if "SPACE_ID" in os.environ else "127.0.0.1")
    )
    demo = build_demo(app, examples)
    try:
        url = start(
            demo,
            host=host,
            port=config.port,
            concurrency=config.concurrency,
            queue_size=None if backend.batching else config.queue_size,  # batching: the engines queue
            max_threads=GRADIO_THREADS + (backend.concurrency_limit or 0),
        )
    except OSError as e:
        message = port_problem(e, host, config.port)
        if message is None:
            raise
        fail(message)
    # Gradio's own lines (with its hint about share=True, an option this app does not have) are silenced.
    served = f"run `{app.run_name}`" if app.run_name else f"no run (only the base model `{app.base.source}`)"
    print(f"Serving {served} at {url} (Ctrl-C to stop)", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()

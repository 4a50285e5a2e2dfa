"""Serving throughput as visitors see it: the app with and without batching, under 1 to N concurrent users.

Starts two ``app.py`` processes (batched, and ``--no-batching``) serving ``--model`` (default: the
124M shape, random weights); for each count in ``--users`` that many ``gradio_client`` users ask
``/generate_base`` for ``--new-tokens`` greedy tokens at once. Prints aggregate and per-user
tokens/s and the time to first token (p50, p95), and checks the goals (at 8 users: aggregate >= 4x
one user's and >= 3x without batching, p95 first token <= 1.5 s; one user >= 0.95x without
batching and >= 0.9x the library's own ``stream()`` in a process like the app's). ``--rounds`` (default 3)
rounds in turns (the library, then every count in every mode), medians. Method and figures: docs/performance.md.

    python -m benchmarks.bench_serve                                        # 124M shape: the real figures
    python -m benchmarks.bench_serve --model random:tiny --users 1,2 --new-tokens 8   # smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client

from gpt2_scratch.files import atomic_write_json
from gpt2_scratch.inference import DTYPES

MODES = {"batching": [], "no batching": ["--no-batching"]}
TOKENS_DONE = re.compile(r"(\d+) new tokens in ")
TOKENS_SO_FAR = re.compile(r"Generating… (\d+) tokens")
POLL_S = 0.005


@dataclass
class Answer:
    """One user's request: its timings (seconds from its request) and tokens."""

    first_token_s: float
    total_s: float
    tokens: int


@dataclass
class Round:
    """Every user's answer in one round of ``users`` concurrent requests, and the round's wall time."""

    mode: str
    users: int
    answers: list[Answer]
    wall_s: float

    @property
    def aggregate(self) -> float:
        return sum(a.tokens for a in self.answers) / self.wall_s

    @property
    def per_user(self) -> float:
        return sum(a.tokens / a.total_s for a in self.answers) / len(self.answers)

    def ttft(self, q: float) -> float:
        """Time to first token at quantile ``q`` (nearest rank)."""
        values = sorted(a.first_token_s for a in self.answers)
        return values[max(0, math.ceil(q * len(values)) - 1)]


class App:
    """``python app.py`` serving ``model`` on a free port, stopped by ``close``."""

    def __init__(self, mode: str, args: argparse.Namespace, runs_dir: Path, log_dir: Path):
        self.mode = mode
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        threads = str(args.threads)
        env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        env.pop("SPACE_ID", None)
        self.log_path = log_dir / f"app-{mode.replace(' ', '-')}.log"
        self._log = open(self.log_path, "w")
        command = [
            sys.executable,
            "app.py",
            "--base",
            args.model,
            "--runs-dir",
            str(runs_dir),
            "--port",
            str(port),
            "--dtype",
            args.dtype,
            *MODES[mode],
        ]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"app.py ({self.mode}) exited with status {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"app.py ({self.mode}) did not answer within {timeout:.0f} s:\n{self.log()}"
                    ) from None
                time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def ask(client: Client, prompt: str, new_tokens: int) -> Answer:
    """One user's greedy request, streamed: when its first token showed, when it finished, how many tokens."""
    started = time.perf_counter()
    job = client.submit(prompt, new_tokens, 0.0, 0, 1.0, 0, api_name="/generate_base")
    first, seen = None, 0
    while not job.done():
        outputs = job.outputs()
        if first is None and any(out[0] and TOKENS_SO_FAR.search(out[1]) for out in outputs[seen:]):
            first = time.perf_counter() - started
        seen = len(outputs)
        time.sleep(POLL_S)
    text, status = job.result()
    total = time.perf_counter() - started
    done = TOKENS_DONE.search(status)
    if done is None:
        raise RuntimeError(f"the request failed: {status!r}")
    return Answer(first if first is not None else total, total, int(done.group(1)))


def run_round(app: App, users: int, new_tokens: int) -> Round:
    """``users`` clients (one each, connected beforehand) ask at once; returns their answers."""
    clients = [Client(app.url, verbose=False, analytics_enabled=False, download_files=False) for _ in range(users)]
    answers: list[Answer | BaseException | None] = [None] * users
    go = threading.Barrier(users + 1)

    def user(i: int) -> None:
        go.wait()
        try:
            answers[i] = ask(clients[i], f"Visitor {i} writes: Every effort moves you", new_tokens)
        except BaseException as e:  # reported below, with the app's log
            answers[i] = e

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    failed = [a for a in answers if not isinstance(a, Answer)]
    if failed:
        raise SystemExit(f"{len(failed)} of {users} requests failed ({failed[0]!r}); app log:\n{app.log()}")
    return Round(app.mode, users, answers, wall)  # type: ignore[arg-type]


LIBRARY = """
import sys, time
import torch
from gpt2_scratch.generate.sampling import SamplingSettings, stream
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import encode
model, _ = load_model(sys.argv[1], dtype=sys.argv[2])
ids = encode("Visitor 0 writes: Every effort moves you")
list(stream(model, ids, SamplingSettings(max_new_tokens=4)))  # warm-up
for _ in range(int(sys.argv[4])):
    started = time.perf_counter()
    n = len(list(stream(model, ids, SamplingSettings(max_new_tokens=int(sys.argv[3]))))[-1][0])
    print(n / (time.perf_counter() - started), flush=True)
"""


def library_rate(args: argparse.Namespace, rounds: int) -> list[float]:
    """Tokens/s of the library's own ``sampling.stream`` for one visitor's request, in a process like the app's
    (same model, format and threads): what one visitor of the app should get."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, "-c", LIBRARY, args.model, args.dtype, str(args.new_tokens), str(rounds)]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return [float(line) for line in out.split()]


def goals(rounds: dict[tuple[str, int], Round], library: float | None = None) -> list[tuple[str, float, float, bool]]:
    """(goal, measured, target, met) for each goal whose rounds were measured."""
    out = []
    on, off = (lambda n: rounds.get(("batching", n))), (lambda n: rounds.get(("no batching", n)))
    if on(8) and on(1):
        ratio = on(8).aggregate / on(1).aggregate
        out.append(("8 users: aggregate / one user's (batching)", ratio, 4.0, ratio >= 4.0))
    if on(8) and off(8):
        ratio = on(8).aggregate / off(8).aggregate
        out.append(("8 users: aggregate / aggregate without batching", ratio, 3.0, ratio >= 3.0))
    if on(8):
        p95 = on(8).ttft(0.95)
        out.append(("8 users: time to first token p95 (s, at most)", p95, 1.5, p95 <= 1.5))
    if on(1) and off(1):
        ratio = on(1).aggregate / off(1).aggregate
        out.append(("1 user: tokens/s / without batching", ratio, 0.95, ratio >= 0.95))
    if on(1) and library:
        ratio = on(1).aggregate / library
        out.append(("1 user: tokens/s / the library's stream()", ratio, 0.9, ratio >= 0.9))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2", help="base model, any load_model string (default: random:gpt2)")
    ap.add_argument("--users", default="1,4,8,16", help="concurrent users per round, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each app process")
    ap.add_argument("--dtype", choices=DTYPES, default="float32", help="app.py --dtype (default: float32)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (library, then each count in each mode); medians"
    )
    args = ap.parse_args()
    try:
        users = [int(u) for u in args.users.split(",")]
    except ValueError:
        ap.error(f"--users must be comma-separated whole numbers, got {args.users!r}")
    if not users or min(users) < 1 or args.new_tokens < 1 or args.threads < 1 or args.rounds < 1:
        ap.error("--users, --new-tokens, --threads and --rounds must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"  # empty: no finetuned run, the base model only
        runs_dir.mkdir()
        apps = {mode: App(mode, args, runs_dir, Path(tmp)) for mode in MODES}
        try:
            for app in apps.values():
                app.wait_ready()
                run_round(app, 1, min(4, args.new_tokens))  # loads the model and warms it up
            print(
                f"{args.model} ({args.dtype}), {args.threads} threads per app, {args.new_tokens} greedy new tokens "
                "per user",
                flush=True,
            )
            print(
                f"{'users':>5}  {'mode':<12} {'aggregate tok/s':>15} {'per user tok/s':>14} {'TTFT p50 s':>10} "
                f"{'TTFT p95 s':>10} {'wall s':>7}"
            )
            # In turns (the library, then every count in every mode; again), so that a machine whose speed
            # drifts slows each side alike; each side's median round is kept.
            measured: dict[tuple[str, int], list[Round]] = {}
            library_rates: list[float] = []
            for _ in range(args.rounds):
                library_rates += library_rate(args, 1)  # the apps are idle meanwhile
                print(f"{'1':>5}  {'stream()':<12} {library_rates[-1]:>15.1f}  (the library in a process of its own)")
                for n in users:
                    for mode, app in apps.items():
                        r = run_round(app, n, args.new_tokens)
                        measured.setdefault((mode, n), []).append(r)
                        print(
                            f"{n:>5}  {mode:<12} {r.aggregate:>15.1f} {r.per_user:>14.1f} {r.ttft(0.5):>10.2f} "
                            f"{r.ttft(0.95):>10.2f} {r.wall_s:>7.1f}",
                            flush=True,
                        )
            rounds = {key: sorted(rs, key=lambda r: r.aggregate)[len(rs) // 2] for key, rs in measured.items()}
            library = sorted(library_rates)[len(library_rates) // 2]
            print(
                f"medians of {args.rounds} rounds: stream() {library:.1f} tok/s; "
                + "; ".join(f"{mode} x{n} {r.aggregate:.1f}" for (mode, n), r in rounds.items())
            )
        finally:
            for app in apps.values():
                app.close()
    print()
    results = goals(rounds, library)
    for goal, value, target, met in results:
        print(f"{goal:<52} {value:6.2f}  (goal {target:g})  {'met' if met else 'NOT met'}")
    if args.json:
        atomic_write_json(
            args.json,
            {
                "model": args.model,
                "dtype": args.dtype,
                "threads": args.threads,
                "new_tokens": args.new_tokens,
                "rounds": [
                    {
                        "mode": r.mode,
                        "users": r.users,
                        "aggregate_tokens_per_s": r.aggregate,
                        "per_user_tokens_per_s": r.per_user,
                        "ttft_p50_s": r.ttft(0.5),
                        "ttft_p95_s": r.ttft(0.95),
                        "wall_s": r.wall_s,
                    }
                    for r in rounds.values()
                ],
                "goals": [{"goal": g, "value": v, "target": t, "met": m} for g, v, t, m in results],
            },
        )


if __name__ == "__main__":
    main()

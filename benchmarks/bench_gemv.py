"""Our matrix-vector kernel against an earlier version of itself: a GPT-2 token's 49 products at several row counts.

Builds ``gpt2_scratch/gemv.c`` as it is and as it was at ``--against`` (a git revision) with the flags the
library uses, then times each build on GPT-2 124M's layer shapes (every layer its own random weights, so they
stream from memory as in decoding; activations in bfloat16 for bfloat16 and int8 weights, as the model's)
at each of ``--rows``, the two builds in turns, ``--rounds`` times. Prints the machine, each build's median
milliseconds, the per-round ratio now / then (median and min-max), and whether both builds give the same bits
(they must, unless the summation order was changed on purpose). A kernel tuned on one CPU kind can be wrong
on another: run this on the machine at hand before and after a change to ``gemv.c``.

    python -m benchmarks.bench_gemv --against HEAD~1                   # bfloat16 weights, 1 to 16 rows
    python -m benchmarks.bench_gemv --against main --dtype int8 --rows 1,8 --rounds 11
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, machine_line, ratio_text
from gpt2_scratch import gemv

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}


def shapes(n_embd: int = 768, n_layer: int = 12, vocab: int = 50257) -> list[tuple[int, int]]:
    """(out, in) of every product of one token, in order: the blocks' four layers, then the head."""
    C = n_embd
    return [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * n_layer + [(vocab, C)]


def products_seconds(fn, weights: list[torch.Tensor], xs: dict, ys: list[torch.Tensor], m: int, low: bool) -> float:
    """Seconds for ``fn`` (one build's function for the weights' dtype) to compute every product at ``m`` rows."""
    threads = torch.get_num_threads()
    started = time.perf_counter()
    for w, y in zip(weights, ys):
        x = xs[w.shape[1]]
        fn(x.data_ptr(), low, w.data_ptr(), None, None, y.data_ptr(), low, m, w.shape[1], w.shape[0], threads)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the git revision whose gemv.c to compare with")
    ap.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weight format (default: bfloat16)")
    ap.add_argument("--rows", default="1,2,3,4,6,8,16", help="rows of x per product, comma-separated")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, the builds in turns (default: 7)")
    args = ap.parse_args()
    try:
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        print(f"--rows {args.rows!r}: not a comma-separated list of whole numbers", file=sys.stderr)
        return 2
    try:
        shown = subprocess.run(
            ["git", "show", f"{args.against}:gpt2_scratch/gemv.c"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError as e:  # no git here
        print(f"--against {args.against}: git could not run ({e.__class__.__name__})", file=sys.stderr)
        return 2
    if shown.returncode != 0:
        why = (shown.stderr.strip().splitlines() or ["no message"])[0]  # one line, whatever git says
        print(f"--against {args.against}: no gpt2_scratch/gemv.c there ({why})", file=sys.stderr)
        return 2

    print(machine_line())
    print(f"gemv.c now vs at {args.against}; {args.dtype} weights, GPT-2 124M's 49 products, {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        then_source = Path(tmp) / "gemv.c"
        then_source.write_text(shown.stdout)
        try:  # loaded libraries stay usable once their files are gone
            builds = {
                "then": gemv.bind(ctypes.CDLL(str(gemv.build_library(Path(tmp) / "then", then_source)))),
                "now": gemv.bind(ctypes.CDLL(str(gemv.build_library(Path(tmp) / "now")))),
            }
        except (RuntimeError, OSError) as e:
            print(f"cannot build gemv.c here: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    wdtype = DTYPES[args.dtype]
    low = wdtype != torch.float32  # bfloat16 and int8 models compute in bfloat16
    activations = torch.bfloat16 if low else torch.float32
    g = torch.Generator().manual_seed(0)
    weights = [
        (torch.randn(o, i, generator=g) * (40 if wdtype == torch.int8 else 0.02)).to(wdtype) for o, i in shapes()
    ]
    print(f"{'rows':>4} {'then ms':>10} {'now ms':>10} {'now / then':>19}  same bits")
    for m in rows:
        xs = {k: torch.randn(m, k, generator=g).to(activations) for k in {w.shape[1] for w in weights}}
        outs = {name: [torch.empty(m, w.shape[0], dtype=activations) for w in weights] for name in builds}

        def run(name: str, xs=xs, outs=outs, m=m) -> float:
            return products_seconds(builds[name][wdtype], weights, xs, outs[name], m, low)

        run("then"), run("now")  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name in builds:
                seconds[name].append(run(name))
        same = all(torch.equal(a, b) for a, b in zip(outs["then"], outs["now"]))
        print(
            f"{m:>4} {statistics.median(seconds['then']) * 1e3:>10.2f} {statistics.median(seconds['now']) * 1e3:>10.2f} "
            f"{ratio_text(seconds['now'], seconds['then']):>19}  {'yes' if same else 'NO'}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

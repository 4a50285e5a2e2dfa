"""Speed of the results browser's data layer (gpt2_scratch/demo/compare.py, browse.py) on synthetic runs.

Times ``compare`` (the index, once per selection), ``filter_records`` (search, score bound, sort:
the per-keystroke work; the goal is < 200 ms at 1,100 records x 5 runs) and its ``full=True``
table with ``csv_bytes``, on ``--runs`` runs of ``--records`` synthetic records, ``--repeats``
times (median and best printed). Figures: docs/performance.md.

    python -m benchmarks.bench_compare                      # 1,100 records x 5 runs
    python -m benchmarks.bench_compare --records 50 --runs 2 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpt2_scratch.demo.results.browse import ORDERS, csv_bytes, filter_records
from gpt2_scratch.demo.results.compare import RunResults, compare

WORDS = (
    "the a of to and in is it that for on with as was color blue red primary sky ocean planet water "
    "meters kilometers five ten quick brown fox jumps over lazy dog sentence rewrite answer because"
).split()


def _text(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


def synthetic_runs(n_records: int = 1100, n_runs: int = 5, seed: int = 0) -> list[RunResults]:
    """``n_runs`` runs evaluated on the same ``n_records`` records, with random texts and scores.

    Every 10th record of each model has no judge score (an unparsed reply); a record
    whose id is a multiple of 97 mentions "zebra" in its reference.
    """
    rng = np.random.default_rng(seed)
    records = [
        {
            "id": i,
            "instruction": _text(rng, 5, 20),
            "input": _text(rng, 0, 10),
            "reference": _text(rng, 3, 60) + (" zebra" if i % 97 == 0 else ""),
        }
        for i in range(n_records)
    ]
    runs = []
    for r in range(n_runs):
        rows = []
        for rec in records:
            row = dict(rec)
            for model in ("base", "finetuned"):
                response = _text(rng, 20, 250)
                judge = None if rng.random() < 0.1 else int(rng.integers(0, 101))
                row[model] = {
                    "response": response,
                    "rouge_l": float(rng.random()),
                    "exact_match": 0,
                    "length_tokens": len(response.split()),
                    "judge_score": judge,
                    "judge_raw": None if judge is None else f"Score: {judge}",
                    "judge_error": False,
                }
            rows.append(row)
        runs.append(RunResults(f"run-{r}", predictions=rows))
    return runs


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, best) seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1100, help="records per run")
    parser.add_argument("--runs", type=int, default=5, help="runs compared")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each step")
    args = parser.parse_args()
    runs = synthetic_runs(args.records, args.runs)
    cmp = compare(runs)
    score = f"{runs[-1].label} · finetuned · rouge_l"
    steps = {
        "compare (index build)": lambda: compare(runs),
        "filter + sort (table)": lambda: filter_records(cmp, "fox", score, 0.2, 0.9, ORDERS[1]),
        "filter + sort (full, for CSV)": lambda: filter_records(cmp, "fox", score, 0.2, 0.9, ORDERS[1], full=True),
        "CSV of every record": lambda: csv_bytes(filter_records(cmp, full=True)),
    }
    print(f"{args.records} records x {args.runs} runs, {args.repeats} repeats: {cmp.message}")
    for name, fn in steps.items():
        median, best = timed(fn, args.repeats)
        print(f"{name:32s} median {median * 1000:8.1f} ms   best {best * 1000:8.1f} ms")


if __name__ == "__main__":
    main()

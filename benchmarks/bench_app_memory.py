"""Memory of the app with both models loaded, per inference format: peak and current RSS of ``app.py``.

For each ``--dtypes``, one ``python app.py --dtype D`` process serves a run whose
base and finetuned models both have GPT-2 124M's shape (random weights, written
to a temporary run folder); one greedy request to each model loads both, then
the process's peak RSS (``VmHWM``) and current RSS (``VmRSS``) are read from
``/proc/<pid>/status`` (Linux). Ratios are against float32, measured in the same run.
``--lora R`` also serves a LoRA run (rank R adapters on the same base, B nudged so the
answers differ): the app keeps one copy of the base for both tabs. Its peak is then
compared with the full run's in each format; the two kinds take turns (full, LoRA, ...).

    python -m benchmarks.bench_app_memory                      # float32, bfloat16, int8
    python -m benchmarks.bench_app_memory --lora 8 --dtypes float32 bfloat16
    python -m benchmarks.bench_app_memory --preset tiny        # smoke
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from benchmarks.common import ROOT, rss_mb
from gpt2_scratch import lora
from gpt2_scratch.checkpoint import AdapterInfo, save_adapter_checkpoint, save_checkpoint
from gpt2_scratch.inference import load_model
from gpt2_scratch.runs import RunInfo, RunPaths


def make_run(root: Path, preset: str, rank: int = 0) -> RunPaths:
    """A finished run whose base is ``random:<preset>`` and whose finetuned checkpoint has the same shape
    (``rank`` > 0: a LoRA adapter of that rank on it instead)."""
    run = RunPaths(root)
    model, _ = load_model(f"random:{preset}")
    meta = {"base_model": f"random:{preset}"}
    if rank:
        config, sha = lora.LoRAConfig(rank=rank), lora.base_sha256(model)
        lora.inject(model, config, torch.Generator().manual_seed(0))
        with torch.no_grad():
            for _, layer in lora.lora_layers(model):
                layer.lora_B.normal_(std=0.02)
        info = AdapterInfo(config, f"random:{preset}", sha)
        state = lora.adapter_state_dict(model)
        save_adapter_checkpoint(run.final, state, model.config, info, prompt_style="alpaca", metadata=meta)
    else:
        save_checkpoint(run.final, model, prompt_style="alpaca", metadata=meta)
    run.write_info(RunInfo(name=root.name, base_model=f"random:{preset}", prompt_style="alpaca", status="finished"))
    return run


def measure(run: RunPaths, dtype: str, threads: int) -> tuple[float, float]:
    """Start the app in ``dtype``, ask each model once, return its (peak, current) RSS in MB."""
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("SPACE_ID", None)
    command = [sys.executable, "app.py", "--run", str(run.root), "--port", str(port), "--dtype", dtype]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"app.py --dtype {dtype} did not start") from None
                time.sleep(0.5)
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        client.predict("Once upon a time", 8, 0.0, 0, 1.0, 0, api_name="/generate_base")
        client.predict("Name a color.", "", 8, 0.0, 0, 1.0, 0, api_name="/generate_finetuned")
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2", help="model shape of both models (default: gpt2, 124M)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", type=int, default=0, metavar="R", help="also a LoRA run of rank R (0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        run = make_run(Path(d) / "run", args.preset)
        low = make_run(Path(d) / "lora", args.preset, args.lora) if args.lora else None
        results, lora_results = {}, {}
        for dtype in args.dtypes:
            results[dtype] = measure(run, dtype, args.threads)
            if low is not None:
                lora_results[dtype] = measure(low, dtype, args.threads)
    if lora_results:
        print(f"app.py, a LoRA run (rank {args.lora}, one copy of the base) against a full run:")
        print(f"{'dtype':<10} {'full peak MB':>12} {'LoRA peak MB':>12} {'LoRA RSS MB':>12} {'LoRA / full':>12}")
        for dtype, (peak, now) in lora_results.items():
            print(
                f"{dtype:<10} {results[dtype][0]:>12.0f} {peak:>12.0f} {now:>12.0f} {peak / results[dtype][0]:>11.2f}x"
            )
    base = results.get("float32")
    print(f"app.py with both models loaded ({args.preset} shape, random weights), one request to each:")
    print(f"{'dtype':<10} {'peak RSS MB':>12} {'RSS MB':>8} {'peak vs float32':>16}")
    for dtype, (peak, now) in results.items():
        ratio = f"{peak / base[0]:.2f}x" if base else "-"
        print(f"{dtype:<10} {peak:>12.0f} {now:>8.0f} {ratio:>16}")


if __name__ == "__main__":
    main()

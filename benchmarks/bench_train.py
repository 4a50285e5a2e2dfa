"""Training speed: ours (the finetune.py step) vs transformers trained the usual way, side by side.

Optimizer steps (forward, loss, backward, AdamW) of GPT-2 124M (the same random weights) on the
real training split, on CPU with ``--threads`` threads, in non-padding tokens/s. Four sides take
turns step by step: ours end to end (length-grouped batches, ``data.batches.collate``, fused AdamW,
the calls ``train.loop.Trainer`` makes), transformers the usual way (a padding ``DataLoader``,
``labels=``, ``torch.optim.AdamW``), ours on transformers' identical batches, and transformers
with our optimizer. Method and figures: docs/performance.md.

With ``--precision``: ours in fp32 against ours in bf16 (``finetune.py --precision bf16``: autocast
products, float32 weights, AdamW state and loss), the same ``StepRunner`` steps from the same start
on the same batches, interleaved step by step (A B A B): tokens/s and s/step per side (median,
min-max), the per-step ratio, and the validation loss of both after ``--steps`` steps (the goal: bf16
>= 1.4x fp32 on a native-bfloat16 CPU, validation loss after 50 steps within 1% of fp32's).

    python -m benchmarks.bench_train [--threads 2] [--steps 6] [--batch-size 8]
    python -m benchmarks.bench_train --precision [--steps 50] [--base random:gpt2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from benchmarks.common import INSTRUCTION_DATA, interleaved, machine_line, ratio_text, spread, twin_models
from gpt2_scratch.data.batches import LengthGroupedBatchSampler, collate, encode_record
from gpt2_scratch.data.records import load_records, split_records
from gpt2_scratch.inference import load_model
from gpt2_scratch.loss import IGNORE_INDEX, response_loss
from gpt2_scratch.tokenizer import EOS_ID
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.distributed import AUTOCAST_DTYPES, DistContext, bf16_speedup, resolve_precision
from gpt2_scratch.train.step import StepRunner, chunks, configure_optimizer

DATASET = str(INSTRUCTION_DATA)


def hf_collate(batch):
    """The usual Hugging Face recipe: ids + EOS, padded to the longest with EOS, padding labels -100."""
    width = max(len(ex.ids) for ex in batch) + 1
    ids = torch.full((len(batch), width), EOS_ID, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(batch):
        n = len(ex.ids) + 1
        ids[i, : n - 1] = torch.tensor(ex.ids)
        labels[i, :n] = ids[i, :n]
    tokens = sum(len(ex.ids) for ex in batch)
    return ids, labels, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="timed steps of each (default: 6; 50 with --precision)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dataset", default=DATASET)
    ap.add_argument("--precision", action="store_true", help="ours in fp32 against ours in bf16 (see above)")
    ap.add_argument("--base", default="random:gpt2", help="--precision: the model both sides start from")
    ap.add_argument("--eval-batches", type=int, default=5, help="--precision: validation batches of the loss")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.precision:
        args.steps = 50 if args.steps is None else args.steps
        compare_precisions(args)
        return
    args.steps = 6 if args.steps is None else args.steps

    from transformers import GPT2LMHeadModel

    train_examples = [encode_record(r, "alpaca") for r in split_records(load_records(args.dataset)).train]
    n = args.warmup + args.steps

    # Ours: length-grouped batches, as train.loop.Trainer builds them.
    sampler = LengthGroupedBatchSampler([len(e.ids) for e in train_examples], args.batch_size, seed=123, drop_last=True)
    grouped = [[train_examples[i] for i in b] for b in list(sampler)[:n]]
    # transformers: a shuffled DataLoader padding each batch to its longest example.
    loader = torch.utils.data.DataLoader(
        train_examples,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=hf_collate,
        generator=torch.Generator().manual_seed(123),
    )
    hf_batches = [b for _, b in zip(range(n), loader)]

    config = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # 124M; no dropout, like ours
    hf, ours = twin_models(**config)
    hf.train()
    assert hf.config._attn_implementation == "sdpa"
    ours.train()
    # A second copy of ours for the identical-batch run, so each run has its own optimizer trajectory.
    ours_ident = type(ours)(ours.config)
    ours_ident.load_state_dict(ours.state_dict())
    ours_ident.train()
    cpu = torch.device("cpu")
    opt_ours = configure_optimizer(ours, 5e-5, 0.1, cpu)
    opt_ident = configure_optimizer(ours_ident, 5e-5, 0.1, cpu)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.1)
    hf_fused = GPT2LMHeadModel._from_config(hf.config, attn_implementation="sdpa").train()
    hf_fused.load_state_dict(hf.state_dict())
    opt_hf_fused = configure_optimizer(hf_fused, 5e-5, 0.1, cpu)

    def step_ours(model, opt, inputs, targets):
        loss = response_loss(model, inputs, targets)  # as the Trainer: the head at target positions only
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_hf(model, opt, ids, labels):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    names = ("ours", "hf", "ours_ident", "hf_fused")
    results = {name: [0.0, 0, 0, 0] for name in names}  # seconds, tokens, padded tokens, steps

    def timed(name, fn, tokens, padded, i):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if i >= args.warmup:
            r = results[name]
            r[0] += dt
            r[1] += tokens
            r[2] += padded
            r[3] += 1

    for i in range(n):
        batch = grouped[i]
        x, y = collate(batch, max_length=1024, mask_prompt=False)  # every token, as transformers' labels
        # Each lambda runs at once, inside timed(): binding the loop's tensors as defaults only silences B023.
        timed("ours", lambda x=x, y=y: step_ours(ours, opt_ours, x, y), sum(len(e.ids) for e in batch), x.numel(), i)
        ids, labels, tokens = hf_batches[i]
        timed("hf", lambda ids=ids, labels=labels: step_hf(hf, opt_hf, ids, labels), tokens, ids.numel(), i)
        timed(
            "ours_ident",
            lambda ids=ids, labels=labels: step_ours(ours_ident, opt_ident, ids[:, :-1], labels[:, 1:]),
            tokens,
            ids.numel(),
            i,
        )
        timed(
            "hf_fused",
            lambda ids=ids, labels=labels: step_hf(hf_fused, opt_hf_fused, ids, labels),
            tokens,
            ids.numel(),
            i,
        )
        print(f"step {i + 1}/{n} done", file=sys.stderr, flush=True)

    tps = {k: v[1] / v[0] for k, v in results.items()}
    print(
        f"GPT-2 124M shape, random weights, CPU, {args.threads} threads, batch {args.batch_size}, "
        f"{args.steps} timed steps each after {args.warmup} warmup"
    )
    labels_ = {
        "ours": "ours, length-grouped batches (end to end)",
        "hf": "transformers, shuffled padded batches",
        "ours_ident": "ours, transformers' batches (identical)",
        "hf_fused": "transformers + our fused AdamW, same batches",
    }
    for k, (secs, tokens, padded, _steps) in results.items():
        print(
            f"  {labels_[k]:44s} {tps[k]:8.1f} tokens/s  ({tokens} tokens in {secs:.1f} s, "
            f"padding {1 - tokens / padded:.0%} of the batch positions)"
        )
    print(f"ratio end to end (ours / transformers):           {tps['ours'] / tps['hf']:.2f}x")
    print(f"ratio on identical batches (ours / transformers): {tps['ours_ident'] / tps['hf']:.2f}x")
    print(f"ratio of the models alone, both with fused AdamW:  {tps['ours_ident'] / tps['hf_fused']:.2f}x")


def compare_precisions(args) -> None:
    """fp32 and bf16 steps of ours from the same weights on the same batches, interleaved; then both val losses."""
    cpu = torch.device("cpu")
    split = split_records(load_records(args.dataset))
    train_examples = [encode_record(r, "alpaca") for r in split.train]
    val_examples = [encode_record(r, "alpaca") for r in split.val]
    val_batches = chunks(val_examples, args.batch_size)[: args.eval_batches]
    sampler = LengthGroupedBatchSampler([len(e.ids) for e in train_examples], args.batch_size, seed=123, drop_last=True)
    order = list(sampler)
    batches = [[train_examples[i] for i in order[k % len(order)]] for k in range(args.warmup + args.steps)]

    torch.manual_seed(0)
    start, _ = load_model(args.base)
    config = TrainConfig(base=args.base, batch_size=args.batch_size)  # finetune.py's defaults: lr 5e-5, masked prompts
    max_length = min(config.max_length, start.config.block_size)
    sides = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(start).train()
        optimizer = configure_optimizer(model, config.lr, config.weight_decay, cpu)
        runner = StepRunner(
            model, optimizer, config, DistContext(), cpu, max_length=max_length, amp_dtype=AUTOCAST_DTYPES[precision]
        )
        sides[precision] = {"runner": runner, "rng": torch.random.get_rng_state(), "next": 0, "secs": []}
    del start
    print(machine_line(args.threads))
    width = sides["fp32"]["runner"].model.config.n_embd
    chosen, _ = resolve_precision("auto", cpu, width)
    print(
        f"{args.base} ({width} wide), batch {args.batch_size}, {args.steps} timed steps each after {args.warmup} "
        f"warm-up; bf16 products alone {bf16_speedup(width):.2f}x fp32 (width {width}); --precision auto here: {chosen}"
    )

    def step(precision: str) -> float:
        """The side's next step on its own RNG stream (dropout); returns its tokens/s."""
        side = sides[precision]
        torch.random.set_rng_state(side["rng"])
        batch = batches[side["next"]]
        t = time.perf_counter()
        _, n_tokens, _ = side["runner"].step(batch, config.lr)
        secs = time.perf_counter() - t
        side["rng"], side["next"] = torch.random.get_rng_state(), side["next"] + 1
        side["secs"].append(secs)
        print(f"{precision} step {side['next']}: {secs:.2f} s", file=sys.stderr, flush=True)
        return n_tokens / secs

    start_loss = sides["fp32"]["runner"].eval_loss(val_batches)
    interleaved({p: lambda p=p: step(p) for p in sides}, args.warmup)  # untimed
    speed = interleaved({p: lambda p=p: step(p) for p in sides}, args.steps)
    val = {p: side["runner"].eval_loss(val_batches) for p, side in sides.items()}  # each as finetune.py reports it
    bf16_model = sides["bf16"]["runner"].model  # and the bf16-trained weights evaluated in fp32
    in_fp32 = StepRunner(bf16_model, None, config, DistContext(), cpu, max_length=max_length, amp_dtype=None)
    bf16_in_fp32 = in_fp32.eval_loss(val_batches)
    for p, side in sides.items():
        secs = side["secs"][args.warmup :]
        print(
            f"  {p}: {spread(speed[p])} tokens/s, {statistics.median(secs):.2f} s/step "
            f"({min(secs):.2f}-{max(secs):.2f}); val loss {start_loss:.4f} -> {val[p]:.4f} after {args.steps} steps"
        )
    print(f"bf16 / fp32 tokens/s, per step: {ratio_text(speed['bf16'], speed['fp32'])} (goal >= 1.4x natively)")
    print(
        f"val loss, bf16 vs fp32: {100 * (val['bf16'] / val['fp32'] - 1):+.2f}% (goal within 1% after 50 steps); "
        f"the bf16-trained weights evaluated in fp32: {bf16_in_fp32:.4f} ({100 * (bf16_in_fp32 / val['fp32'] - 1):+.2f}%)"
    )


if __name__ == "__main__":
    main()

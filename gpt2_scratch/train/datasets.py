"""What a run trains on, by method: instruction records (sft) or preference pairs (dpo), encoded.

    data = load_train_data(config, dist_ctx, run_info)   # run_info: the run.json of a resumed run, or None
    data.examples        # EncodedExample (sft) or EncodedPair (dpo) per training record, in split order
    data.eval_batches    # {"train": [...], "val": [...]}: the first eval_batches batches of each split

Both methods split the same way (``split_records``: 85/10/5 of all records), so a DPO run
on the book's preference data holds out the same test records as the SFT run before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt2_scratch.data.batches import encode_record
from gpt2_scratch.data.preferences import encode_pair, load_preferences, split_preferences
from gpt2_scratch.data.records import Split, load_records, source_sha256, split_records
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.runs import RunInfo
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.distributed import DistContext
from gpt2_scratch.train.step import chunks


@dataclass
class TrainData:
    """The encoded training examples and evaluation batches, the split records, run.json's "dataset"."""

    split: Split  # train, test and val as instruction Records (DPO: with their reference answer)
    info: dict[str, Any]  # run.json's "dataset": source, sha256, sizes
    examples: list  # EncodedExample (sft) or EncodedPair (dpo), one per training record
    lengths: list[int]  # tokens per example (a pair: its longer side), for the length-grouped sampler
    eval_batches: dict[str, list[list]]
    note: str | None = None  # what was skipped, for the log (dpo)


def load_train_data(cfg: TrainConfig, dist_ctx: DistContext, run_info: RunInfo | None) -> TrainData:
    """The run's data; ``run_info`` (a resumed run's) must name the same file contents."""
    dpo = cfg.method == "dpo"
    with dist_ctx.main_first():  # a URL is downloaded once, by rank 0
        records = (load_preferences if dpo else load_records)(cfg.dataset)
        sha256 = source_sha256(cfg.dataset)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if run_info is not None and run_info.dataset.get("sha256") != sha256:
        raise ValueError(f"the dataset {cfg.dataset} has changed since the run started (sha256 differs); cannot resume")
    style = get_prompt_style(cfg.prompt_style)
    note, skipped = None, None
    if dpo:
        pairs = split_preferences(records, shuffle=cfg.shuffle_split, seed=cfg.seed)
        train = [encode_pair(r, style) for r in pairs.train]
        val = [encode_pair(r, style) for r in pairs.val]
        split = Split([r.as_record() for r in pairs.train], pairs.test, [r.as_record() for r in pairs.val])
        note, skipped = pairs.skipped_note(), pairs.skipped
        lengths = [len(p) for p in train]
    else:
        split = split_records(records, shuffle=cfg.shuffle_split, seed=cfg.seed)
        train = [encode_record(r, style) for r in split.train]
        val = [encode_record(r, style) for r in split.val]
        lengths = [len(e.ids) for e in train]
    info = {
        "source": cfg.dataset,
        "sha256": sha256,
        "num_records": len(records),
        "split": {**split.sizes(), "shuffle": cfg.shuffle_split, "seed": cfg.seed},
    }
    if skipped is not None:
        info["split"]["skipped"] = skipped
    # Fixed evaluation subsets: the first eval_batches batches of each split, in file order.
    n = cfg.eval_batches * cfg.batch_size
    eval_batches = {"train": chunks(train[:n], cfg.batch_size), "val": chunks(val[:n], cfg.batch_size)}
    return TrainData(split, info, train, lengths, eval_batches, note)

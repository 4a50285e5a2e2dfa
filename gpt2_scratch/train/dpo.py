"""DPO (Rafailov et al. 2023) after instruction finetuning: the loss, response log-probs, the reference, the step.

    loss = -log sigmoid(beta * ((log pi(c) - log pi(r)) - (log pi_ref(c) - log pi_ref(r))))    # dpo_loss

``log pi(y)`` sums the log-probabilities of the response tokens and the EOS (``dpo_logps="sum"``, as the
paper and TRL; ``"mean"`` averages them, as the LLMs-from-scratch book); prompt and padding are masked as
in SFT. The reference is the base model, run once before the first step over every training pair and the
validation subset (``compute_reference``), saved as ``<run>/reference_logps.safetensors`` and read back on
resume, so a step runs the policy only and no second model is held (TRL's ``precompute_ref_log_probs``).
Logged rewards include beta: ``beta * (log pi - log pi_ref)`` of each side; the margin is their
difference, the accuracy the share of pairs whose margin is positive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import read_safetensors
from gpt2_scratch.data.batches import collate
from gpt2_scratch.data.preferences import EncodedPair
from gpt2_scratch.files import atomic_write
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.loss import IGNORE_INDEX
from gpt2_scratch.model import GPT
from gpt2_scratch.train.log import DPO_METRICS
from gpt2_scratch.train.step import StepRunner, chunks, input_tokens

# The per-pair quantities a step and an evaluation report, in log order ("loss" first).
METRICS = ("loss", *DPO_METRICS)
REFERENCE_FORMAT = "gpt2_scratch.train.dpo.reference/1"


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """Log-probability ``(B,)`` of each row's targets ``(B, T)``, summed (or averaged) over the scored ones.

    ``logits`` are ``(N, V)`` at the scored positions only (``targets != IGNORE_INDEX``, row-major:
    ``GPT.forward(logits_at=...)``), or ``(B, T, V)`` at every position. Computed in float32.
    """
    scored = targets != IGNORE_INDEX
    if logits.dim() == 3:
        logits = logits[scored]
    token_logps = -F.cross_entropy(logits.float(), targets[scored], reduction="none")  # (N,)
    # Scattered back to (B, T) and summed per row: deterministic, unlike index_add_ on CUDA.
    total = torch.zeros(targets.shape, dtype=token_logps.dtype, device=targets.device)
    total = total.masked_scatter(scored, token_logps).sum(-1)
    if average:
        total = total / scored.sum(-1).clamp(min=1)
    return total


def collate_pairs(pairs: Sequence[EncodedPair], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(2B, T)``: the chosen rows, then the rejected rows; only the responses are targets."""
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(sides, max_length=max_length, mask_prompt=True)


def pair_logps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, average: bool, autocast=contextlib.nullcontext
) -> torch.Tensor:
    """``(2, B)``: log pi of the chosen and the rejected side of ``collate_pairs``' rows, one forward pass."""
    with autocast():
        logits = model(x, logits_at=y != IGNORE_INDEX)  # (N, V): the head runs on response tokens only
    return sequence_logps(logits, y, average=average).view(2, -1)


@dataclass
class DPOStats:
    """Per pair ``(B,)``: the loss and the rewards ``beta * (log pi - log pi_ref)`` of each side."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    def sums(self) -> torch.Tensor:
        """The sums over the pairs of ``METRICS`` (detached, float64), to average over a whole batch."""
        m = self.margins.detach()
        values = [self.losses.detach().sum(), (m > 0).sum(), m.sum()]
        values += [self.chosen_rewards.detach().sum(), self.rejected_rewards.detach().sum()]
        return torch.stack([v.double() for v in values])


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOStats:
    """The sigmoid DPO loss of each pair from the four log-probabilities ``(B,)``; zero margins give log 2."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return DPOStats(-F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards)


def metrics_of(sums: torch.Tensor, n: int) -> dict[str, float]:
    """``METRICS`` averaged over ``n`` pairs from ``DPOStats.sums`` (summed over batches and processes)."""
    return {k: float(v) / n if n else float("nan") for k, v in zip(METRICS, sums.tolist())}


# --------------------------------------------------------------------------- the reference, computed once


class ReferenceLogps:
    """The reference's (chosen, rejected) log-probabilities of every pair, by record id: one forward pass each."""

    def __init__(self, ids: Sequence[int], logps: torch.Tensor, fingerprint: str):
        self.ids, self.logps, self.fingerprint = list(ids), logps, fingerprint  # logps: (N, 2) float32
        self.row = {rid: r for r, rid in enumerate(self.ids)}

    def lookup(self, pairs: Sequence[EncodedPair], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(2, B)``, like ``pair_logps``, for ``pairs`` (``x``/``y`` are not needed: they were computed before)."""
        rows = self.logps[[self.row[p.id] for p in pairs]]
        return rows.T.to(x.device)

    def save(self, path) -> None:
        from safetensors.torch import save_file

        tensors = {"ids": torch.tensor(self.ids, dtype=torch.long), "logps": self.logps.contiguous()}
        meta = {"format": REFERENCE_FORMAT, "fingerprint": self.fingerprint}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path, fingerprint: str) -> "ReferenceLogps | None":
        """The saved table when it was computed for ``fingerprint``; else None (compute it again)."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != REFERENCE_FORMAT or meta.get("fingerprint") != fingerprint:
            return None
        t = read_safetensors(path)
        return cls(t["ids"].tolist(), t["logps"], fingerprint)


class LiveReference:
    """The reference run on every step instead (what precomputing saves; for tests and benchmarks)."""

    def __init__(self, model: GPT, average: bool, autocast=contextlib.nullcontext):
        self.model, self.average, self.autocast = model.eval(), average, autocast

    @torch.inference_mode()
    def lookup(self, pairs: Sequence[EncodedPair], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pair_logps(self.model, x, y, self.average, self.autocast)


def reference_fingerprint(pairs: Sequence[EncodedPair], settings: dict) -> str:
    """sha256 of the pairs' token ids and of what their log-probabilities depend on (base, max length, ...)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([p.id, p.chosen.ids, p.chosen.prompt_len, p.rejected.ids]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the step


class DPOStepRunner(StepRunner):
    """``StepRunner`` for ``method="dpo"``: batches are ``EncodedPair``s, the loss ``dpo_loss``, the metrics ``METRICS``."""

    shown = {"reward_accuracy": "acc", "reward_margin": "margin"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference: ReferenceLogps | LiveReference | None = None  # set by prepare (or by a benchmark)

    @property
    def average(self) -> bool:
        return self.config.dpo_logps == "mean"

    @property
    def micro_size(self) -> int:
        return max(self.config.batch_size // self.config.grad_accum, 1)

    def _tensors(self, pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = collate_pairs(pairs, self.max_length)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def prepare(self, paths, data, progress, say) -> None:
        """The reference log-probabilities: read from the run folder, or computed once (by rank 0) and saved."""
        # In the evaluation's micro-batches, so that at step 0 the evaluation recomputes them bit for bit.
        groups = [data.examples, [p for batch in data.eval_batches["val"] for p in batch]]
        settings = {"base": self.config.base, "max_length": self.max_length, "dpo_logps": self.config.dpo_logps}
        settings.update(amp=str(self.amp_dtype), micro=self.micro_size)
        fingerprint = reference_fingerprint([p for g in groups for p in g], settings)
        with self.dist_ctx.main_first():  # rank 0 computes and saves; the others then read its file
            reference = ReferenceLogps.load(paths.reference_logps, fingerprint)
            if reference is None:
                say(f"reference log-probabilities of {sum(map(len, groups))} pairs: one pass of {self.config.base}")
                with self.reference_model(trained=progress.step > 0) as model:
                    reference = self.compute_reference(model, groups, fingerprint)
                if self.dist_ctx.is_main:
                    reference.save(paths.reference_logps)
        self.reference = reference

    @contextlib.contextmanager
    def reference_model(self, trained: bool) -> Iterator[GPT]:
        """The model whose log-probabilities are the reference: the policy as it was before its first step.

        With LoRA adapters that is the policy itself with its adapters off, trained or not: no second
        model is ever loaded. A full finetune that has trained loads its base again.
        """
        if lora.has_adapters(self.model):
            with lora.adapters_disabled(self.model):
                yield self.model
            return
        if not trained:  # full weights before step 1: the policy is the base model itself
            yield self.model
            return
        # Resumed, but the saved table is gone (deleted by hand): the base model again, for this one pass.
        model, _ = load_gpt(self.config.base, self.device)
        yield model

    @torch.inference_mode()
    def compute_reference(self, model: GPT, groups: Sequence[Sequence[EncodedPair]], fingerprint: str):
        """``ReferenceLogps`` of every pair of ``groups``, in micro-batches of each group's order."""
        was_training = model.training
        model.eval()
        batches = [c for g in groups for c in chunks(list(g), self.micro_size)]
        rows, ids = [], []
        for chunk in tqdm(batches, desc="reference", unit="batch", disable=not self.dist_ctx.is_main):
            x, y = self._tensors(chunk)
            rows.append(pair_logps(model, x, y, self.average, self._autocast).T.float().cpu())
            ids += [p.id for p in chunk]
        model.train(was_training)
        return ReferenceLogps(ids, torch.cat(rows), fingerprint)

    def step(self, batch: Sequence[EncodedPair], lr: float) -> tuple[float, int, dict[str, float]]:
        """One optimizer step on the global ``batch`` of pairs: the mean DPO loss over its pairs, and ``METRICS``."""
        ctx, cfg = self.dist_ctx, self.config
        micro = self.my_micro_batches(batch)
        sides = [[p.chosen for p in m] + [p.rejected for p in m] for m in micro]
        mine = torch.tensor(sum(input_tokens(s, self.max_length) for s in sides), device=self.device)
        n_tokens = int(ctx.all_reduce(mine))
        scale = ctx.world_size / len(batch)  # the mean over the global batch (DDP averages over processes)

        def loss_of(pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = self._tensors(pairs)
            ref = self.reference.lookup(pairs, x, y)
            policy = pair_logps(self.train_model, x, y, self.average, self._autocast)
            stats = dpo_loss(policy[0], policy[1], ref[0], ref[1], cfg.beta)
            return stats.losses.sum() * scale, stats.sums()

        metrics = metrics_of(ctx.all_reduce(self.accumulate(micro, lr, loss_of)), len(batch))
        return metrics.pop("loss"), n_tokens, metrics

    @torch.inference_mode()
    def _eval_split(self, batches: list[list[EncodedPair]]) -> dict[str, float]:
        ctx = self.dist_ctx
        sums = torch.zeros(len(METRICS), dtype=torch.float64, device=self.device)
        for b, batch in enumerate(batches):
            if b % ctx.world_size != ctx.rank:
                continue
            for chunk in chunks(batch, self.micro_size):
                x, y = self._tensors(chunk)
                policy = pair_logps(self.model, x, y, self.average, self._autocast)
                ref = self.reference.lookup(chunk, x, y)
                sums += dpo_loss(policy[0], policy[1], ref[0], ref[1], self.config.beta).sums()
        return metrics_of(ctx.all_reduce(sums), sum(map(len, batches)))

    def eval_metrics(self, batches: dict[str, list[list]]) -> dict[str, float]:
        """DPO loss of the evaluation batches as ``train_loss``/``val_loss``, then ``val_*`` and ``train_*`` rewards."""
        self.model.eval()
        train, val = self._eval_split(batches["train"]), self._eval_split(batches["val"])
        self.model.train()
        out = {"train_loss": train["loss"], "val_loss": val["loss"]}
        out.update({f"val_{k}": val[k] for k in METRICS[1:]})
        out.update({f"train_{k}": train[k] for k in METRICS[1:]})
        return out

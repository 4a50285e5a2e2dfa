"""Instruction finetuning (and DPO after it): the training loop behind ``finetune.py``.

    from gpt2_scratch.train.config import TrainConfig
    from gpt2_scratch.train.loop import train
    paths = train(TrainConfig(base="gpt2", epochs=2))   # writes runs/<name>/ (see runs.py)

Its helpers live beside it: ``config`` (the options), ``step`` (AdamW, schedule, one step),
``state`` (resume state), ``log`` (metrics.jsonl, loss.png), ``run_writer`` (the run folder),
``distributed``; ``--method dpo`` is a switch, not a second loop: ``datasets`` gives it
preference pairs, ``dpo.DPOStepRunner`` its step, evaluation and reference. Invariant: a
resumed run (``resume=<run folder>``) ends with the weights of an uninterrupted one (on CPU).
``lora_rank`` > 0 trains LoRA adapters on a frozen base (only they are optimized, reduced across
processes and saved). Defaults, resume and several GPUs: docs/design.md.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from gpt2_scratch import lora
from gpt2_scratch.data.batches import LengthGroupedBatchSampler
from gpt2_scratch.data.records import Record, resolve_source
from gpt2_scratch.files import Locked
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.hub import absolute_source
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.tokenizer import decode, encode
from gpt2_scratch.train.config import TrainConfig, resume_config
from gpt2_scratch.train.datasets import load_train_data
from gpt2_scratch.train.distributed import (
    AUTOCAST_DTYPES,
    DistContext,
    check_precision,
    init_distributed,
    resolve_precision,
)
from gpt2_scratch.train.dpo import DPOStepRunner
from gpt2_scratch.train.log import MetricsLog, plot_losses
from gpt2_scratch.train.run_writer import (
    BestWeights,
    TrainingInterrupted,
    check_out_dir,
    clear_outputs,
    create_run_folder,
    mark_interrupted,
    remove_leftovers,
    save_model,
    taken_message,
    write_run_files,
)
from gpt2_scratch.train.state import Progress, load_train_state, restore_rng, rng_states, save_train_state
from gpt2_scratch.train.step import StepRunner, attach_adapters, configure_optimizer, lr_at

NUM_BASELINE_RECORDS = 3  # test instructions answered by the base model before training
_clock = time.monotonic  # of --save-every-minutes (a test sets the time)


class Trainer:
    """One finetuning run. Use ``train(config)``; the pieces are methods so that each stays short.

    ``__init__`` loads the data and the model and sets every attribute;
    ``run_training`` creates (or restores) the run folder and trains. Where the
    run stands is ``progress``: exactly what the resume state saves.
    """

    def __init__(self, config: TrainConfig, dist_ctx: DistContext, device: torch.device, held: ExitStack | None = None):
        self.dist_ctx, self.device = dist_ctx, device
        # The run folder's lock (rank 0): ``train`` releases it when it returns.
        self.held = held if held is not None else ExitStack()
        self.is_main = dist_ctx.is_main  # rank 0 logs, samples and writes the files
        self.run_info: RunInfo | None = None  # run.json
        self.paths: RunPaths | None = None  # a new run's folder is created by run_training
        self.restoring = False  # resuming from a saved state (else the run starts at step 0)
        if config.resume is not None:
            if Path(config.resume).is_dir():  # before anything is read: another process may be training it
                self._lock(RunPaths(Path(config.resume)))
            config, self.run_info = resume_config(config)
            self.paths = RunPaths(Path(config.resume))
            with dist_ctx.main_first():
                if self.is_main:
                    self._remove_leftovers()
            self.restoring = (self.paths.train_state / "state.json").is_file()
        else:  # run.json stores the dataset and a local base so that they resolve from anywhere
            config = dataclasses.replace(
                config, dataset=resolve_source(config.dataset), base=absolute_source(config.base)
            )
            check_out_dir(config.out_dir)  # now, not after loading a model
            if config.name is not None and (Path(config.out_dir) / config.name).exists():
                raise ValueError(taken_message(Path(config.out_dir) / config.name))  # now, not after loading a model
        self.config = config
        check_precision(config.precision, device)  # a bad --precision fails before any loading
        torch.manual_seed(config.seed)
        self.data = load_train_data(config, dist_ctx, self.run_info)  # sft: records; dpo: preference pairs
        self.split, self.dataset_info, self.train_examples = self.data.split, self.data.info, self.data.examples
        self.eval_batches = self.data.eval_batches
        self.model, max_length = self._load_model()
        amp_dtype = self._resolve_precision()
        self.optimizer = configure_optimizer(self.model, config.lr, config.weight_decay, device)
        runner = DPOStepRunner if config.method == "dpo" else StepRunner  # the method switch
        self.steps = runner(
            self.model, self.optimizer, config, dist_ctx, device, max_length=max_length, amp_dtype=amp_dtype
        )
        self._check_batch_size()
        self.sampler = LengthGroupedBatchSampler(
            self.data.lengths,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            group=config.group_by_length,
            drop_last=True,  # drop_last as the reference's train loader
        )
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = min(config.epochs * self.steps_per_epoch, config.max_steps or math.inf)
        self.progress = Progress()
        self._last_save = 0.0  # when the last resume state was saved (or the steps started): --save-every-minutes
        self.best = BestWeights(adapter=self.adapter)  # rank 0 keeps progress.best_step's weights for best/

    @property
    def log(self) -> MetricsLog:
        return MetricsLog(self.paths.metrics)

    # -- setup -------------------------------------------------------------------------------

    def _load_model(self) -> tuple[GPT, int]:
        """The base model in training mode, and the example length it allows."""
        cfg = self.config
        with self.dist_ctx.main_first():  # a Hub download happens once, by rank 0
            model, info = load_gpt(cfg.base, self.device)
        style = info.prompt_style if info is not None else None
        if cfg.method == "dpo" and style not in (None, cfg.prompt_style):
            raise ValueError(f"--base {cfg.base} was finetuned with --prompt-style {style}; pass the same for DPO")
        self.adapter = attach_adapters(model, cfg)  # a LoRA run's adapters, recorded by final/ and best/
        if self.adapter is not None:
            n, total = lora.trainable_parameters(model), sum(p.numel() for p in model.parameters())
            self._say(f"LoRA rank {cfg.lora_rank}: {n:,} trainable parameters of {total:,} ({100 * n / total:.2f}%)")
        max_length = min(cfg.max_length, model.config.block_size)
        if max_length < cfg.max_length:
            self._say(f"note: max length {cfg.max_length} capped at the model's context length {max_length}")
        return model.train(), max_length

    def _resolve_precision(self) -> torch.dtype | None:
        """fp32 or bf16 (rank 0's choice, which run.json records: a resume keeps it), and its autocast dtype."""
        precision, note = self.dist_ctx.broadcast(
            resolve_precision(self.config.precision, self.device, self.model.config.n_embd)
        )
        if note:
            self._say(note)
        self.config = dataclasses.replace(self.config, precision=precision)
        return AUTOCAST_DTYPES[precision]

    def _check_batch_size(self) -> None:
        cfg, world_size = self.config, self.dist_ctx.world_size
        if len(self.train_examples) < cfg.batch_size:
            raise ValueError(
                f"the training split has {len(self.train_examples)} records, fewer than --batch-size {cfg.batch_size}"
            )
        if cfg.batch_size % (world_size * cfg.grad_accum):
            raise ValueError(
                f"--batch-size ({cfg.batch_size}) must be divisible by the number of processes ({world_size}) "
                f"times --grad-accum ({cfg.grad_accum})"
            )

    def _start(self) -> None:
        """Step 0: create the run folder (or clear one that starts over), write its first files, the baseline."""
        if self.paths is None:
            folder, error = self.dist_ctx.broadcast(self._create_folder() if self.is_main else None)
            if error:
                raise ValueError(error)
            self.config = dataclasses.replace(self.config, name=folder.name)
            self.paths = RunPaths(folder)
            self._lock(self.paths)
        if self.run_info is None:
            self.run_info = RunInfo(
                name=self.config.name,
                base_model=self.config.base,
                prompt_style=self.config.prompt_style,
                dataset=self.dataset_info,
                training=self.config.to_dict(),
                total_steps=self.total_steps,
            )
        else:  # --resume of a run stopped before its first saved state
            self._say(f"note: {self.paths.root} has no saved state yet; starting it over from step 0")
            if self.is_main:
                clear_outputs(self.paths)
            self.run_info = dataclasses.replace(
                self.run_info, status="running", saved_step=None, total_steps=self.total_steps
            )
        if self.is_main:
            write_run_files(self.paths, self.run_info, self.split)
            if self.data.note:
                self._say(self.data.note)
            self._baseline()

    def _lock(self, paths: RunPaths) -> None:
        """Rank 0 holds ``paths``' lock until ``train`` returns; held by another process: every rank raises."""
        error = None
        if self.is_main:
            try:
                self.held.enter_context(paths.lock("finetune.py"))
            except (Locked, OSError) as e:
                error = str(e)
        error = self.dist_ctx.broadcast(error)
        if error:
            raise ValueError(error)

    def _create_folder(self) -> tuple[Path | None, str | None]:
        """(the new run folder, None), or (None, why it cannot be created): every rank raises the same."""
        try:
            return create_run_folder(self.config.out_dir, self.config.name), None
        except (ValueError, OSError) as e:
            return None, str(e)

    def _remove_leftovers(self) -> None:
        removed = remove_leftovers(self.paths)
        if removed:
            self._say(f"note: removed the leftovers of an interrupted save: {', '.join(removed)}")

    def _restore(self) -> None:
        self.progress, rng = load_train_state(
            self.paths.train_state, self.model, self.optimizer, base_sha256=self._base_sha256
        )
        self.best = BestWeights(self.progress.best_step, self.adapter)  # best/ is written before the state
        restore_rng(rng, self.dist_ctx, self.device)
        if self.is_main:
            self.log.truncate_after(self.progress.step)
        self._log("resume", epoch=self.progress.epoch)
        p = self.progress
        self.run_info = dataclasses.replace(
            self.run_info, status="running", saved_step=p.step, total_steps=self.total_steps
        )
        if self.is_main:
            self.paths.write_info(self.run_info)
        self._say(f"resuming {self.paths.root} at step {p.step} (epoch {p.epoch + 1}, batch {p.position})")

    # -- rank 0's output ---------------------------------------------------------------------

    def _say(self, text: str) -> None:
        """Print ``text`` on rank 0 (above the progress bar, if one is shown)."""
        if self.is_main:
            tqdm.write(text)

    def _log(self, event: str, **fields: Any) -> None:
        """One ``metrics.jsonl`` line, written by rank 0."""
        if self.is_main:
            self.log.log(event, self.progress.step, self.progress.tokens_seen, **fields)

    def _respond(self, records: Sequence[Record]) -> list[str]:
        """Greedy responses of the current model to ``records`` (one batch, fp32)."""
        style = get_prompt_style(self.config.prompt_style)
        prompts = [encode(style.format(r.instruction, r.input)) for r in records]
        max_new = min(self.config.sample_tokens, self.model.config.block_size - 1)
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = generate(self.model, prompts, SamplingSettings(max_new_tokens=max_new), style.stop_ids())
        finally:
            self.model.train(was_training)
        return [decode(ids).strip() for ids in outputs]

    def _baseline(self) -> None:
        """The base model's answers to the first test instructions, before any training."""
        records = self.split.test[:NUM_BASELINE_RECORDS]
        self._say(f"baseline: {self.config.base} before finetuning")
        for record, response in zip(records, self._respond(records)):
            asked = dict(id=record.id, instruction=record.instruction, input=record.input)
            self._log("baseline", **asked, reference=record.output, response=response)
            self._say(f"  {record.instruction!r}\n    -> {response!r}")

    def _sample(self) -> None:
        record = self.split.val[0]
        (response,) = self._respond([record])
        asked = dict(id=record.id, instruction=record.instruction, input=record.input)
        self._log("sample", epoch=self.progress.epoch, **asked, response=response)
        self._say(f"sample after epoch {self.progress.epoch + 1}: {response!r}")

    @property
    def _base_sha256(self) -> str | None:
        return self.adapter.base_sha256 if self.adapter is not None else None

    def _checkpoint_metadata(self, step: int, val_loss: float) -> dict[str, Any]:
        return {
            "base_model": self.config.base,
            "training": self.config.to_dict(),
            "dataset": self.dataset_info,
            "step": step,
            "val_loss": val_loss,
        }

    def _write_best(self) -> None:
        p = self.progress
        metadata = self._checkpoint_metadata(p.best_step, p.best_val_loss)
        self.best.write(self.paths.best, p.best_step, prompt_style=self.config.prompt_style, metadata=metadata)

    def _end_epoch(self) -> None:
        self._sample()
        if self.progress.step < self.total_steps:
            self._write_best()  # at the last step, best/ is written with final/ (once, if they are the same)
        plot_losses(self.paths.metrics, self.paths.loss_plot)

    def _state_due(self) -> bool:
        """Whether to save a resume state after this step: every ``save_every`` steps, or
        ``save_every_minutes`` after the last save (or the start), whichever comes first."""
        cfg = self.config
        if cfg.save_every and self.progress.step % cfg.save_every == 0:
            return True
        if not cfg.save_every_minutes:
            return False
        due = _clock() - self._last_save >= 60 * cfg.save_every_minutes
        return self.dist_ctx.broadcast(due)  # rank 0's clock decides: the save is collective

    def _save_state(self) -> None:
        self._last_save = _clock()
        rng = rng_states(self.dist_ctx, self.device)  # collective: every rank takes part
        # After the state is on disk: run.json then names the step a resume starts from.
        self.run_info = dataclasses.replace(self.run_info, saved_step=self.progress.step)
        if self.is_main:
            self._write_best()  # first, so the state never refers to a best/ that is not on disk
            state = (self.model, self.optimizer, self.progress, rng)
            save_train_state(self.paths.train_state, *state, base_sha256=self._base_sha256)
            self.paths.write_info(self.run_info)

    def mark_interrupted(self) -> None:
        """Ctrl-C: run.json says ``interrupted`` (``run_writer.mark_interrupted``), written by rank 0."""
        if self.is_main:
            self.run_info = mark_interrupted(self.paths, self.run_info)

    # -- the loop ----------------------------------------------------------------------------

    def _evaluate(self) -> None:
        p = self.progress
        metrics = self.steps.eval_metrics(self.eval_batches)  # train_loss, val_loss (dpo: and the rewards)
        p.last_val_loss = val_loss = metrics["val_loss"]
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss, p.best_step = val_loss, p.step
            if self.is_main:
                self.best.keep(self.model)
        self._log("eval", epoch=p.epoch, **metrics, best=improved)
        more = "".join(f"  val {label} {metrics[f'val_{k}']:.3f}" for k, label in self.steps.shown.items())
        self._say(
            f"step {p.step:>5}  epoch {p.epoch + 1}  train loss {metrics['train_loss']:.3f}  val loss {val_loss:.3f}"
            + more
        )

    def run_training(self, stop_after: int | None = None) -> RunPaths:
        """Create (or restore) the run folder and train; ``stop_after``: see ``train``."""
        if self.restoring:
            self._restore()
        else:
            self._start()
        self.steps.prepare(self.paths, self.data, self.progress, self._say)  # dpo: the reference log-probs
        self.steps.wrap()
        self._last_save = _clock()  # the clock of --save-every-minutes starts with the steps
        with tqdm(
            total=self.total_steps,
            initial=self.progress.step,
            unit="step",
            disable=not self.is_main,
            dynamic_ncols=True,
        ) as bar:
            if self.progress.step == 0:
                self._evaluate()  # the starting point of the loss curves
            finished = self._loop(bar, stop_after)
        if finished:
            if self.is_main:
                self._write_outputs()
            self.dist_ctx.barrier()  # no rank exits while rank 0 is still writing
        return self.paths

    def _loop(self, bar, stop_after: int | None) -> bool:
        """Train up to ``total_steps``; False if stopped at ``stop_after`` as if killed there."""
        cfg, p = self.config, self.progress
        batches = None
        while p.step < self.total_steps:
            if batches is None:  # the start of an epoch, or of the rest of one after a resume
                self.sampler.set_epoch(p.epoch)
                batches = list(self.sampler)
                bar.set_description(f"epoch {p.epoch + 1}/{cfg.epochs}")
            start = time.perf_counter()
            lr = lr_at(p.step, self.total_steps, cfg)
            loss, n_tokens, more = self.steps.step([self.train_examples[i] for i in batches[p.position]], lr)
            elapsed = time.perf_counter() - start
            p.step, p.position, p.tokens_seen = p.step + 1, p.position + 1, p.tokens_seen + n_tokens
            self._log("train", epoch=p.epoch, loss=loss, **more, lr=lr, tokens_per_second=round(n_tokens / elapsed, 1))
            bar.update(1)
            shown = {label: f"{more[k]:.3f}" for k, label in self.steps.shown.items()}
            bar.set_postfix(loss=f"{loss:.3f}", **shown, tok_s=f"{n_tokens / elapsed:,.0f}", refresh=False)
            if p.step % cfg.eval_every == 0 or p.step == self.total_steps:
                self._evaluate()
            if p.position == self.steps_per_epoch:
                if self.is_main:
                    self._end_epoch()
                p.epoch, p.position, batches = p.epoch + 1, 0, None
            if self._state_due() and p.step < self.total_steps:
                self._save_state()
            if stop_after is not None and stop_after <= p.step < self.total_steps:
                return False  # as if killed here: nothing more is written
        return True

    def _write_outputs(self) -> None:
        """final/, best/, the loss plot, run.json "finished"; the resume state and any leftovers go."""
        p = self.progress
        save_model(
            self.paths.final,
            self.model,
            adapter=self.adapter,
            prompt_style=self.config.prompt_style,
            metadata=self._checkpoint_metadata(p.step, p.last_val_loss),
        )
        if p.best_step == p.step:  # the best weights are the final ones: same files, stored once
            self.best.link(self.paths.best, self.paths.final, p.step)
        self._write_best()
        plot_losses(self.paths.metrics, self.paths.loss_plot)
        self._log("done", val_loss=p.last_val_loss, best_val_loss=p.best_val_loss)
        self.run_info = dataclasses.replace(self.run_info, status="finished", saved_step=None)
        self.paths.write_info(self.run_info)
        # The resume state (weights + 2x optimizer moments) has served its purpose.
        shutil.rmtree(self.paths.train_state, ignore_errors=True)
        self._remove_leftovers()
        self._say(f"finished: {self.paths.final} (best validation loss {p.best_val_loss:.3f} at step {p.best_step})")


def train(config: TrainConfig, *, stop_after: int | None = None) -> RunPaths:
    """Finetune as ``config`` says and write the run folder; returns its paths.

    Runs as one process, or as one of ``torchrun``'s processes (DDP).
    ``stop_after`` stops after that optimizer step as if the process were killed
    there (no final checkpoint; the last saved resume state stays): for tests of
    ``resume``. Ctrl-C raises ``TrainingInterrupted``, which names the run folder.
    """
    dist_ctx, device, created = init_distributed(config.device)
    trainer = None
    held = ExitStack()  # the run folder's lock
    try:
        trainer = Trainer(config, dist_ctx, device, held)
        return trainer.run_training(stop_after)
    except KeyboardInterrupt:
        paths = trainer.paths if trainer is not None else None  # None: the folder does not exist yet
        if paths is None and config.resume is not None:
            paths = RunPaths(Path(config.resume))
        if trainer is None or trainer.paths is None:
            raise TrainingInterrupted(paths.root if paths is not None else None) from None
        trainer.mark_interrupted()
        raise TrainingInterrupted(paths.root, trainer.run_info, trainer.progress.step) from None
    finally:
        held.close()
        if created:
            dist.destroy_process_group()

"""The optimiser-step loop SFT and reward-model training share: batches, guarded updates, metrics, periodic
evaluation, checkpoints, resume and clean stops. The trainers pass in what differs: the step's loss."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import Diverged, Stopped
from rlhfkit.runtime.metrics import MetricsLog, progress
from rlhfkit.models import load_tokenizer
from rlhfkit.runtime.checkpoint import (
    StopSignals,
    begin,
    check_output,
    clear_checkpoints,
    load_checkpoint,
    save_checkpoint,
    truncate_jsonl,
)
from rlhfkit.runtime.common import (
    batches,
    finish_run,
    make_optimizer,
    quiet_transformers,
    set_seed,
    total_steps,
    train_and_eval_records,
)

log = logging.getLogger("rlhfkit")


@dataclass
class Prepared:
    """A supervised run ready for its first step."""

    out: Path
    resume_from: Path | None  # the checkpoint to continue from, or None
    tokenizer: Any
    train: list
    held_out: list
    steps: int
    trainee: Trainee

    def finish(self, command: str, config: Any, **summary: Any) -> None:
        """Save the model folder and the run file; drop the checkpoints (the model is saved)."""
        model = self.trainee.accelerator.unwrap_model(self.trainee.model)
        finish_run(self.out, command, config, model, self.tokenizer, **summary)
        clear_checkpoints(self.out)


def prepare(config: Any, kind: str, encode: Callable, load_model: Callable) -> Prepared:
    """Everything before the first step of `sft` / `rm`. All user input (folder, data rows, model) is checked
    before the output folder is touched."""
    from accelerate import Accelerator

    out = Path(config.out)
    resume_from = check_output(out, config.overwrite, config.resume)
    quiet_transformers()
    tokenizer = load_tokenizer(config.model)
    train_records, eval_records = train_and_eval_records(
        config.data, config.eval_data, config.eval_fraction, kind, config.seed
    )
    train = encode(train_records, tokenizer, config.max_length, config.truncation, config.data)
    held_out = encode(
        eval_records, tokenizer, config.max_length, config.truncation, config.eval_data or config.data
    )
    steps = total_steps(len(train), config.batch_size, config.epochs, config.max_steps)
    set_seed(config.seed)
    model = load_model(config.model, tokenizer)
    accelerator = Accelerator()
    optimizer, scheduler = make_optimizer(model, config.optim, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    begin(out, resume_from)
    return Prepared(
        out, resume_from, tokenizer, train, held_out, steps, Trainee(model, optimizer, scheduler, accelerator)
    )


@dataclass
class Trainee:
    """A model with its optimiser and schedule, prepared by accelerate."""

    model: Any
    optimizer: Any
    scheduler: Any
    accelerator: Any

    def state(self) -> dict[str, Any]:
        return {
            "model": self.accelerator.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def guarded_step(trainee: Trainee, loss: float, max_grad_norm: float) -> tuple[float, bool]:
    """Clip and step, unless the loss or the gradient norm is not finite: then the update is skipped.
    Returns (gradient norm, whether the update was applied)."""
    model, optimizer = trainee.model, trainee.optimizer
    norm = float(trainee.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf")))
    applied = math.isfinite(loss) and math.isfinite(norm)
    if applied:
        optimizer.step()
        trainee.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


def train_steps(
    name: str,
    out: Path,
    config: Any,
    trainee: Trainee,
    items: Sequence[Any],
    steps: int,
    step_loss: Callable[[list], dict[str, float]],
    evaluate: Callable[[], dict[str, float]] | None,
    resume_from: Path | None,
) -> dict[str, Any]:
    """Run optimiser steps 1..`steps` (from the checkpoint's step when resuming); returns the last record.

    `step_loss(batch)` runs forward and backward over the batch's micro-batches and returns its statistics,
    "loss" among them. Batches are a pure function of (seed, step), so skipping the steps already done on
    resume gives exactly the batches an uninterrupted run would see.
    """
    first, bad_total = 0, 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        trainee.restore(state)
        first, bad_total = state["step"], state["bad_steps"]
        truncate_jsonl(out / "metrics.jsonl", first)

    def checkpoint(step: int) -> Path:
        return save_checkpoint(
            out, step, {**trainee.state(), "bad_steps": bad_total}, config.keep_checkpoints
        )

    accelerator, bad_in_a_row, record = trainee.accelerator, 0, {}
    with (
        MetricsLog(out / "metrics.jsonl", append=resume_from is not None) as metrics,
        StopSignals() as signals,
        progress(steps, name, accelerator.is_main_process) as bar,
    ):
        bar.update(first)
        started = time.perf_counter()
        for step, (epoch, batch) in enumerate(batches(items, config.batch_size, steps, config.seed), start=1):
            if step <= first:
                continue
            stats = step_loss(batch[accelerator.process_index :: accelerator.num_processes])
            grad_norm, applied = guarded_step(trainee, stats["loss"], config.optim.max_grad_norm)
            bad_in_a_row = 0 if applied else bad_in_a_row + 1
            bad_total += not applied
            if not applied:
                log.warning(
                    "%s step %d: non-finite loss or gradient norm; update skipped (%d in a row)",
                    name,
                    step,
                    bad_in_a_row,
                )
            record = {
                "step": step,
                "epoch": epoch,
                **stats,
                "grad_norm": grad_norm,
                "lr": trainee.scheduler.get_last_lr()[0],
                "bad_steps": bad_total,
                "steps_per_s": (step - first) / (time.perf_counter() - started),
            }
            if evaluate and (step == steps or (config.eval_every and step % config.eval_every == 0)):
                record.update(evaluate())
            metrics.write(record)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            bar.update()
            if bad_in_a_row >= config.max_bad_steps:
                path = checkpoint(step)
                raise Diverged(
                    f"{bad_in_a_row} non-finite updates in a row at step {step}; the last good state "
                    f"is checkpointed in {path}"
                )
            if signals.received or (config.save_every and step % config.save_every == 0 and step < steps):
                path = checkpoint(step)
                if signals.received:
                    raise Stopped(signals.received, path)
    return record

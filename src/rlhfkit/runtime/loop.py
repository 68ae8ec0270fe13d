"""The one run loop every trainer goes through: steps, the non-finite guard, metrics, evaluation, progress,
checkpoints, resume and clean stops on SIGINT/SIGTERM. A trainer supplies what differs (its step, its state,
its evaluation); nothing here knows what a step trains.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhfkit.errors import Diverged, StepFailed, Stopped
from rlhfkit.runtime.checkpoint import (
    StopSignals,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    truncate_jsonl,
)
from rlhfkit.runtime.distributed import all_max, all_objects, barrier, is_main
from rlhfkit.runtime.metrics import MetricsLog, progress, read_metrics
from rlhfkit.runtime.outputs import CHECKPOINTS
from rlhfkit.runtime.process import release_freed_memory
from rlhfkit.runtime.sharding import clip_grad_norm
from rlhfkit.runtime.trackers import Trackers

log = logging.getLogger("rlhfkit")


class UpdateGuard:
    """Skips optimiser updates whose loss or gradient norm is not finite, counts them, and says when too many
    came in a row (docs/ppo-details.md #21: a NaN must not reach the weights)."""

    def __init__(self, name: str, max_in_a_row: int, total: int = 0) -> None:
        self.name, self.max_in_a_row = name, max_in_a_row
        self.total, self.in_a_row = total, 0

    def allows(self, *values: float) -> bool:
        """Whether an update with these losses / gradient norms may be applied; counts it when not."""
        applied = all(math.isfinite(v) for v in values)
        self.in_a_row = 0 if applied else self.in_a_row + 1
        self.total += not applied
        if not applied:
            log.warning(
                "%s: non-finite loss or gradient norm; update skipped (%d in a row)", self.name, self.in_a_row
            )
        return applied

    @property
    def diverged(self) -> bool:
        return self.in_a_row >= self.max_in_a_row


def guarded_update(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any,
    parameter_groups: Iterable[Iterable[torch.nn.Parameter]],
    max_grad_norm: float,
    losses: Iterable[float],
    guard: UpdateGuard,
) -> tuple[list[float], bool]:
    """Clip each group's gradient norm (each role is clipped on its own), then step optimiser and schedule
    unless a loss or a norm is not finite. Returns (the groups' norms, whether the update was applied)."""
    limit = max_grad_norm or float("inf")
    norms = [clip_grad_norm(accelerator, group, limit) for group in parameter_groups]
    applied = guard.allows(*losses, *norms)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norms, applied


class Trainer(Protocol):
    """What a trainer hands the loop."""

    def step(self, step: int, guard: UpdateGuard) -> dict[str, Any]:
        """Do step `step` (1-based; a pure function of the seed, the step and the state) and return its
        metrics. Every optimiser update goes through `guard`."""
        ...

    def evaluate(self, step: int) -> tuple[dict[str, Any], list[dict]] | None:
        """Held-out metrics and samples to log (None: nothing held out)."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as this one would (besides RNG states)."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        ...


def run_loop(
    trainer: Trainer,
    out: Path,
    config: Any,
    steps: int,
    name: str,
    resume_from: Path | None = None,
    unit: str = "step",
    trackers: Trackers | None = None,
) -> dict[str, Any]:
    """Run steps 1..`steps` of `trainer` (from the checkpoint's step when resuming); returns the last record.

    Writes `metrics.jsonl` (one flushed line per step) and, when the trainer's evaluation returns samples,
    `samples.jsonl`. `config` provides eval_every, save_every, keep_checkpoints and max_bad_steps.
    """
    first, guard, record, main = 0, UpdateGuard(name, config.max_bad_steps), {}, is_main()
    if resume_from is None and main:
        (out / "samples.jsonl").unlink(missing_ok=True)  # written lazily: an old run's must not survive
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        trainer.restore(state)
        first, guard.total, guard.in_a_row = state["step"], state["bad_steps"], state["bad_in_a_row"]
        if main:
            for log_name in ("metrics.jsonl", "samples.jsonl"):
                truncate_jsonl(out / log_name, first)
            if first == steps:  # stopped in the last step: nothing left but its record
                record = read_metrics(out / "metrics.jsonl")[-1]

    def checkpoint(step: int) -> Path:
        """Every process's random states, the main process writes (the models are the same everywhere)."""
        counters = {"bad_steps": guard.total, "bad_in_a_row": guard.in_a_row}
        rng, state = all_objects(rng_state()), {**trainer.state(), **counters}
        path = out / CHECKPOINTS / f"step-{step:08d}"
        if main:
            save_checkpoint(out, step, state, config.keep_checkpoints, rng)
        barrier()
        return path

    append = resume_from is not None
    with (
        MetricsLog(out / "metrics.jsonl", append=append, enabled=main) as metrics,
        MetricsLog(out / "samples.jsonl", append=append, lazy=True, enabled=main) as samples,
        StopSignals() as signals,
        progress(steps, name, enabled=main) as bar,
    ):
        bar.update(first)
        started = time.perf_counter()
        for step in range(first + 1, steps + 1):
            try:
                record = {"step": step, **trainer.step(step, guard), "bad_steps": guard.total}
            except StepFailed as exc:  # the step changed nothing that is saved: the state after step - 1
                raise Diverged(
                    f"{exc}; the last good state is checkpointed in {checkpoint(step - 1)}"
                ) from None
            release_freed_memory()
            record["steps_per_s"] = (step - first) / (time.perf_counter() - started)
            last = step == steps
            if last or (config.eval_every and step % config.eval_every == 0):
                evaluation, failure = None, None
                try:  # the main process evaluates alone: a failure there is shared before anyone waits
                    evaluation = trainer.evaluate(step)
                except StepFailed as exc:
                    failure = str(exc)
                if all_max(torch.tensor(float(failure is not None))):
                    metrics.write(record)  # the iteration itself is done: its record and state are kept
                    raise Diverged(
                        f"{failure or 'the evaluation failed on the main process'}; the state after {unit} "
                        f"{step} is checkpointed in {checkpoint(step)} (its held-out evaluation is skipped)"
                    )
                if evaluation is not None:
                    record.update(evaluation[0])
                    samples.write_many({"step": step, **s} for s in evaluation[1])
            metrics.write(record)
            if trackers is not None:
                trackers.log(record, step)
            bar.set_postfix(trainer.postfix(record))
            bar.update()
            if guard.diverged:
                raise Diverged(
                    f"{guard.in_a_row} non-finite updates in a row at {unit} {step}; the last good state "
                    f"is checkpointed in {checkpoint(step)}"
                )
            # a signal any process received stops them all after the same step
            received = int(all_max(torch.tensor(signals.received or 0)))
            if received or (config.save_every and step % config.save_every == 0 and not last):
                path = checkpoint(step)
                if received:
                    raise Stopped(received, path)
    return record

"""What the SFT and reward-model trainers share: output folders, seeds, optimisers, batches, saving."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlhfkit import __version__
from rlhfkit.config import OptimConfig, save_config, to_dict
from rlhfkit.data import load_records
from rlhfkit.errors import UsageError

T = TypeVar("T")
RUN_FILE = "rlhfkit.json"  # written last: its presence with finished=true marks a finished run


def quiet_transformers() -> None:
    """Our own progress bar and messages only: transformers' load reports and bars are noise here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def autocast(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast for forward passes when asked. Our own rather than Accelerator(mixed_precision=...):
    accelerate fixes that setting once per process, and a Python user may run fp32 and bf16 jobs in one."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_and_eval_records(
    data: str, eval_data: str | None, eval_fraction: float, kind: str, seed: int
) -> tuple[list[dict], list[dict]]:
    """Validated training and held-out records; without `eval_data` a seeded `eval_fraction` is held out."""
    records = load_records(data, kind)
    if eval_data:
        return records, load_records(eval_data, kind)
    if len(records) < 2 or eval_fraction <= 0:
        return records, []
    n_eval = min(len(records) - 1, max(1, round(eval_fraction * len(records))))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def total_steps(n_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimiser steps of the run: `max_steps` when given, else `epochs` passes of ceil(n / batch) steps."""
    if max_steps is not None:
        if max_steps <= 0:
            raise UsageError(f"max_steps must be > 0, got {max_steps}")
        return max_steps
    if epochs <= 0:
        raise UsageError(f"epochs must be > 0, got {epochs}")
    return epochs * math.ceil(n_examples / batch_size)


def batches(items: Sequence[T], batch_size: int, steps: int, seed: int) -> Iterator[tuple[int, list[T]]]:
    """(epoch, batch) for `steps` batches, reshuffled every epoch with a seeded generator; the last batch of
    an epoch may be smaller."""
    step, epoch = 0, 0
    while True:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, len(items), batch_size):
            if step == steps:
                return
            yield epoch, [items[i] for i in order[start : start + batch_size]]
            step += 1
        epoch += 1


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """`items` in `parts` contiguous, nearly equal, non-empty chunks (gradient-accumulation micro-batches)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def make_optimizer(model: torch.nn.Module, optim: OptimConfig, steps: int) -> tuple[Any, Any]:
    """AdamW and a warm-up + decay schedule over `steps` optimiser steps."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        eps=optim.adam_eps,
    )
    name = "constant_with_warmup" if optim.schedule == "constant" else optim.schedule
    warmup = math.ceil(optim.warmup_ratio * steps)
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def finish_run(out: Path, command: str, config: Any, model: Any, tokenizer: Any, **summary: Any) -> None:
    """Save model, tokenizer and config; write the run file last, so its presence means all of it is there."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_run_file(out, command, config, **summary)


def write_run_file(out: Path, command: str, config: Any, **summary: Any) -> None:
    """config.yaml, then the run file that marks the folder as a finished run."""
    save_config(config, out / "config.yaml")
    record = {
        "command": command,
        "version": __version__,
        "finished": True,
        "config": to_dict(config),
        **summary,
    }
    (out / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_run_file(folder: str | Path) -> dict[str, Any]:
    """The run file of a folder written by rlhfkit ({} when there is none)."""
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

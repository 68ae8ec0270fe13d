"""The process a command runs in: seeds, autocast, quiet third-party logs."""

from __future__ import annotations

import datetime
import random
from typing import Any

import numpy as np
import torch


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


def make_accelerator(
    report_to: tuple[str, ...] = (), out: Any = None, unused_parameters: bool = False
) -> Any:
    """The run's `Accelerator`, logging to the trackers `report_to` names under `out`. Several processes
    without CUDA take accelerate's CPU path (gloo): without `cpu=True` accelerate treats each of them as a run
    of its own."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from rlhfkit.runtime.distributed import world

    return Accelerator(
        cpu=world() > 1 and not torch.cuda.is_available(),
        log_with=list(report_to) or None,
        project_dir=str(out) if report_to else None,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=unused_parameters),
            # the other processes wait while the main one evaluates alone: give it hours, not minutes
            InitProcessGroupKwargs(timeout=datetime.timedelta(hours=3)),
        ],
    )

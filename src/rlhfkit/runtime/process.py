"""The process a command runs in: seeds, autocast, quiet third-party logs."""

from __future__ import annotations

import datetime
import os
import random
import warnings
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import UsageError


def quiet_transformers() -> None:
    """Our own progress bar and messages only: transformers' load reports and bars are noise here."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft (<= 0.21) asks transformers 5 under a name it deprecated; nothing the user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)


def autocast(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast for forward passes when asked. Our own rather than Accelerator(mixed_precision=...):
    accelerate fixes that setting once per process, and a Python user may run fp32 and bf16 jobs in one."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (glibc's `malloc_trim`; nothing
    elsewhere). Between steps a CPU run otherwise keeps the high-water mark of every phase's temporaries
    (measured on SmolLM2 PPO with LoRA: peak RSS 2.7 -> 2.1 GiB). Costs about a millisecond."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_engine(environ: Any = os.environ) -> None:
    """Refuse the accelerate engines rlhfkit does not drive, from the variables `accelerate launch` sets
    (before any process does work). DeepSpeed's engine steps the optimiser inside backward and clips one
    global norm, so a non-finite update could not be skipped before it reached the weights nor each role
    clipped on its own (docs/ppo-details.md #21); FSDP1 has no per-module gather for generation."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise UsageError(
            "DeepSpeed is not supported; shard with FSDP2 instead: "
            "accelerate launch --config_file configs/accelerate/fsdp.yaml (ZeRO-3-like; "
            "fsdp_reshard_after_forward: false is ZeRO-2-like)"
        )
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and environ.get("FSDP_VERSION") != "2":
        raise UsageError(
            f"FSDP version {environ.get('FSDP_VERSION', '1')} is not supported; set fsdp_version: 2 "
            "(see configs/accelerate/fsdp.yaml)"
        )


def make_accelerator(
    report_to: tuple[str, ...] = (), out: Any = None, unused_parameters: bool = False
) -> Any:
    """The run's `Accelerator`, logging to the trackers `report_to` names under `out`. Several processes
    without CUDA take accelerate's CPU path (gloo): without `cpu=True` accelerate treats each of them as a run
    of its own."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from rlhfkit.runtime.distributed import world

    check_engine()

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

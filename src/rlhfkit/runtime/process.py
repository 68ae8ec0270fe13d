"""The process a command runs in: seeds, precision (what `bf16: auto` means here) and autocast, quiet
third-party logs."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import ConfigError, UsageError


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


# What `bf16: auto` means, whatever the device, when set: `false` or `true`. The test suite sets `false` so
# that its numbers do not depend on the CPU it runs on; a user may set it where the CPU check misjudges.
AUTO_BF16_VARIABLE = "RLHFKIT_AUTO_BF16"
# CPU features that multiply bf16 natively: x86's AVX512_BF16 and AMX (`flags`), arm's BF16 (`Features`).
# Without them oneDNN emulates bf16 products in fp32 and converts around them: slower than plain fp32 (3.5x
# for SmolLM2's forward + backward on an AVX-512 Xeon without AVX512_BF16, issue 23).
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FEATURE = "bf16"
TIMED_SIZE = 512  # the matmul timed where the features do not tell: ~30 ms once per process, on one core


def cpu_bf16_from_features(cpuinfo: str | None) -> tuple[bool | None, str]:
    """Whether this CPU's bf16 matrix products beat fp32, from the text of /proc/cpuinfo: `(verdict, why)`,
    verdict None when the text does not tell (no /proc/cpuinfo, an architecture without these lines)."""
    for line in (cpuinfo or "").splitlines():
        name, _, value = line.partition(":")
        features = set(value.split())
        if name.strip() == "flags":  # x86
            found = [f for f in X86_BF16_FLAGS if f in features]
            if found:
                return True, f"this CPU multiplies bf16 natively ({', '.join(found)})"
            return False, "this CPU has no native bf16 products (no avx512_bf16 or amx_bf16): fp32 is faster"
        if name.strip() == "Features":  # arm
            if ARM_BF16_FEATURE in features:
                return True, "this CPU multiplies bf16 natively (bf16)"
            return False, "this CPU has no native bf16 products (no bf16 feature): fp32 is faster"
    return None, "the CPU's features are unknown"


def cpu_bf16_from_timing(fp32_seconds: float, bf16_seconds: float) -> tuple[bool, str]:
    """`(verdict, why)` from one matmul timed in fp32 and in bf16."""
    faster = bf16_seconds < fp32_seconds
    return faster, (
        f"a {TIMED_SIZE}x{TIMED_SIZE} matmul took {bf16_seconds * 1e3:.2f} ms in bf16 against "
        f"{fp32_seconds * 1e3:.2f} ms in fp32"
    )


def time_matmuls(size: int = TIMED_SIZE, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` seconds of a `size`-square matmul in fp32 and in bf16 on the CPU (after one warm-up
    each: the first call pays for oneDNN's kernel selection). On one thread: it compares the core's
    arithmetic, and other processes busy on the other cores disturb it less."""
    a, threads, best = torch.randn(size, size), torch.get_num_threads(), []
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            x = a.to(dtype)
            x @ x
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                x @ x
                seconds.append(time.perf_counter() - start)
            best.append(min(seconds))
    finally:
        torch.set_num_threads(threads)
    return best[0], best[1]


def cpu_bf16_verdict(
    cpuinfo: str | None, processes: int, measure: Callable[[], tuple[float, float]]
) -> tuple[bool | None, str]:
    """`(verdict, why)` for this CPU: from its features when they tell, else from `measure` (fp32 and bf16
    seconds). Several processes do not measure: each would time on its own and they could disagree, so the
    verdict stays None (auto then keeps fp32 in all of them)."""
    verdict, why = cpu_bf16_from_features(cpuinfo)
    if verdict is not None:
        return verdict, why
    if processes > 1:
        return None, f"{why} and {processes} processes must agree without timing"
    return cpu_bf16_from_timing(*measure())


def auto_bf16(
    environ: Mapping[str, str], cuda_device: str | None, cuda_bf16: bool, cpu: Callable[[], tuple[Any, str]]
) -> tuple[bool, str]:
    """What `bf16: auto` resolves to, and why: the variable `AUTO_BF16_VARIABLE` when set; else on CUDA
    (`cuda_device` is the device's name) whether it computes bf16 natively; else the CPU's verdict
    (`cpu()`; an unknown verdict keeps fp32)."""
    pinned = environ.get(AUTO_BF16_VARIABLE, "").strip().lower()
    if pinned:
        if pinned not in ("true", "false", "1", "0"):
            raise UsageError(f"{AUTO_BF16_VARIABLE} must be true or false, got {pinned!r}")
        return pinned in ("true", "1"), f"{AUTO_BF16_VARIABLE}={pinned}"
    if cuda_device is not None:
        return cuda_bf16, f"CUDA device {cuda_device} {'computes' if cuda_bf16 else 'has no native'} bf16"
    verdict, why = cpu()
    return verdict is True, why


def resolve_precision(
    bf16: Any, model_dtype: str, auto: Callable[[], bool], slow_on_this_cpu: Callable[[], bool]
) -> tuple[bool, str]:
    """A config's `(bf16, model_dtype)` as the run uses them: `bf16` true, false or "auto" (`auto()`);
    `model_dtype` "auto" follows the resolved `bf16` (frozen weights stored as the run computes: in bf16
    when it computes in bf16; in fp32 otherwise, so that they are not cast up module by module at every
    forward pass: bfloat16, set by hand, still halves their memory).
    An explicit `bf16=true` on a CPU where it is slower warns once (`slow_on_this_cpu()`)."""
    if not (bf16 is True or bf16 is False or bf16 == "auto"):
        raise ConfigError(f"bf16 must be true, false or 'auto', got {bf16!r}")
    if bf16 == "auto":
        bf16 = auto()
    elif bf16 and slow_on_this_cpu():
        _warn_once(
            "bf16=true on this CPU runs slower than fp32 (no native bf16 products); bf16=auto (the default) "
            "or false is faster here"
        )
    if model_dtype == "auto":
        model_dtype = "bfloat16" if bf16 else "float32"
    return bf16, model_dtype


@functools.cache
def this_cpu_bf16_verdict() -> tuple[bool | None, str]:
    """`cpu_bf16_verdict` of the CPU this process runs on, worked out once per process."""
    from rlhfkit.runtime.distributed import world

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else None
    return cpu_bf16_verdict(text, world(), time_matmuls)


def on_cuda() -> str | None:
    """The name of the CUDA device a run would use, or None (the run computes on the CPU)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


@functools.cache
def auto_bf16_here() -> bool:
    """What `bf16: auto` means in this process, worked out once and logged once (by the main process)."""
    from rlhfkit.runtime.distributed import is_main

    device = on_cuda()
    cuda_bf16 = device is not None and torch.cuda.is_bf16_supported(including_emulation=False)
    bf16, why = auto_bf16(os.environ, device, cuda_bf16, this_cpu_bf16_verdict)
    if is_main() and not os.environ.get(AUTO_BF16_VARIABLE, "").strip():  # pinned: nothing was decided
        logging.getLogger("rlhfkit").info(f"bf16=auto chose {'bf16' if bf16 else 'fp32'}: {why}")
    return bf16


def bf16_slow_here() -> bool:
    """Whether bf16 runs slower than fp32 in this process: on a CPU whose verdict is that it does."""
    return on_cuda() is None and this_cpu_bf16_verdict()[0] is False


def precision_here(bf16: Any, model_dtype: str) -> tuple[bool, str]:
    """`resolve_precision` on this machine: what configs call when they are made."""
    return resolve_precision(bf16, model_dtype, auto_bf16_here, bf16_slow_here)


@functools.cache
def _warn_once(message: str) -> None:
    from rlhfkit.runtime.distributed import is_main

    if is_main():
        logging.getLogger("rlhfkit").warning(message)


# Below this much free heap a trim is not worth its cost: the next step faults the pages back in (measured on
# a 4 x 256 Llama, 16 x 32 tokens: 10-15 ms and ~25k page faults per step to return ~140 MiB, peak RSS equal).
TRIM_FROM_BYTES = 256 * 2**20


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (glibc's `malloc_trim`; nothing
    elsewhere) when the free heap chunks add up to `TRIM_FROM_BYTES`. Between steps a CPU run otherwise
    keeps the high-water mark of every phase's temporaries (measured on SmolLM2 PPO with LoRA: peak RSS
    2.7 -> 2.1 GiB)."""
    global _malloc_trim, _free_heap
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _malloc_trim = False
        else:
            _free_heap = _free_heap_reader(libc)
    # Free chunks a trim returned stay counted as free, and reusing them faults their pages back in, which
    # no counter shows: once the free heap is large, every step trims (as every step did before the gate).
    if _malloc_trim and (_free_heap is None or _free_heap() >= TRIM_FROM_BYTES):
        _malloc_trim(0)


def _free_heap_reader(libc: Any) -> Callable[[], int] | None:
    """A function returning the bytes of free heap chunks (`mallinfo2().fordblks`, glibc >= 2.33), or None
    where glibc lacks it (then every call trims, as before)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = MallInfo2
    return lambda: int(mallinfo2().fordblks)


_free_heap: Callable[[], int] | None = None
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

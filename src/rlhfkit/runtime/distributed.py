"""N processes (torchrun / accelerate launch): who this process is, and the few collectives the trainers need.

With one process every function is the identity, so the trainers have one code path. Batch sizes are global:
each process takes its contiguous share of a batch's rows, and every mean is taken over the global batch.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import torch


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> int:
    """Processes in the run (from the launcher's environment, so it is known before any process group)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The one process that writes files."""
    return rank() == 0


def local_rows(n: int) -> slice:
    """This process's contiguous share of `n` rows (`n` divisible by the number of processes)."""
    share = n // world()
    return slice(rank() * share, (rank() + 1) * share)


def _on_backend(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the device the process group communicates from: NCCL takes CUDA tensors only."""
    if torch.distributed.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()), copy=True)
    return tensor.clone()


def _reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not _initialised():
        return tensor.clone()
    moved = _on_backend(tensor)
    torch.distributed.all_reduce(moved, op=op)
    return moved.to(tensor.device)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over processes (a new tensor, on `tensor`'s device)."""
    return _reduce(tensor, torch.distributed.ReduceOp.SUM)


def all_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over processes (a new tensor, on `tensor`'s device)."""
    return _reduce(tensor, torch.distributed.ReduceOp.MAX)


def all_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of every process in rank order, (n, ...) -> (world * n, ...); every process's tensor must
    have the same shape."""
    if not _initialised():
        return tensor
    moved = _on_backend(tensor.contiguous())
    parts = [torch.empty_like(moved) for _ in range(world())]
    torch.distributed.all_gather(parts, moved)
    return torch.cat(parts).to(tensor.device)


def all_objects(value: Any) -> list[Any]:
    """`value` of every process, in rank order."""
    if not _initialised():
        return [value]
    found: list[Any] = [None] * world()
    torch.distributed.all_gather_object(found, value)
    return found


def barrier() -> None:
    if _initialised():
        torch.distributed.barrier()


def finish() -> bool:
    """Leave the process group, if this process is in one (whether it was)."""
    if not _initialised():
        return False
    torch.distributed.destroy_process_group()
    return True


def end_process(status: int) -> NoReturn:
    """End a process that was in a process group now, with `status`, skipping the interpreter's teardown.
    The trained models still hold the gloo backend after the group is destroyed, and its worker threads,
    torn down with the interpreter, abort a finished run now and then ("terminate called without an active
    exception", SIGABRT). The exit handlers still run (a reward function's, the trackers'), then the standard
    streams are flushed; rlhfkit's own files are closed by then (metrics.jsonl flushes every line)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


Result = TypeVar("Result")


def agreed_on_failure(
    work: Callable[[], Result],
    failures: type[Exception],
    device: torch.device,
    everywhere: bool,
    elsewhere: str,
) -> Result:
    """`work()`, a call into the user's code (reward functions, an environment), with the processes agreeing
    on its outcome: when it raises one of `failures` on any process, every process raises StepFailed
    together (`elsewhere` on those where it did not fail), none left waiting in a later collective.
    `everywhere=False`: this process alone runs (an evaluation)."""
    from rlhfkit.errors import StepFailed

    failure, result = None, None
    try:
        result = work()
    except failures as exc:
        failure = str(exc)
    failed = all_max(torch.tensor(float(failure is not None), device=device)) if everywhere else failure
    if failed:
        raise StepFailed(failure or elsewhere)
    return result

"""Checkpoints that survive a crash, resume that continues exactly, and clean stops on SIGINT/SIGTERM.

A checkpoint is `OUT/checkpoints/step-NNNNNNNN/` holding `state.pt` (models, optimisers, schedulers, random
states, counters) and, written last, `COMPLETE`. It is built in a temporary folder and renamed into place, so
a crash mid-write never leaves a folder that looks whole; resume ignores any folder without `COMPLETE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import UsageError
from rlhfkit.runtime.distributed import rank, world
from rlhfkit.runtime.outputs import CHECKPOINTS, MARKER, complete_checkpoints


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) random states, as types `torch.load(weights_only=True)` accepts."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()  # key: (624,) uint32 ndarray
    numpy_state = {
        "bit_generator": str(name),
        "key": torch.from_numpy(key.astype(np.int64)),  # (624,) int64: every uint32 fits, no ndarray pickled
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    saved = state["numpy"]
    key = saved["key"].numpy().astype(np.uint32)  # (624,)
    np.random.set_state(
        (saved["bit_generator"], key, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path, step: int, state: dict[str, Any], keep: int, rng: list[dict[str, Any]] | None = None
) -> Path:
    """Write `state` and the random states of every process (`rng`, in rank order; this process's alone by
    default) for `step` atomically; keep the newest `keep` checkpoints."""
    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}"
    staging = folder / f".tmp-step-{step:08d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save({**state, "step": step, "rng": rng or [rng_state()]}, staging / "state.pt")
    (staging / MARKER).write_text(json.dumps({"step": step}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for old in complete_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state of a checkpoint, its random states already restored.

    Loaded with `weights_only=True`: tensors, containers and plain values only, so a `state.pt` dropped into
    an output folder cannot run code. Anything else is refused as a UsageError.
    """
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign pickle, a truncated or missing file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's first line suggests weights_only=False; its WeightsUnpickler line names what was refused
        refused = [line for line in lines if line.startswith("WeightsUnpickler error: ")]
        reason = (
            refused[0].removeprefix("WeightsUnpickler error: ").split(". Please")[0] if refused else lines[0]
        )
        raise UsageError(f"{path}: not a checkpoint rlhfkit can load safely ({reason})") from None
    if not isinstance(state, dict) or "rng" not in state:
        raise UsageError(f"{path}: not a checkpoint rlhfkit can load safely (no random states in state.pt)")
    saved = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(saved) != world():
        raise UsageError(f"{path} was written by {len(saved)} processes; resume it with {len(saved)}")
    set_rng_state(saved[rank()])  # each process continues its own random streams
    return state


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the records after `last_step` (written after the checkpoint that a resume starts from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):  # the half line a crash can leave at the end
            continue
    path.write_text("".join(line + "\n" for line in kept))


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the training loop reads between optimiser steps, so the step in
    progress finishes and a checkpoint is written before the process exits."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

"""Output folders: what may be written where, and the run file that marks a finished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlhfkit import __version__
from rlhfkit.config import save_config, to_dict
from rlhfkit.errors import UsageError
from rlhfkit.runtime.distributed import is_main

RUN_FILE = "rlhfkit.json"  # written last: its presence with finished=true marks a finished run
CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"  # written last into a checkpoint folder


def complete_checkpoints(out: Path) -> list[Path]:
    """Whole checkpoints of `out`, oldest first."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def clear_checkpoints(out: Path) -> None:
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def check_output(out: Path, overwrite: bool, resume: bool = False) -> Path | None:
    """The checkpoint to resume from (None for a fresh run), or a UsageError for a folder that must not be
    touched: a finished run without --overwrite, checkpoints without --resume, --resume with nothing to do."""
    finished = bool(read_run_file(out).get("finished")) if out.is_dir() else False
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if resume:
        if finished:
            raise UsageError(f"{out} holds a finished run: nothing to resume")
        checkpoints = complete_checkpoints(out)
        if not checkpoints:
            raise UsageError(f"--resume: {out} has no complete checkpoint")
        return checkpoints[-1]
    if finished and not overwrite:
        raise UsageError(
            f"{out} holds a finished run; pass --overwrite to replace it, or choose another --out"
        )
    if complete_checkpoints(out) and not overwrite:
        raise UsageError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or "
            "--overwrite to start again"
        )
    return None


def begin(out: Path, resume_from: Path | None) -> None:
    """Make the folder ready to write (the main process only): an old run file goes (a run that dies midway
    never looks finished), and so do old checkpoints unless this run resumes from one."""
    if not is_main():
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).unlink(missing_ok=True)
    if resume_from is None:
        clear_checkpoints(out)


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

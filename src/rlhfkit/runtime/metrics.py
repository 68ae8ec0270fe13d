"""Metrics files and progress bars. `metrics.jsonl` is always written, one flushed line per record."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # 0-dim tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
    return value


class MetricsLog:
    """Appends JSON records to a file, flushed at each write: a crash loses at most the line being written.
    A `lazy` log creates its file on the first write only; a disabled one (not the main process) writes
    nothing."""

    def __init__(
        self, path: str | Path, append: bool = False, lazy: bool = False, enabled: bool = True
    ) -> None:
        self.path, self._mode, self.enabled = Path(path), "a" if append else "w", enabled
        opened = enabled and not lazy
        self._file: IO[str] | None = self.path.open(self._mode, encoding="utf-8") if opened else None

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        """All `records` in one write: a crash leaves at most one partial line, which a resume drops."""
        text = "".join(json.dumps({k: _plain(v) for k, v in r.items()}) + "\n" for r in records)
        if not text or not self.enabled:
            return
        if self._file is None:
            self._file = self.path.open(self._mode, encoding="utf-8")
        self._file.write(text)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def progress(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A progress bar on stderr showing steps, speed and whatever `set_postfix` receives."""
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

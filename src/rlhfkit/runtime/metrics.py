"""Metrics sinks and progress bars. `metrics.jsonl` is always written, one flushed line per record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # 0-dim tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
    return value


class MetricsLog:
    """Appends JSON records to a file, flushed line by line: a crash loses at most the line being written."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self._file = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
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

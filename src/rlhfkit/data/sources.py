"""Reading rows from JSONL, Parquet, a folder saved by `datasets`, or a dataset name on the hub."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import UsageError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Row:
    """One record and where it came from, so an error can name the file and the row (1-based)."""

    data: Any
    source: str
    number: int

    def where(self) -> str:
        return f"{self.source} row {self.number}"


def read_rows(source: str, split: str = "train") -> list[Row]:
    """All rows of `source`: a .jsonl/.json/.parquet file, a `datasets.save_to_disk` folder, or a hub name.

    A missing file, an empty file and a line that is not JSON are `UsageError`s naming file and row.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        rows = _read_saved_dataset(path, split)
    elif path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise UsageError(
                f"{source}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet"
            )
        rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    elif path.suffix in LOCAL_SUFFIXES or source.startswith((".", "/", "~")):
        raise UsageError(f"{source}: file does not exist")
    else:
        rows = _read_hub_dataset(source, split)
    if not rows:
        raise UsageError(f"{source}: no rows (empty file or dataset)")
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    """JSON Lines; a .json file holding one array of objects is read as rows too."""
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            return [Row(data, str(path), number) for number, data in enumerate(records, start=1)]
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} row {number}: not valid JSON ({exc.msg})") from None
            rows.append(Row(data, str(path), number))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    return [Row(data, str(path), number) for number, data in enumerate(records, start=1)]


def _rows_of(dataset: Any, source: str, split: str) -> list[Row]:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise UsageError(f"{source}: no split {split!r} (has {', '.join(dataset)})")
        dataset = dataset[split]
    return [Row(data, source, number) for number, data in enumerate(dataset, start=1)]


def _read_saved_dataset(path: Path, split: str) -> list[Row]:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError:
        raise UsageError(f"{path}: folder is not a dataset saved by `datasets` (save_to_disk)") from None
    return _rows_of(dataset, str(path), split)


def _read_hub_dataset(name: str, split: str) -> list[Row]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, bad split: all are the user's to fix
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{name}: not a local file and could not be loaded with datasets ({first_line})"
        ) from None
    return _rows_of(dataset, name, split)

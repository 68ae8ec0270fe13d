"""Reading rows from JSONL/JSON, Parquet, CSV/TSV, a folder saved by `datasets` (or of data files), or a
dataset name on the hub.

A source may name a split and a config (or subset): `NAME[:CONFIG][@SPLIT]`, e.g.
`HuggingFaceH4/ultrafeedback_binarized@train_prefs`, `Anthropic/hh-rlhf:harmless-base@test`,
`my/saved_dataset@test_prefs`. The config is the dataset's config name, or else its data folder (HH-RLHF's
subsets are folders). Without `@SPLIT` the split is `train`.

`open_rows` reads lazily where it can: a JSONL file is indexed by byte offsets (8 bytes a row), and anything
read through `datasets` stays in its memory-mapped Arrow cache; a row is parsed when it is asked for.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import UsageError, first_line

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Row:
    """One record and where it came from, so an error can name the file and the row (1-based)."""

    data: Any
    source: str
    number: int

    def where(self) -> str:
        return f"{self.source} row {self.number}"


def parse_source(source: str) -> tuple[str, str | None, str | None]:
    """`NAME[:CONFIG][@SPLIT]` -> (name, config, split), None where not named. A path that exists is taken
    whole; a Windows drive letter is part of the name."""
    if Path(source).expanduser().exists():
        return source, None, None
    name, at, split = source.rpartition("@")
    if not (at and name and split and "/" not in split):
        name, split = source, None
    drive = name[:2] if re.match(r"^[A-Za-z]:[\\/]", name) else ""
    head, colon, config = name[len(drive) :].partition(":")  # a config may hold "/" (a data folder)
    return drive + head, (config or None) if colon else None, split


class JsonlRows(Sequence):
    """The rows of a JSON Lines file, read on access through an index of line offsets (8 bytes a row, and its
    line number), built by the first pass over the file (iterating it, or asking for its length or a row).
    Lines are split on `\\n` alone, the same way when indexing and when reading; a UTF-8 BOM at the start
    is skipped."""

    def __init__(self, path: Path) -> None:
        self.path, self._index = path, None

    @property
    def index(self) -> tuple[array, array]:
        """(offsets, line numbers) of the non-blank lines."""
        if self._index is None:
            for _ in self:
                pass
        return self._index

    def _lines(self) -> Iterator[tuple[int, int, bytes]]:
        """(offset, line number, bytes) of every non-blank line."""
        with self.path.open("rb") as handle:
            offset = 0
            for number, line in enumerate(handle, start=1):
                start = 3 if number == 1 and line.startswith(BOM) else 0
                if line[start:].strip():
                    yield offset + start, number, line[start:]
                offset += len(line)

    def _row(self, line: bytes, number: int) -> Row:
        try:
            return Row(json.loads(line), str(self.path), number)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"{self.path} row {number}: not valid JSON ({getattr(exc, 'msg', exc)})"
            ) from None

    def __len__(self) -> int:
        return len(self.index[0])

    def __getitem__(self, i: int) -> Row:  # type: ignore[override]
        offsets, numbers = self.index
        with self.path.open("rb") as handle:
            handle.seek(offsets[i])
            return self._row(handle.readline(), numbers[i])

    def __iter__(self) -> Iterator[Row]:
        offsets, numbers = array("q"), array("q")
        for offset, number, line in self._lines():
            offsets.append(offset)
            numbers.append(number)
            yield self._row(line, number)
        self._index = offsets, numbers


class TableRows(Sequence):
    """The rows of a `datasets.Dataset` (memory-mapped Arrow) or a list, numbered from 1."""

    def __init__(self, table: Any, source: str) -> None:
        self.table, self.source = table, source

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Row:  # type: ignore[override]
        return Row(self.table[i], self.source, i + 1)

    def __iter__(self) -> Iterator[Row]:
        return (Row(data, self.source, number) for number, data in enumerate(self.table, start=1))


def open_rows(source: str, split: str = "train") -> Sequence[Row]:
    """The rows of `source` (see the module's note for the forms it takes), read lazily where possible.

    A missing file and a line that is not JSON are `UsageError`s naming file and row; an empty source has no
    rows, which its reader refuses (`no_rows`) once it has read them: a JSONL file is read once.
    """
    name, config, named_split = parse_source(source)
    split = named_split or split
    path = Path(name).expanduser()
    if path.is_dir():
        rows = _open_folder(path, config, split, source)
    elif path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise UsageError(
                f"{source}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet, .csv or .tsv"
            )
        if config or named_split:
            raise UsageError(f"{source}: a file has no splits or configs; name the file alone")
        rows = _open_file(path)
    elif is_local(name):
        raise UsageError(f"{source}: file does not exist")
    else:
        rows = TableRows(_load_dataset(name, config, split, f"{source}: not a local file and"), source)
    return rows


def is_local(name: str) -> bool:
    """Whether `name` (a source's name, less `:CONFIG` and `@SPLIT`: `parse_source`) is a local path, existing
    or not: it exists, ends like a data file, or starts like a path. Anything else is a dataset name that
    `open_rows` asks `datasets.load_dataset` (the hub) for."""
    return (
        Path(name).expanduser().exists()
        or Path(name).suffix in LOCAL_SUFFIXES
        or name.startswith((".", "/", "~"))
    )


def no_rows(source: str) -> UsageError:
    return UsageError(f"{source}: no rows (empty file or dataset)")


def read_rows(source: str, split: str = "train") -> list[Row]:
    """All rows of `source` in a list (see `open_rows`); none is a UsageError."""
    rows = list(open_rows(source, split))
    if not rows:
        raise no_rows(source)
    return rows


def _open_file(path: Path) -> Sequence[Row]:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix == ".tsv" else ","
        table = _load_dataset("csv", None, "train", f"{path}:", data_files=str(path), delimiter=delimiter)
        return TableRows(table, str(path))
    if path.suffix == ".json" and _starts_with_bracket(path):
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return TableRows(records, str(path))
    return JsonlRows(path)


def _starts_with_bracket(path: Path) -> bool:
    """Whether a .json file holds one array (read whole) rather than JSON Lines, from its first bytes."""
    with path.open("rb") as handle:
        return handle.read(4096).removeprefix(BOM).lstrip().startswith(b"[")


def _read_parquet(path: Path) -> Sequence[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    return TableRows(_ArrowRecords(table), str(path))


class _ArrowRecords(Sequence):
    """An Arrow table's rows as dicts, converted one at a time (the table stays columnar)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.table.slice(i, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[dict]:
        for batch in self.table.to_batches():
            yield from batch.to_pylist()


def _open_folder(path: Path, config: str | None, split: str, source: str) -> Sequence[Row]:
    """A folder written by `save_to_disk`, or a folder of data files (read as `datasets` reads a hub repo)."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise UsageError(f"{source}: no split {split!r} (has {', '.join(dataset)})")
            dataset = dataset[split]
        return TableRows(dataset, source)
    problem = f"{source}: not a dataset saved by `datasets` (save_to_disk), and as a folder of data files it"
    return TableRows(_load_dataset(str(path), config, split, problem), source)


def _load_dataset(name: str, config: str | None, split: str, problem: str, **options: Any) -> Any:
    """`datasets.load_dataset` with the config taken as a config name, or else as a data folder (HH-RLHF's
    subsets); any failure is the user's to fix, in one line that starts with `problem`."""
    import datasets

    try:
        try:
            return datasets.load_dataset(name, config, split=split, **options)
        except ValueError:
            if config is None or not _not_a_config_name(name, config):
                raise
            return datasets.load_dataset(name, data_dir=config, split=split, **options)
    except Exception as exc:  # offline, unknown name, bad split or config: all are the user's to fix
        raise UsageError(f"{problem} could not be loaded with datasets ({first_line(exc)})") from None


def _not_a_config_name(name: str, config: str) -> bool:
    """Whether the dataset `name` lists its config names and `config` is not one of them (so it may be a data
    folder). Asked of the dataset, not read from an error's text: `datasets` raises a plain ValueError for
    an unknown config as for much else. False when the names cannot be listed (the first error stands)."""
    import datasets

    try:
        return config not in datasets.get_dataset_config_names(name)
    except Exception:  # offline, no such dataset: the load's own error says more
        return False

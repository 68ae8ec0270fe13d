"""Data as people have it: their column names mapped to ours, before a row is validated.

`columns.prompt=question` reads the prompt from the column `question`; `columns.prompt=instruction,input`
joins several columns with a blank line (Alpaca: the instruction, then its input when there is one).
`columns.label` names a 0/1 column that says whether the `chosen` column is the preferred one (Stanford SHP's
`labels`: 1 when `human_ref_A` is preferred; 0 swaps chosen and rejected, and their scores). Unmapped fields
keep their names.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from rlhfkit.data.sources import Row
from rlhfkit.errors import UsageError


def _join(row: Row, names: list[str], field: str) -> Any:
    """The value of `field` from the user's columns `names`: one column as it is, several as text joined
    by a blank line (empty ones left out)."""
    missing = [n for n in names if n not in row.data]
    if missing:
        raise UsageError(
            f"{row.where()}: column {missing[0]!r} (mapped to {field!r} by columns.{field}) is missing; "
            f"the row has {', '.join(map(repr, row.data))}"
        )
    if len(names) == 1:
        return row.data[names[0]]
    parts = [row.data[n] for n in names if row.data[n] is not None]  # an empty CSV cell reads as None
    if not all(isinstance(p, str) for p in parts):
        raise UsageError(f"{row.where()}: columns.{field} joins columns that are not all text")
    return "\n\n".join(p for p in parts if p.strip())


def rename(row: Row, columns: Any, used: tuple[str, ...]) -> Row:
    """The row with our field names (a new Row; the original is not changed) for the fields in `used` (what
    the data's kind reads: a mapping of the others is not applied). `columns` is a
    `rlhfkit.config.ColumnsConfig`."""
    names = {f.name: getattr(columns, f.name) for f in fields(columns) if f.name in used}
    label = names.pop("label", "")
    mapped = {field: columns.split(",") for field, columns in names.items() if columns}
    if not mapped and not label:
        return row
    if not isinstance(row.data, dict):
        return row  # validation names the problem
    data = dict(row.data)
    for field, names in mapped.items():
        data[field] = _join(row, [n.strip() for n in names], field)
    if label:
        value = _join(row, [label], "label")
        if value not in (0, 1, True, False):
            raise UsageError(f"{row.where()}: column {label!r} (columns.label) must be 0 or 1, got {value!r}")
        if not value:  # the `rejected` column holds the preferred response
            data["chosen"], data["rejected"] = data.get("rejected"), data.get("chosen")
            if "score_chosen" in data or "score_rejected" in data:
                data["score_chosen"], data["score_rejected"] = (
                    data.get("score_rejected"),
                    data.get("score_chosen"),
                )
    return Row(data, row.source, row.number)

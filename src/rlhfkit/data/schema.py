"""Row validation for the three data formats. Every problem is a `UsageError` naming file, row and field.

- SFT: `{"prompt": str, "completion": str}` or `{"messages": [{"role", "content"}, ...]}`.
- Preferences: `{"prompt": str, "chosen": str, "rejected": str, "margin"?: float}`, or chosen/rejected as
  message lists (with `prompt` a message list, or absent when chosen/rejected hold the whole conversation).
- Prompts: `{"prompt": str}` or `{"messages": [...]}`.
"""

from __future__ import annotations

from typing import Any, Literal

from rlhfkit.data.sources import Row
from rlhfkit.errors import UsageError

Kind = Literal["sft", "preference", "prompt"]
ROLES = ("system", "user", "assistant")


def _fail(row: Row, field: str, problem: str) -> UsageError:
    return UsageError(f"{row.where()}: field {field!r} {problem}")


def _text(row: Row, field: str) -> str:
    if field not in row.data:
        raise _fail(row, field, "is missing")
    value = row.data[field]
    if not isinstance(value, str):
        raise _fail(row, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _fail(row, field, "is empty")
    return value


def _messages(row: Row, field: str) -> list[dict[str, str]]:
    value = row.data.get(field)
    if not isinstance(value, list) or not value:
        raise _fail(row, field, "must be a non-empty list of {role, content} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _fail(row, f"{field}[{i}].role", f"must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise _fail(row, f"{field}[{i}].content", "must be a non-empty string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _is_conversational(row: Row, *fields: str) -> bool:
    return any(isinstance(row.data.get(f), list) for f in fields)


def validate_row(row: Row, kind: Kind) -> dict[str, Any]:
    """The row's fields in normal form; raises `UsageError` for the first problem found."""
    if not isinstance(row.data, dict):
        raise UsageError(
            f"{row.where()}: expected an object with named fields, got {type(row.data).__name__}"
        )
    if kind == "sft":
        if "messages" in row.data:
            messages = _messages(row, "messages")
            if not any(m["role"] == "assistant" for m in messages):
                raise _fail(row, "messages", "has no assistant turn to learn from")
            return {"messages": messages}
        return {"prompt": _text(row, "prompt"), "completion": _text(row, "completion")}
    if kind == "prompt":
        if "messages" in row.data:
            return {"messages": _messages(row, "messages")}
        return {"prompt": _text(row, "prompt")}
    if kind == "preference":
        return _validate_preference(row)
    raise ValueError(f"unknown data kind {kind!r}")


def _validate_preference(row: Row) -> dict[str, Any]:
    if _is_conversational(row, "chosen", "rejected"):
        chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
        prompt = _messages(row, "prompt") if "prompt" in row.data else []
    else:
        prompt, chosen, rejected = _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected")
    if chosen == rejected:
        raise _fail(row, "rejected", "is identical to 'chosen'")
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if row.data.get("margin") is not None:
        margin = row.data["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise _fail(row, "margin", f"must be a number, got {type(margin).__name__}")
        out["margin"] = float(margin)
    return out


def load_records(source: str, kind: Kind, split: str = "train") -> list[dict[str, Any]]:
    """Read and validate every row of `source` before anything else happens."""
    from rlhfkit.data.sources import read_rows

    records = [validate_row(row, kind) for row in read_rows(source, split)]
    if (
        kind == "preference"
        and any("margin" in r for r in records)
        and not all("margin" in r for r in records)
    ):
        raise UsageError(f"{source}: field 'margin' must be given on every row or on none")
    return records

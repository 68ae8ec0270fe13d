"""Row validation for the three data formats. Every problem is a `UsageError` naming file, row and field.

- SFT (and ptx): `{"prompt": str, "completion": str}`, `{"messages": [{"role", "content"}, ...]}`, or plain
  text `{"text": str}` (continued pretraining: every token is learnt).
- Preferences: `{"prompt": str, "chosen": str, "rejected": str, "margin"?: float}`, or chosen/rejected as
  message lists. The prompt may be implicit (see `_validate_preference`): texts that share a beginning
  (HH-RLHF), or conversations that share their leading messages (UltraFeedback).
- Prompts: `{"prompt": str}` or `{"messages": [...]}`.

Rows are renamed first when a `columns` mapping is given (`rlhfkit.data.columns`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any, Literal

from rlhfkit.data.columns import rename
from rlhfkit.data.sources import Row
from rlhfkit.errors import UsageError

Kind = Literal["sft", "preference", "prompt"]
# the fields each kind reads: a column mapping renames those alone
KIND_FIELDS = {
    "sft": ("prompt", "completion", "messages", "text"),
    "preference": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "label"),
    "prompt": ("prompt", "messages"),
}
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


def validate_row(row: Row, kind: Kind, margin_from_scores: bool = False) -> dict[str, Any]:
    """The row's fields in normal form; raises `UsageError` for the first problem found."""
    if not isinstance(row.data, dict):
        raise UsageError(
            f"{row.where()}: expected an object with named fields, got {type(row.data).__name__}"
        )
    if kind == "sft":
        if "text" in row.data and not {"prompt", "completion", "messages"} & set(row.data):
            return {"text": _text(row, "text")}
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
        return _validate_preference(row, margin_from_scores)
    raise ValueError(f"unknown data kind {kind!r}")


ASSISTANT = "\n\nAssistant:"  # HH-RLHF's turn marker: its implicit prompt ends with the last shared one


def implicit_text_prompt(chosen: str, rejected: str) -> str:
    """The prompt two plain-text responses share: their common beginning through its last
    `\\n\\nAssistant:` (HH-RLHF), else cut back to its last whitespace so that no word is split; "" when
    they share nothing.

    Spaces, tabs and other blanks (NBSP, U+3000: any whitespace but a line break) before the cut belong to
    the response, as in TRL (`"the movie was"` + `" great"`): BPE and SentencePiece tokenizers attach a
    space to the word after it (`Ġgreat`, `▁great`), which is how the policy emits it after a prompt. Line
    breaks stay with the prompt: they end its line and are tokens of their own."""
    shared = os.path.commonprefix([chosen, rejected])
    marker = shared.rfind(ASSISTANT)
    if marker >= 0:
        return shared[: marker + len(ASSISTANT)]
    boundaries = [m.end() for m in re.finditer(r"\s", shared)]
    # the same whitespace as the boundaries (NBSP, U+3000 too) less the line breaks; \Z, since $ would also
    # match before a final line break and strip the spaces ahead of it
    return re.sub(r"[^\S\r\n]+\Z", "", shared[: boundaries[-1]]) if boundaries else ""


def _shared_messages(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages two conversations share."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def _conversational_pair(row: Row) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) messages. The prompt is a `prompt` message list; or a `prompt` string, the
    user turn (taken off the front of chosen and rejected where they repeat it: UltraFeedback-H4); or the
    leading messages chosen and rejected share (trl-lib's UltraFeedback)."""
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    prompt = row.data.get("prompt")
    if isinstance(prompt, list):
        return _messages(row, "prompt"), chosen, rejected
    if isinstance(prompt, str):
        if not prompt.strip():
            raise _fail(row, "prompt", "is empty")
        user = {"role": "user", "content": prompt}

        def answers(turns: list[dict], field: str) -> list[dict]:
            repeats = turns[0]["role"] == "user" and turns[0]["content"].strip() == prompt.strip()
            if repeats and len(turns) == 1:
                raise _fail(row, field, "holds the prompt and no answer")
            return turns[1:] if repeats else turns

        return [user], answers(chosen, "chosen"), answers(rejected, "rejected")
    if prompt is not None:
        raise _fail(row, "prompt", "must be a string or a list of {role, content} messages")
    shared = _shared_messages(chosen, rejected)
    if shared == 0:
        raise _fail(row, "chosen", "shares no leading message with 'rejected': give the prompt in 'prompt'")
    if shared == min(len(chosen), len(rejected)):
        raise _fail(row, "rejected", "adds no message of its own to what it shares with 'chosen'")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _text_pair(row: Row) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text: a `prompt` field, or the beginning the two share (HH-RLHF)."""
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if "prompt" in row.data:
        return _text(row, "prompt"), chosen, rejected
    prompt = implicit_text_prompt(chosen, rejected)
    if not prompt:
        raise _fail(row, "chosen", "shares no beginning with 'rejected' and there is no 'prompt' field")
    if len(prompt) in (len(chosen), len(rejected)):
        raise _fail(row, "rejected", "is 'chosen' cut short or extended: their shared part leaves one empty")
    responses = {"chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}
    for field, response in responses.items():
        if not response.strip():  # e.g. HH-RLHF's "\n\nAssistant: " with nothing said after it
            raise _fail(row, field, "has an empty response after the prompt it shares with the other")
    return prompt, responses["chosen"], responses["rejected"]


def _score(row: Row, field: str) -> float:
    value = row.data.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(row, field, f"must be a number (margin_from_scores), got {value!r}")
    return float(value)


def _validate_preference(row: Row, margin_from_scores: bool = False) -> dict[str, Any]:
    if _is_conversational(row, "chosen", "rejected"):
        prompt, chosen, rejected = _conversational_pair(row)
    else:
        prompt, chosen, rejected = _text_pair(row)
    if chosen == rejected:
        raise _fail(row, "rejected", "is identical to 'chosen'")
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin_from_scores:
        out["margin"] = _score(row, "score_chosen") - _score(row, "score_rejected")
    elif row.data.get("margin") is not None:
        margin = row.data["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise _fail(row, "margin", f"must be a number, got {type(margin).__name__}")
        out["margin"] = float(margin)
    return out


def load_records(
    source: str,
    kind: Kind,
    split: str = "train",
    columns: Any = None,
    margin_from_scores: bool = False,
) -> list[dict[str, Any]]:
    """Read and validate every row of `source` before anything else happens (`columns`: a
    `rlhfkit.config.ColumnsConfig` mapping the user's column names to ours)."""
    from rlhfkit.data.sources import read_rows

    records = [record(row, kind, columns, margin_from_scores) for row in read_rows(source, split)]
    if (
        kind == "preference"
        and any("margin" in r for r in records)
        and not all("margin" in r for r in records)
    ):
        raise UsageError(f"{source}: field 'margin' must be given on every row or on none")
    return records


def record(row: Row, kind: Kind, columns: Any, margin_from_scores: bool = False) -> dict[str, Any]:
    """One row of `kind` in normal form: the user's columns mapped to our fields, then validated."""
    renamed = rename(row, columns, KIND_FIELDS[kind]) if columns is not None else row
    return validate_row(renamed, kind, margin_from_scores)


class LazyRecords(Sequence):
    """The validated records of a source, read one at a time when asked for: every row is checked once,
    up front (the same errors as `load_records`), and only an index is kept (`open_rows`). For corpora much
    larger than memory should hold: PPO's ptx data."""

    def __init__(self, source: str, kind: Kind, columns: Any = None) -> None:
        from rlhfkit.data.sources import no_rows, open_rows

        self.rows, self.kind, self.columns = open_rows(source), kind, columns
        for row in self.rows:  # the one pass over the file: it also builds a JSONL file's index
            record(row, kind, columns)
        if not len(self.rows):
            raise no_rows(source)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return record(self.rows[i], self.kind, self.columns)

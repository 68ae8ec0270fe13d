import pytest

from rlhfkit.data import Row, load_records, validate_row
from rlhfkit.errors import UsageError

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

BAD_ROWS = [
    # (kind, row, message naming the field)
    ("sft", {"completion": "b"}, "field 'prompt' is missing"),
    ("sft", {"prompt": "a"}, "field 'completion' is missing"),
    ("sft", {"prompt": 3, "completion": "b"}, "field 'prompt' must be a string, got int"),
    ("sft", {"prompt": "a", "completion": "  "}, "field 'completion' is empty"),
    ("sft", {"messages": []}, "field 'messages' must be a non-empty list"),
    ("sft", {"messages": [{"role": "user", "content": "hi"}]}, "field 'messages' has no assistant turn"),
    ("sft", {"messages": [{"role": "bot", "content": "x"}]}, r"field 'messages\[0\].role' must be one of"),
    (
        "sft",
        {"messages": [{"role": "user", "content": ""}]},
        r"field 'messages\[0\].content' must be a non-empty",
    ),
    ("sft", ["not", "an", "object"], "expected an object with named fields, got list"),
    ("preference", {"prompt": "p", "chosen": "x"}, "field 'rejected' is missing"),
    (
        "preference",
        {"prompt": "p", "chosen": "x", "rejected": "x"},
        "field 'rejected' is identical to 'chosen'",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "x", "rejected": None},
        "field 'rejected' must be a string, got NoneType",
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "x", "rejected": "y", "margin": "1"},
        "field 'margin' must be a number",
    ),
    ("preference", {"chosen": MSGS, "rejected": "y"}, "field 'rejected' must be a non-empty list"),
    ("prompt", {"text": "a"}, "field 'prompt' is missing"),
    ("prompt", {"prompt": ""}, "field 'prompt' is empty"),
]


@pytest.mark.parametrize("kind,data,message", BAD_ROWS)
def test_bad_rows_name_file_row_and_field(kind, data, message):
    with pytest.raises(UsageError, match=rf"^d\.jsonl row 7: .*{message}"):
        validate_row(Row(data, "d.jsonl", 7), kind)


GOOD_ROWS = [
    ("sft", {"prompt": "a", "completion": "b", "extra": 1}, {"prompt": "a", "completion": "b"}),
    ("sft", {"messages": MSGS}, {"messages": MSGS}),
    (
        "preference",
        {"prompt": "p", "chosen": "x", "rejected": "y"},
        {"prompt": "p", "chosen": "x", "rejected": "y"},
    ),
    (
        "preference",
        {"prompt": "p", "chosen": "x", "rejected": "y", "margin": 2},
        {"prompt": "p", "chosen": "x", "rejected": "y", "margin": 2.0},
    ),
    (
        "preference",
        {"chosen": MSGS, "rejected": MSGS[:1] + [{"role": "assistant", "content": "bye"}]},
        {"prompt": [], "chosen": MSGS, "rejected": MSGS[:1] + [{"role": "assistant", "content": "bye"}]},
    ),
    ("prompt", {"prompt": "a"}, {"prompt": "a"}),
    ("prompt", {"messages": MSGS[:1]}, {"messages": MSGS[:1]}),
]


@pytest.mark.parametrize("kind,data,expected", GOOD_ROWS)
def test_good_rows_in_normal_form(kind, data, expected):
    assert validate_row(Row(data, "d.jsonl", 1), kind) == expected


def test_margin_on_some_rows_only(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "p", "chosen": "x", "rejected": "y", "margin": 1}\n'
        '{"prompt": "p", "chosen": "x", "rejected": "y"}\n'
    )
    with pytest.raises(UsageError, match="'margin' must be given on every row or on none"):
        load_records(str(path), "preference")

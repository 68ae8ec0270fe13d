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
        {"prompt": MSGS[:1], "chosen": MSGS[1:], "rejected": [{"role": "assistant", "content": "bye"}]},
    ),
    ("prompt", {"prompt": "a"}, {"prompt": "a"}),
    ("prompt", {"messages": MSGS[:1]}, {"messages": MSGS[:1]}),
    ("sft", {"text": "a whole document"}, {"text": "a whole document"}),
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


# --- implicit prompts (HH-RLHF, UltraFeedback), margins from scores -------------------------------------

TURNS = "\n\nHuman: Is the movie good?\n\nAssistant: It is great.\n\nHuman: Why?\n\nAssistant:"
HH = {"chosen": TURNS + " Fine acting.", "rejected": TURNS + " No idea."}
USER = {"role": "user", "content": "Is the movie good?"}
GOOD, BAD = {"role": "assistant", "content": "Yes, great."}, {"role": "assistant", "content": "No."}


def preference(data, **options):
    return validate_row(Row(data, "p.jsonl", 3), "preference", **options)


def test_hh_rlhf_prompt_ends_with_the_last_shared_assistant_marker():
    record = preference(HH)
    assert record["prompt"].endswith("\n\nHuman: Why?\n\nAssistant:")
    assert record["chosen"] == " Fine acting." and record["rejected"] == " No idea."


def test_plain_texts_without_a_marker_share_up_to_a_word_boundary():
    # shared "the movie was gr" -> cut back to the last whitespace, "the movie was ", whose space goes with
    # the answers (TRL's convention: " great" tokenises as PPO's policy emits it after the prompt)
    record = preference({"chosen": "the movie was great", "rejected": "the movie was grim"})
    assert record == {"prompt": "the movie was", "chosen": " great", "rejected": " grim"}
    issue = preference(
        {"chosen": "the movie was great and lovely.", "rejected": "the movie was awful and boring."}
    )
    assert issue == {
        "prompt": "the movie was",
        "chosen": " great and lovely.",
        "rejected": " awful and boring.",
    }


@pytest.mark.parametrize(
    "chosen, rejected, prompt",
    [
        ("the movie was  great", "the movie was  grim", "the movie was"),  # a run of spaces: all answer
        ("Title\nGreat film", "Title\nBad film", "Title\n"),  # a line break ends the prompt's line
        ("a b\n  great", "a b\n  grim", "a b\n"),  # the indent after it goes with the answer
    ],
)
def test_spaces_go_with_the_answer_and_line_breaks_with_the_prompt(chosen, rejected, prompt):
    record = preference({"chosen": chosen, "rejected": rejected})
    assert record == {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}


@pytest.mark.parametrize(
    "data, field",
    [
        ({"chosen": TURNS + " ", "rejected": TURNS + " No."}, "chosen"),  # HH's marker, then only a space
        ({"chosen": "the movie was great", "rejected": "the movie was \n"}, "rejected"),
    ],
)
def test_a_response_of_whitespace_only_is_refused_as_empty(data, field):
    with pytest.raises(UsageError, match=rf"^p\.jsonl row 3: field '{field}' has an empty response"):
        preference(data)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"chosen": "great", "rejected": "awful"}, "field 'chosen' shares no beginning with 'rejected'"),
        ({"chosen": TURNS, "rejected": TURNS + " No."}, "field 'rejected' is 'chosen' cut short"),
        ({"chosen": [GOOD], "rejected": [BAD]}, "field 'chosen' shares no leading message"),
        ({"chosen": [USER, GOOD], "rejected": [USER]}, "field 'rejected' adds no message"),
        (
            {"prompt": 3, "chosen": [USER, GOOD], "rejected": [USER, BAD]},
            "field 'prompt' must be a string or",
        ),
    ],
)
def test_pairs_that_share_nothing_or_everything_are_refused(data, message):
    with pytest.raises(UsageError, match=rf"^p\.jsonl row 3: {message}"):
        preference(data)


def test_ultrafeedback_h4_prompt_string_beside_conversations_that_repeat_it():
    record = preference({"prompt": "Is the movie good?", "chosen": [USER, GOOD], "rejected": [USER, BAD]})
    assert record == {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}


def test_a_prompt_string_beside_answers_alone_becomes_the_user_turn():
    record = preference({"prompt": "Is the movie good?", "chosen": [GOOD], "rejected": [BAD]})
    assert record == {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}


def test_trl_lib_ultrafeedback_conversations_alone_share_their_user_turn():
    record = preference(
        {"chosen": [USER, GOOD], "rejected": [USER, BAD], "score_chosen": 8.5, "score_rejected": 3}
    )
    assert record == {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}
    scored = preference(
        {"chosen": [USER, GOOD], "rejected": [USER, BAD], "score_chosen": 8.5, "score_rejected": 3},
        margin_from_scores=True,
    )
    assert scored["margin"] == 5.5


def test_margin_from_scores_needs_both_scores():
    with pytest.raises(UsageError, match="field 'score_rejected' must be a number"):
        preference(
            {"prompt": "p", "chosen": "x", "rejected": "y", "score_chosen": 1}, margin_from_scores=True
        )


def test_columns_rename_join_and_swap_by_label():
    from rlhfkit.config import ColumnsConfig
    from rlhfkit.data.schema import record

    alpaca = ColumnsConfig(prompt="instruction,input", completion="output")
    row = Row({"instruction": "Summarise.", "input": "A long text.", "output": "Short."}, "a.json", 1)
    assert record(row, "sft", alpaca) == {"prompt": "Summarise.\n\nA long text.", "completion": "Short."}
    no_input = Row({"instruction": "Say hi.", "input": "", "output": "Hi."}, "a.json", 2)
    assert record(no_input, "sft", alpaca)["prompt"] == "Say hi."
    # a mapping of fields a kind does not read is not applied: plain text beside a pair mapping
    text = Row({"text": "A document."}, "corpus.jsonl", 1)
    assert record(text, "sft", ColumnsConfig(chosen="response_j")) == {"text": "A document."}
    shp = ColumnsConfig(
        prompt="history", chosen="human_ref_A", rejected="human_ref_B", label="labels",
        score_chosen="score_A", score_rejected="score_B",
    )  # fmt: skip
    data = {
        "history": "Which?",
        "human_ref_A": "A.",
        "human_ref_B": "B.",
        "labels": 0,
        "score_A": 2,
        "score_B": 9,
    }
    pair = record(Row(data, "shp", 1), "preference", shp, margin_from_scores=True)
    assert pair == {
        "prompt": "Which?",
        "chosen": "B.",
        "rejected": "A.",
        "margin": 7.0,
    }  # label 0: B preferred
    with pytest.raises(
        UsageError, match="shp row 1: column 'question' \\(mapped to 'prompt' by columns.prompt\\) is missing"
    ):
        record(Row(data, "shp", 1), "preference", ColumnsConfig(prompt="question"))


def test_tabs_count_as_word_boundaries():
    record = preference({"chosen": "Q:\tthe movie\tyes", "rejected": "Q:\tthe movie\tno"})
    assert record == {"prompt": "Q:\tthe movie", "chosen": "\tyes", "rejected": "\tno"}


def test_other_spaces_go_with_the_answers_like_a_space():
    """NBSP and U+3000 count as word boundaries (\\s), so they go with the answers too, as a space would;
    a line break stays with the prompt, and so does a space before it (the line break ends the cut)."""
    record = preference({"chosen": "Q: the\u00a0movie\u00a0yes", "rejected": "Q: the\u00a0movie\u00a0no"})
    assert record == {"prompt": "Q: the\u00a0movie", "chosen": "\u00a0yes", "rejected": "\u00a0no"}
    record = preference({"chosen": "映画\u3000\u3000良い", "rejected": "映画\u3000\u3000悪い"})
    assert record == {"prompt": "映画", "chosen": "\u3000\u3000良い", "rejected": "\u3000\u3000悪い"}
    record = preference({"chosen": "Q: the movie \nyes", "rejected": "Q: the movie \nno"})
    assert record == {"prompt": "Q: the movie \n", "chosen": "yes", "rejected": "no"}


def test_a_prompt_string_is_taken_off_each_side_that_repeats_it():
    """H4 rows where only one side repeats the user turn, and an empty prompt."""
    record = preference({"prompt": "Is the movie good?", "chosen": [USER, GOOD], "rejected": [BAD]})
    assert record == {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}
    with pytest.raises(UsageError, match="field 'prompt' is empty"):
        preference({"prompt": "  ", "chosen": [USER, GOOD], "rejected": [USER, BAD]})
    with pytest.raises(UsageError, match="field 'rejected' holds the prompt and no answer"):
        preference({"prompt": "Is the movie good?", "chosen": [USER, GOOD], "rejected": [USER]})

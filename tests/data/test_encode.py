import logging

import pytest

from rlhfkit.data import IGNORE, encode_pairs, encode_prompts, encode_sft, pad
from rlhfkit.errors import UsageError


def ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def test_plain_rows_learn_the_completion_and_eos_only(tiny_tokenizer):
    tok = tiny_tokenizer
    [example] = encode_sft([{"prompt": "the movie was", "completion": " great."}], tok, 64)
    prompt, completion = ids(tok, "the movie was", special=True), ids(tok, " great.") + [tok.eos_token_id]
    assert prompt[0] == tok.bos_token_id
    assert example.input_ids == prompt + completion
    assert example.labels == [IGNORE] * len(prompt) + completion


def test_chat_rows_learn_assistant_turns_only(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "the movie"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "was great"},
    ]
    [example] = encode_sft([{"messages": messages}], tok, 128)
    assert example.input_ids == ids(tok, tok.apply_chat_template(messages, tokenize=False))
    learned = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    # exactly the two assistant contents, each closed by EOS
    assert learned == ids(tok, "the movie") + [tok.eos_token_id] + ids(tok, "was great") + [tok.eos_token_id]


def test_long_prompts_truncated_from_the_left_and_counted(tiny_tokenizer, caplog):
    tok = tiny_tokenizer
    rows = [{"prompt": "the movie was " * 20, "completion": " great."}, {"prompt": "hi", "completion": " ok"}]
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        long, short = encode_sft(rows, tok, max_length=16, truncation="left", source="d.jsonl")
    assert len(long.input_ids) == 16
    assert long.labels[-len(ids(tok, " great.")) - 1 :] == ids(tok, " great.") + [tok.eos_token_id]
    assert "d.jsonl: 1 of 2 rows longer than max_length=16: prompts truncated from the left" in caplog.text
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        kept = encode_sft(rows, tok, max_length=16, truncation="drop", source="d.jsonl")
    assert kept == [short]
    assert "1 of 2 rows longer than max_length=16 were dropped" in caplog.text


def test_completion_longer_than_max_length_is_dropped_and_all_dropped_is_an_error(tiny_tokenizer):
    rows = [{"prompt": "a", "completion": " great." * 30}]
    with pytest.raises(UsageError, match="every row is longer than max_length=8"):
        encode_sft(rows, tiny_tokenizer, max_length=8)


def test_pairs_share_the_prompt_and_end_in_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    [pair] = encode_pairs(
        [{"prompt": "the pizza was", "chosen": " great.", "rejected": " awful.", "margin": 1.0}], tok, 64
    )
    prompt = ids(tok, "the pizza was", special=True)
    assert pair.chosen == prompt + ids(tok, " great.") + [tok.eos_token_id]
    assert pair.rejected == prompt + ids(tok, " awful.") + [tok.eos_token_id]
    assert pair.margin == 1.0


def test_conversational_pairs(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = [{"role": "user", "content": "hi"}]
    record = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "great"}],
        "rejected": [{"role": "assistant", "content": "awful"}],
    }
    [pair] = encode_pairs([record], tok, 64)
    assert pair.chosen == ids(tok, tok.apply_chat_template(prompt + record["chosen"], tokenize=False))
    assert pair.chosen[-1] == tok.eos_token_id


def test_prompts_plain_and_chat(tiny_tokenizer):
    tok = tiny_tokenizer
    plain, chat = encode_prompts(
        [{"prompt": "the movie was"}, {"messages": [{"role": "user", "content": "hi"}]}], tok, 64
    )
    assert plain == ids(tok, "the movie was", special=True)
    assert tok.decode(chat).endswith("<|assistant|>\n")


def test_pad_right_and_left():
    ids_, mask = pad([[1, 2, 3], [4]], value=0)
    assert ids_.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids_, mask = pad([[1, 2, 3], [4]], value=0, side="left")
    assert ids_.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_truncated_pairs_lose_the_same_prompt_tokens_on_both_sides(tiny_tokenizer):
    tok = tiny_tokenizer
    row = {
        "prompt": "the movie was " * 6,
        "chosen": " great and lovely and wonderful.",
        "rejected": " awful.",
    }
    [pair] = encode_pairs([row], tok, max_length=24)
    prompt = ids(tok, row["prompt"], special=True)
    chosen_tail = ids(tok, row["chosen"]) + [tok.eos_token_id]
    rejected_tail = ids(tok, row["rejected"]) + [tok.eos_token_id]
    assert len(pair.chosen) == 24  # the longer side fills max_length
    kept = 24 - len(chosen_tail)
    assert pair.chosen == prompt[-kept:] + chosen_tail
    assert pair.rejected == prompt[-kept:] + rejected_tail  # the same context as chosen


def test_conversational_pairs_end_at_eos_even_if_the_template_adds_a_newline(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = tok.chat_template.replace("{{ eos_token }}", "{{ eos_token }}\n")
    record = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "great"}],
        "rejected": [{"role": "assistant", "content": "awful"}],
    }
    [pair] = encode_pairs([record], tok, 64)
    assert pair.chosen[-1] == tok.eos_token_id and pair.rejected[-1] == tok.eos_token_id

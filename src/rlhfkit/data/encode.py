"""Turning validated records into token ids: SFT sequences with loss labels, preference pairs, prompts.

Plain rows: the prompt is tokenised with the tokenizer's special tokens (BOS where it uses one), the
completion without, and EOS is appended: the same token ids the PPO rollout sees. Conversational rows go
through the tokenizer's chat template; the loss covers the assistant turns only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit.errors import UsageError

IGNORE = -100  # label of a token that carries no loss
log = logging.getLogger("rlhfkit")
Truncation = Literal["left", "drop"]


@dataclass(frozen=True)
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside the completion / assistant turns


@dataclass(frozen=True)
class PairExample:
    chosen: list[int]
    rejected: list[int]
    margin: float | None = None
    prompt_length: int = 0  # the leading tokens of both sequences that are the prompt (DPO's loss skips them)


def _tokens(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def render_conversation(tokenizer: Any, messages: Sequence[dict], generation_prompt: bool = False) -> str:
    """`messages` rendered with the chat template as text (a UsageError without one)."""
    if not messages:
        return ""
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError("conversational rows need a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def _chat_segments(tokenizer: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_assistant) pieces whose concatenation is the rendered conversation up to its last
    assistant turn; each assistant piece is what the model must produce after the generation prompt."""
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_conversation(tokenizer, messages[:i], generation_prompt=True)
        full = render_conversation(tokenizer, messages[: i + 1])
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise UsageError(
                "the chat template does not render conversations as growing prefixes; "
                "use prompt/completion rows with this tokenizer"
            )
        segments += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
        done = full
    return segments


def _fit(length: int, keep_tail: int, max_length: int, truncation: Truncation) -> int | None:
    """How many tokens to cut from the left of a `length`-token sequence to fit max_length without touching
    its last `keep_tail` tokens (and keeping at least one before them); None: drop the row."""
    if length <= max_length:
        return 0
    if truncation == "drop" or keep_tail >= max_length:
        return None
    return length - max_length


def _report(source: str, cut: int, dropped: int, total: int, max_length: int, quiet: bool = False) -> None:
    if cut and not quiet:
        log.warning(
            "%s: %d of %d rows longer than max_length=%d: prompts truncated from the left "
            "(plain text at its end)",
            source,
            cut,
            total,
            max_length,
        )
    if dropped and not quiet:
        log.warning(
            "%s: %d of %d rows longer than max_length=%d were dropped", source, dropped, total, max_length
        )
    if total and dropped == total and not quiet:
        raise UsageError(f"{source}: every row is longer than max_length={max_length}; raise max_length")


def encode_sft(
    records: list[dict],
    tokenizer: Any,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "data",
    quiet: bool = False,
) -> list[SFTExample]:
    """SFT sequences; labels are IGNORE except on the completion (plain rows) or assistant turns; a text row
    is learnt whole, cut at its end when it is longer than `max_length` (dropped with `truncation="drop"`)."""
    examples, cut, dropped = [], 0, 0
    for record in records:
        if "text" in record:
            ids = _tokens(tokenizer, record["text"], special=True) + [tokenizer.eos_token_id]
            if len(ids) > max_length and truncation == "drop":
                dropped += 1
                continue
            cut += len(ids) > max_length
            examples.append(SFTExample(ids[:max_length], ids[:max_length]))
            continue
        if "messages" in record:
            pieces = [
                (_tokens(tokenizer, text), learn)
                for text, learn in _chat_segments(tokenizer, record["messages"])
            ]
        else:
            completion = _tokens(tokenizer, record["completion"]) + [tokenizer.eos_token_id]
            pieces = [(_tokens(tokenizer, record["prompt"], special=True), False), (completion, True)]
        ids = [t for piece, _ in pieces for t in piece]
        labels = [t if learn else IGNORE for piece, learn in pieces for t in piece]
        start = _fit(len(ids), len(pieces[-1][0]), max_length, truncation)
        if start is None:
            dropped += 1
            continue
        cut += start > 0
        examples.append(SFTExample(ids[start:], labels[start:]))
    _report(source, cut, dropped, len(records), max_length, quiet)
    return examples


PROBE = "rlhfkit-probe"  # an assistant message's text, to find what a chat template renders after it


def special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens: its named ones and every added token marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", 0)}


def end_of_turn(tokenizer: Any) -> int:
    """The token that closes an assistant turn: the first special token the chat template renders after an
    assistant message (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, EOS for templates that close turns
    with it); EOS without a template, or when none follows the message. A conversation's finished response is
    read there, by `rm` and by PPO (which must then stop on it: `stop_tokens`)."""
    eos = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None) is None:
        return eos
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}]
    try:
        rendered = render_conversation(tokenizer, turns)
    except Exception:  # a template that refuses this exchange (its own rules): nothing to go by
        return eos
    if PROBE not in rendered:  # a template that rewrites the message: nothing to go by
        return eos
    special = special_ids(tokenizer)
    after = _tokens(tokenizer, rendered[rendered.rfind(PROBE) + len(PROBE) :])
    return next((t for t in after if t in special), eos)


def _through_last(ids: list[int], end: int) -> list[int]:
    """Cut a rendered conversation after its last `end` token (a template may add a newline after it), or
    close it with `end`: the RM must score the token PPO's responses end with."""
    last = max((i for i, t in enumerate(ids) if t == end), default=None)
    return ids + [end] if last is None else ids[: last + 1]


def scored_sequence(
    prompt: str | list[dict],
    completion: str | list[dict],
    tokenizer: Any,
    finished: bool = True,
    end: int | None = None,
) -> list[int]:
    """Prompt + finished completion as the reward model reads them: a text prompt with the tokenizer's
    special tokens, the completion and EOS; or a conversation rendered with the chat template, cut after its
    last end of turn (`end`, else `end_of_turn(tokenizer)`). Pairs are encoded so for `rm`, and PPO's
    responses so for an RM with its own tokenizer (their text without the stop token that ended them: the end
    is the RM's own). An unfinished completion gets no end: a conversation then ends at the completion,
    unclosed."""
    if not finished:
        return prompt_ids(tokenizer, prompt) + _tokens(tokenizer, completion)
    if isinstance(prompt, list):
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        end = end_of_turn(tokenizer) if end is None else end
        return _through_last(_tokens(tokenizer, render_conversation(tokenizer, prompt + completion)), end)
    eos = tokenizer.eos_token_id
    return _tokens(tokenizer, prompt, special=True) + _tokens(tokenizer, completion) + [eos]


def _pair_sequences(record: dict, tokenizer: Any, end: int) -> tuple[list[int], list[int]]:
    prompt = record["prompt"]
    return scored_sequence(prompt, record["chosen"], tokenizer, end=end), scored_sequence(
        prompt, record["rejected"], tokenizer, end=end
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def prompt_ids(tokenizer: Any, prompt: str | list[dict]) -> list[int]:
    """A prompt's token ids as generation starts from them: a text with the tokenizer's special tokens, a
    conversation rendered with the generation prompt."""
    if isinstance(prompt, list):
        return _tokens(tokenizer, render_conversation(tokenizer, prompt, generation_prompt=True))
    return _tokens(tokenizer, prompt, special=True)


def _prompt_length(prompt: str | list[dict], tokenizer: Any, chosen: list[int], rejected: list[int]) -> int:
    """How many leading tokens of both sequences are the prompt: its own tokens (a conversation's with the
    generation prompt) when both sequences start with them; else (a template or tokenizer that merges
    across the boundary) the tokens both sequences share."""
    ids = prompt_ids(tokenizer, prompt)
    if (
        chosen[: len(ids)] == ids
        and rejected[: len(ids)] == ids
        and len(ids) < min(len(chosen), len(rejected))
    ):
        return len(ids)
    return min(_common_prefix(chosen, rejected), min(len(chosen), len(rejected)) - 1)


def encode_pairs(
    records: list[dict],
    tokenizer: Any,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "data",
) -> list[PairExample]:
    """Preference pairs as full prompt + response sequences ending where the RM is read: EOS after a text
    response, the end of the assistant turn in a conversation (`end_of_turn`). Over-long pairs lose the
    same number of prompt tokens from both sides (the two responses are compared in the same context)."""
    pairs, cut, dropped = [], 0, 0
    end = end_of_turn(tokenizer) if any(isinstance(r["prompt"], list) for r in records) else None
    for record in records:
        chosen, rejected = _pair_sequences(record, tokenizer, end)
        prompt = _prompt_length(record["prompt"], tokenizer, chosen, rejected)
        longest = max(len(chosen), len(rejected))
        start = _fit(longest, longest - prompt, max_length, truncation)
        if start is None:
            dropped += 1
            continue
        cut += start > 0
        pairs.append(PairExample(chosen[start:], rejected[start:], record.get("margin"), prompt - start))
    _report(source, cut, dropped, len(records), max_length)
    return pairs


def encode_prompts(
    records: list[dict],
    tokenizer: Any,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "prompts",
) -> list[list[int]]:
    """Prompt token ids, ready for generation (chat rows end with the assistant's generation prompt)."""
    return [ids for _, ids in encode_kept_prompts(records, tokenizer, max_length, truncation, source)]


def encode_kept_prompts(
    records: list[dict],
    tokenizer: Any,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "prompts",
) -> list[tuple[int, list[int]]]:
    """(index in `records`, token ids) of each kept prompt, in order: a prompt too long for
    `truncation="drop"` is left out, one too long otherwise is cut from the left."""
    prompts, cut, dropped = [], 0, 0
    for index, record in enumerate(records):
        ids = prompt_ids(tokenizer, record["messages"] if "messages" in record else record["prompt"])
        start = _fit(len(ids), 0, max_length, truncation)
        if start is None:
            dropped += 1
            continue
        cut += start > 0
        prompts.append((index, ids[start:]))
    _report(source, cut, dropped, len(records), max_length)
    return prompts


def prompt_texts(records: list[dict], tokenizer: Any) -> list[str]:
    """What a gold function sees as the prompt: the text, or the rendered conversation."""
    return [
        r["prompt"] if "prompt" in r else tokenizer.apply_chat_template(r["messages"], tokenize=False)
        for r in records
    ]

"""Sampling a model on a prompt set, as text: shared by `label` (pairs for the reward model) and `eval`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.core import last_valid_index
from rlhfkit.data import load_records
from rlhfkit.data.encode import encode_prompts, end_of_turn, prompt_texts, special_ids
from rlhfkit.rollout.engine import RolloutEngine
from rlhfkit.rollout.sampling import Rollout, SamplingSettings


@dataclass
class Completions:
    """Prompts and sampled responses as text, with the rollout they came from."""

    prompts: list[str]
    responses: list[str]
    rollout: Rollout
    turns: list[list[dict]] | None = None  # multi-turn: each episode's turns (`environments.episode_turns`)


def load_prompts(
    source: str, tokenizer: Any, max_length: int, columns: Any = None
) -> tuple[list[str], list[list[int]], list[list[dict] | None]]:
    """The prompts of `source` as text (for a gold function), as token ids cut from the left (`columns`:
    a `rlhfkit.config.ColumnsConfig` naming the user's prompt column), and each one's messages when it is a
    conversation (None for a text prompt)."""
    records = load_records(source, "prompt", columns=columns)
    ids = encode_prompts(records, tokenizer, max_length, "left", source)
    return prompt_texts(records, tokenizer), ids, [r.get("messages") for r in records]


def response_text(
    tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor, stopped: bool, special: set[int] | None = None
) -> str:
    """A response as reward functions and gold functions read it: (T,) `ids` where `mask` is true, without
    the stop token that ended it (EOS, or a stop string such as "."), decoded. Only the stop and the padding
    go: any other special token the policy emitted (a role token such as `<|user|>`, a fake turn) stays in
    the text, so that a reward can see it. With `special` (the tokenizer's special ids), a stop that is not
    one of them is text and is kept: a re-encoding RM reads `… lovely.` and closes it with its own end, as
    `rm` read the pairs `label` wrote (`ended`)."""
    kept = ids[mask.bool()]  # (n,)
    text_stop = special is not None and len(kept) > 0 and int(kept[-1]) not in special
    kept = kept[:-1] if stopped and not text_stop else kept  # the stop token is the last valid one
    kept = kept[kept != tokenizer.pad_token_id]  # a pad token never carries text
    return tokenizer.decode(kept, skip_special_tokens=False)


def response_texts(
    tokenizer: Any, rollout: Rollout, rows: range | None = None, keep_text_stop: bool = False
) -> list[str]:
    """`response_text` of each row of `rows` (every row by default); with `keep_text_stop`, a stop string
    stays (what a re-encoding RM reads)."""
    rows = range(rollout.response_ids.shape[0]) if rows is None else rows
    special = special_ids(tokenizer) if keep_text_stop else None
    return [
        response_text(
            tokenizer, rollout.response_ids[r], rollout.response_mask[r], bool(rollout.stopped[r]), special
        )
        for r in rows
    ]


def ended(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    stopped: torch.Tensor,
    ends: torch.Tensor,
    special: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences as a reward model reads them on the policy's own ids: each finished one closed by `ends[b]`,
    the token its RM was trained to be read at (EOS after a text prompt, the end of turn in a conversation).
    A stop that is a special token (EOS, `<|im_end|>`: in `special`) is replaced by it, a no-op when it is
    that token already (the default); a stop string (".") is content, kept, and the end appended after it
    (one column more, then). Unfinished rows are unchanged.
    (B, L) ids, (B, L) mask, (B,) bool, (B,) ids, (S,) ids -> (B, L) or (B, L + 1) ids and mask."""
    last = last_valid_index(attention_mask)[:, None]  # (B, 1)
    current = input_ids.gather(1, last)  # (B, 1)
    end = ends[:, None].to(current)  # (B, 1)
    is_special = torch.isin(current, special.to(current))  # (B, 1)
    ids = input_ids.scatter(1, last, torch.where(stopped[:, None] & is_special, end, current))  # (B, L)
    append = stopped[:, None] & ~is_special  # (B, 1)
    if not append.any():
        return ids, attention_mask
    ids = torch.cat([ids, end], 1)  # (B, L + 1) the new column is padding where nothing is appended
    mask = torch.cat([attention_mask, torch.zeros_like(attention_mask[:, :1])], 1)  # (B, L + 1)
    after = last + 1  # (B, 1) right padding follows the last valid token
    ids = ids.scatter(1, after, torch.where(append, end, ids.gather(1, after)))  # (B, L + 1)
    mask = mask.scatter(1, after, torch.where(append, 1, mask.gather(1, after)).to(mask))  # (B, L + 1)
    return ids, mask


@dataclass(frozen=True)
class ReadingPoints:
    """Where a reward model trained by `rlhfkit rm` reads a finished response on the policy's own ids: at
    EOS after a text prompt, at the chat template's end of turn after a conversation; `special` (S,): the
    stops that are replaced by that end (`ended`). Worked out once per tokenizer (rendering the template is
    not free); shared by PPO's scores and `eval`."""

    eos: int
    turn_end: int
    special: torch.Tensor

    @classmethod
    def of(cls, tokenizer: Any) -> ReadingPoints:
        special = torch.tensor(sorted(special_ids(tokenizer)))  # (S,)
        return cls(tokenizer.eos_token_id, end_of_turn(tokenizer), special)

    def read(
        self, ids: torch.Tensor, mask: torch.Tensor, stopped: torch.Tensor, chat: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ended` of (B, L) ids and mask, each row closed at its end (`chat[b]`: its prompt is a
        conversation)."""
        ends = torch.tensor([self.turn_end if c else self.eos for c in chat], device=ids.device)  # (B,)
        return ended(ids, mask, stopped, ends, self.special)


def sample_completions(
    engine: RolloutEngine,
    tokenizer: Any,
    texts: list[str],
    prompt_ids: list[list[int]],
    settings: SamplingSettings,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[Completions]:
    """Batches of sampled responses for the prompts in order, as text without their stop token
    (`response_text`: what PPO's reward functions see too)."""
    for start in range(0, len(prompt_ids), batch_size):
        rollout = engine.generate(prompt_ids[start : start + batch_size], settings, generator)
        yield Completions(texts[start : start + batch_size], response_texts(tokenizer, rollout), rollout)

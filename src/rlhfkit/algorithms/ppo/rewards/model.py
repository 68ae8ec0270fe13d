"""The reward model's component: raw scores of the episodes, each finished response read where `rlhfkit rm`
read its pairs — at EOS after a text response, at the end of the assistant turn in a conversation
(`rlhfkit.data.encode.end_of_turn`: `<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3) — whatever stop token
ended it: a special stop is replaced by that end, a stop string (".") kept and the end appended after it
(docs/ppo-details.md #5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.algorithms.ppo.rewards.episodes import Episodes, EpisodeTexts
from rlhfkit.algorithms.ppo.roles import Roles
from rlhfkit.data import pad
from rlhfkit.data.encode import end_of_turn, scored_sequence
from rlhfkit.rollout.completions import ReadingPoints


def rm_sequences(texts: EpisodeTexts, tokenizer: Any, limit: int | None, end: int) -> list[list[int]]:
    """Each episode in an RM's own tokens (`tokenizer`, `end`: its end of turn): the prompt (its text with
    the tokenizer's special tokens, or its conversation rendered with the RM's template) and the response's
    text (a stop string kept: `scored`), closed as `rm` closes a finished response (EOS, or the end of the
    turn), left open when no stop token ended it. A sequence longer than the RM's `limit` positions loses its
    beginning (`rm` too cuts long prompts from the left): the response and its end are what it scores."""
    sequences = []
    for record, response, done in zip(texts.records, texts.scored, texts.finished, strict=True):
        prompt = record.get("messages") or record["prompt"]
        ids = scored_sequence(prompt, response, tokenizer, finished=done, end=end)
        sequences.append(ids[-limit:] if limit else ids)
    return sequences


@dataclass
class ModelScores:
    """Raw RM scores of the episodes: on the rollout's own ids when the RM reads the policy's tokens, else
    on the episodes' text re-encoded in the RM's tokens."""

    roles: Roles
    reading: ReadingPoints  # where the RM reads a finished response on the policy's ids
    rm_chat_end: int | None  # the RM's end of turn, when it reads its own tokens
    packed: bool = False  # each pass padding-free (`padding_free`): the same scores to float rounding

    @classmethod
    def create(cls, roles: Roles, packed: bool = False) -> ModelScores:
        own = roles.rm_tokenizer
        end = None if own is None else end_of_turn(own)
        return cls(roles, ReadingPoints.of(roles.tokenizer), end, packed)

    def shared(self, episodes: Episodes, rows: slice, chat: list[bool]) -> torch.Tensor:
        """(b,) scores of batch rows `rows` on the policy's ids, each finished response ending in the token
        `rm` read its pairs at: EOS after a text prompt, the template's end of turn after a conversation
        (`chat`: whether each row's prompt is one). A special stop is replaced by that token; a stop string
        (".") is content: kept, the end appended after it, as `rm` read the pairs `label` wrote (`ended`)."""
        ids, mask = episodes.input_ids[rows], episodes.attention_mask[rows]  # (b, P + T)
        return self.roles.scores(*self.reading.read(ids, mask, episodes.stopped[rows], chat), self.packed)

    def reencoded(self, texts: EpisodeTexts, device: torch.device) -> torch.Tensor:
        """(b,) scores of the episodes of `texts`, re-encoded with the RM's tokenizer and template."""
        tokenizer = self.roles.rm_tokenizer
        sequences = rm_sequences(texts, tokenizer, self.roles.rm_max_length, self.rm_chat_end)
        ids, mask = pad(sequences, tokenizer.pad_token_id, "right")  # (b, L)
        return self.roles.scores(ids.to(device), mask.to(device), self.packed)

"""What a reward reads of an episode: its prompt's data row (`rlhfkit.algorithms.ppo.prompts`), found by the
row index the episode carries from the batch through the rollout (never again by its token ids: two prompts
that truncate to the same ids keep their own rows), and its response as text, decoded once for the reward
functions and a reward model with its own tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from rlhfkit.algorithms.ppo.prompts import PromptSet
from rlhfkit.data.encode import prompt_texts
from rlhfkit.rollout import Rollout
from rlhfkit.rollout.completions import response_texts


@dataclass
class Episodes(Rollout):
    """A rollout whose episodes know their prompt's row: `rows[b]` indexes the run's `PromptSet`."""

    rows: list[int] = field(kw_only=True)


def with_rows(rollout: Rollout, rows: list[int]) -> Episodes:
    """`rollout` with each episode's row index (one per row of the batch)."""
    if len(rows) != rollout.prompt_ids.shape[0]:
        raise ValueError(f"{len(rows)} row indices for {rollout.prompt_ids.shape[0]} episodes")
    return Episodes(**{f.name: getattr(rollout, f.name) for f in fields(Rollout)}, rows=list(rows))


@dataclass(frozen=True)
class EpisodeTexts:
    """Some episodes as their rewards read them, one entry per episode."""

    records: list[dict]  # the prompt's row in normal form
    columns: list[dict]  # the prompt's row as the data has it
    prompts: list[str]  # the prompt as reward functions see it (a conversation rendered)
    responses: list[str]  # the response without the stop token that ended it (what functions read)
    finished: list[bool]  # whether a stop token ended it
    scored: list[str]  # the response as a re-encoding RM reads it: a text stop (".") kept, a special one not

    def part(self, rows: slice, first: int) -> EpisodeTexts:
        """The entries of batch rows `rows`, when this holds rows `first`, `first + 1`, ..."""
        cut = slice(rows.start - first, rows.stop - first)
        return EpisodeTexts(*(getattr(self, f.name)[cut] for f in fields(self)))


def episode_texts(
    episodes: Episodes,
    rows: range,
    prompts: PromptSet,
    tokenizer: Any,
    for_functions: bool = True,
    for_rm: bool = False,
) -> EpisodeTexts:
    """The batch rows `rows` of `episodes` as text (`tokenizer`: the policy's), decoding only what is read:
    `for_functions`, the prompts and responses reward functions get (else empty); `for_rm`, the responses a
    re-encoding RM reads (else `scored` is `responses`)."""
    indices = [episodes.rows[r] for r in rows]
    records = [prompts.records[i] for i in indices]
    responses = response_texts(tokenizer, episodes, rows) if for_functions else []
    return EpisodeTexts(
        records,
        [prompts.columns[i] for i in indices],
        prompt_texts(records, tokenizer) if for_functions else [],
        responses,
        [bool(episodes.stopped[r]) for r in rows],
        response_texts(tokenizer, episodes, rows, keep_text_stop=True) if for_rm else responses,
    )

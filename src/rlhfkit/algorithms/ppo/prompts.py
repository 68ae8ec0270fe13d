"""The run's prompts: their rows (in normal form, and as the data has them for the reward functions that read
columns) and token ids, index for index, and which indices train and which are held out. An episode names its
prompt by this index (`rewards.episodes`): reward functions and an RM with its own tokenizer read the row,
never find it again by its token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.data import read_rows
from rlhfkit.data.encode import encode_kept_prompts
from rlhfkit.data.schema import record
from rlhfkit.errors import UsageError


@dataclass(frozen=True)
class PromptSet:
    """The run's prompts, index for index: each kept data row in normal form (`{prompt}` or `{messages}`),
    the row as the data has it (the columns reward functions may read) and its token ids. An episode names
    its prompt by this index; `train` and `held_out` are indices too."""

    records: list[dict]
    columns: list[dict]
    ids: list[list[int]]
    train: list[int]
    held_out: list[int]


def prompt_rows(source: str, config: PPOConfig) -> tuple[list[dict], list[dict]]:
    """The rows of a prompt source: validated, in normal form ({prompt} or {messages}), and as the data has
    them (every column, for the reward functions that read them)."""
    rows = read_rows(source)
    return [record(row, "prompt", config.columns) for row in rows], [dict(row.data) for row in rows]


def split_prompts(config: PPOConfig, tokenizer: Any) -> PromptSet:
    """The run's prompts: their rows and token ids, index for index, and which indices train and which are
    held out: `eval_prompts`, or `eval_holdout` seeded picks from `prompts`."""
    records: list[dict] = []
    columns: list[dict] = []
    ids: list[list[int]] = []

    def encode(source: str) -> list[int]:
        """The indices of `source`'s kept prompts (a prompt too long for `truncation=drop` is not)."""
        validated, raw = prompt_rows(source, config)
        kept = encode_kept_prompts(validated, tokenizer, config.max_prompt_length, config.truncation, source)
        first = len(ids)
        for row, encoded in kept:  # `row`: the index in `source`
            records.append(validated[row])
            columns.append(raw[row])
            ids.append(encoded)
        return list(range(first, len(ids)))

    prompts = encode(config.prompts)
    if config.eval_prompts:
        train, held_out = prompts, encode(config.eval_prompts)
    else:
        n_eval = min(config.eval_holdout, len(prompts) // 4)
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(config.seed)).tolist()
        train, held_out = [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]
    groups = config.batch_size // config.samples_per_prompt
    if len(train) < groups:
        raise UsageError(
            f"{config.prompts}: {len(train)} training prompts, fewer than the {groups} an iteration samples "
            f"(batch_size={config.batch_size} / samples_per_prompt={config.samples_per_prompt})"
        )
    return PromptSet(records, columns, ids, train, held_out)

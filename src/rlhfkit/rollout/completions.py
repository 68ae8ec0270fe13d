"""Sampling a model on a prompt set, as text: shared by `label` (pairs for the reward model) and `eval`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data import load_records
from rlhfkit.data.encode import encode_prompts, prompt_texts
from rlhfkit.rollout.engine import RolloutEngine
from rlhfkit.rollout.sampling import Rollout, SamplingSettings


@dataclass
class Completions:
    """Prompts and sampled responses as text, with the rollout they came from."""

    prompts: list[str]
    responses: list[str]
    rollout: Rollout


def load_prompts(
    source: str, tokenizer: Any, max_length: int, columns: Any = None
) -> tuple[list[str], list[list[int]]]:
    """The prompts of `source` as text (for a gold function) and as token ids cut from the left (`columns`:
    a `rlhfkit.config.ColumnsConfig` naming the user's prompt column)."""
    records = load_records(source, "prompt", columns=columns)
    return prompt_texts(records, tokenizer), encode_prompts(records, tokenizer, max_length, "left", source)


def sample_completions(
    engine: RolloutEngine,
    tokenizer: Any,
    texts: list[str],
    prompt_ids: list[list[int]],
    settings: SamplingSettings,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[Completions]:
    """Batches of sampled responses (decoded without special tokens) for the prompts in order."""
    for start in range(0, len(prompt_ids), batch_size):
        rollout = engine.generate(prompt_ids[start : start + batch_size], settings, generator)
        responses = [
            tokenizer.decode(row[keep], skip_special_tokens=True)
            for row, keep in zip(rollout.response_ids, rollout.response_mask, strict=True)
        ]
        yield Completions(texts[start : start + batch_size], responses, rollout)

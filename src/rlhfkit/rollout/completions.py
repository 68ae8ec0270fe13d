"""Sampling a model on a prompt set: shared by `label` (pairs for the reward model) and `eval`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data import load_records, pad
from rlhfkit.data.encode import encode_prompts
from rlhfkit.rollout import Rollout, SamplingSettings, generate


@dataclass
class Completions:
    """Prompts and sampled responses as text, with the rollout they came from."""

    prompts: list[str]
    responses: list[str]
    rollout: Rollout


def prompt_texts(records: list[dict], tokenizer: Any) -> list[str]:
    """What a gold function sees as the prompt: the text, or the rendered conversation."""
    return [
        r["prompt"] if "prompt" in r else tokenizer.apply_chat_template(r["messages"], tokenize=False)
        for r in records
    ]


def load_prompts(source: str, tokenizer: Any, max_length: int = 1024) -> tuple[list[str], list[list[int]]]:
    records = load_records(source, "prompt")
    return prompt_texts(records, tokenizer), encode_prompts(records, tokenizer, max_length, "left", source)


def sample_completions(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    prompt_ids: list[list[int]],
    settings: SamplingSettings,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[Completions]:
    """Batches of sampled responses (decoded without special tokens) for the prompts in order."""
    stop = torch.tensor([tokenizer.eos_token_id])
    for start in range(0, len(prompt_ids), batch_size):
        ids, mask = pad(prompt_ids[start : start + batch_size], tokenizer.pad_token_id, side="left")  # (b, P)
        rollout = generate(model, ids, mask, settings, stop, tokenizer.pad_token_id, generator)
        responses = [
            tokenizer.decode(row[keep], skip_special_tokens=True)
            for row, keep in zip(rollout.response_ids, rollout.response_mask, strict=True)
        ]
        yield Completions(texts[start : start + batch_size], responses, rollout)

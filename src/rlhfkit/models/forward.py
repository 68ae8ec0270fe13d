"""Forward passes over prompt + response batches: the policy's response log-probs, the critic's values.

Layout: `input_ids` (B, P + T) is a left-padded prompt of width P followed by a right-padded response of
width T; the logits at position t predict token t + 1, so the response's log-probs come from the logits at
positions P - 1 .. P + T - 2.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.core import entropy_from_logits, logprobs_from_logits
from rlhfkit.models.scalar import position_ids, scalar_values


def response_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: int,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of the response tokens under `model` at `temperature`; optionally (B, T) entropies."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).logits[:, context - 1 : -1]  # (B, T, V), a view
    responses = input_ids[:, context:]  # (B, T)
    entropy = entropy_from_logits(logits, temperature) if with_entropy else None  # (B, T)
    return logprobs_from_logits(logits, responses, temperature), entropy


def response_values(
    critic: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int
) -> torch.Tensor:
    """(B, T) critic values V(s_t) of the states before each response token: the head read at positions
    P - 1 .. P + T - 2 (the state after the last token is terminal; GAE bootstraps 0 there)."""
    return scalar_values(critic, input_ids, attention_mask)[:, context - 1 : -1]  # (B, T)

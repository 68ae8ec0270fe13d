"""Batched sampling with a KV cache, stop-token truncation and the sampled tokens' log-probs.

The kernel of the in-process engine (`rlhfkit.rollout.engine.LocalSampler`): left-padded prompt tensors in;
tokens, mask and log-probs out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.models.scalar import position_ids


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    greedy: bool = False


@dataclass
class Rollout:
    """One batch of prompts and their sampled responses. Prompts are left-padded, responses right-padded."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P) 1 at real prompt tokens
    response_ids: torch.Tensor  # (B, T) pad after the first stop token
    response_mask: torch.Tensor  # (B, T) bool, True up to and including the stop token
    logprobs: (
        torch.Tensor
    )  # (B, T) fp32 log-probs of the sampled tokens at the sampling temperature; 0 at pad
    stopped: torch.Tensor  # (B,) bool: the response contains a stop token

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, P + T)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)  # (B, P + T)


def truncate_after_stop(
    tokens: torch.Tensor, stop_ids: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each row after its first stop token: `[a, b, EOS, x, y]` -> `[a, b, EOS, pad, pad]`.

    tokens: (B, T); stop_ids: (S,). Returns (tokens, mask, stopped): mask (B, T) True up to and including the
    first stop token (everywhere for a row without one); stopped (B,) whether the row has a stop token.
    """
    is_stop = torch.isin(tokens, stop_ids)  # (B, T)
    # stops_before[:, t] = number of stop tokens strictly before t; a token is kept while it is 0
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # (B, T)
    mask = stops_before == 0  # (B, T)
    return torch.where(mask, tokens, pad_id), mask, is_stop.any(dim=1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k / nucleus-p set at -inf (sampling only)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # (B, V)
        # drop a token when the tokens before it already reach top_p (the first token is always kept)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # (B, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _forward_options(model: Any) -> tuple[str, dict]:
    """The name of the KV-cache argument (`cache` in transformers >= 5.x, `past_key_values` before) and, where
    supported, `logits_to_keep=1`: sampling needs the last position's logits only, not (B, P, V)."""
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    return cache_name, ({"logits_to_keep": 1} if "logits_to_keep" in parameters else {})


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
    stop_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample up to `settings.max_new_tokens` tokens per left-padded prompt, with the KV cache.

    Log-probs are those of `softmax(logits / temperature)` — the same distribution training recomputes —
    even when top-k/top-p narrow what is sampled. Stops early once every row has produced a stop token.
    """
    batch = prompt_ids.shape[0]
    cache_name, extra = _forward_options(model)
    mask = prompt_mask.long()  # (B, P + t) grows by one column per step
    positions = position_ids(mask)  # (B, P)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    next_position = positions[:, -1:] + 1  # (B, 1)
    tokens, logprobs = [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)  # (B,)
    for _ in range(settings.max_new_tokens):
        scaled = out.logits[:, -1].float() / settings.temperature  # (B, V)
        if settings.greedy:
            token = scaled.argmax(dim=-1)  # (B,)
        else:
            probs = torch.softmax(filter_logits(scaled, settings.top_k, settings.top_p), dim=-1)  # (B, V)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        logprobs.append(torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1))  # (B,)
        tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, P + t + 1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_name: out[cache_name]},
            **extra,
        )
        next_position = next_position + 1
    response, response_mask, stopped = truncate_after_stop(
        torch.stack(tokens, dim=1), stop_ids, pad_id
    )  # (B, T)
    logp = torch.stack(logprobs, dim=1) * response_mask  # (B, T)
    return Rollout(prompt_ids, prompt_mask, response, response_mask, logp, stopped)

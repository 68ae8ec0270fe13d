"""Batched sampling with a KV cache, stop-token truncation and the sampled tokens' log-probs.

The kernel of the in-process engine (`rlhfkit.rollout.engine.LocalSampler`): left-padded prompt tensors in;
tokens, mask and log-probs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.rollout.decoding import EagerDecoder


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
    stopped: torch.Tensor  # (B,) bool: the response contains a stop token (multi-turn: its last turn does)
    # Multi-turn episodes (`rlhfkit.rollout.environments`): the "response" is everything after the opening,
    # the policy's turns and the environment's in between; None for single responses.
    policy_mask: torch.Tensor | None = None  # (B, T) bool, True at the policy's own tokens
    turn_rewards: torch.Tensor | None = None  # (B, T) the environment's reward on each turn's last token
    turns: torch.Tensor | None = None  # (B,) policy turns of the episode
    ended: torch.Tensor | None = None  # (B,) how it ended: an index into `rlhfkit.rollout.ENDINGS`

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, T) bool: the tokens the policy chose, which every loss, KL and advantage covers (the response
        mask; in a multi-turn episode, less the environment's tokens)."""
        return self.response_mask if self.policy_mask is None else self.policy_mask

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


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities and (B,) uniforms in [0, 1) -> (B,) the token whose cumulative-probability
    interval holds each uniform; a token of probability 0 is never drawn."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = (uniform * cdf[:, -1]).unsqueeze(1)  # (B, 1) scaled by the total mass: rounding cannot pass it
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)  # (B,)


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
    stop_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    decoder: Any = None,
) -> Rollout:
    """Sample up to `settings.max_new_tokens` tokens per left-padded prompt, with the KV cache.

    Row b's token at step t is drawn by inverting the cumulative distribution at the uniform `noise[t, b]`
    ((max_new_tokens, B); drawn from `generator` when not given). A row's tokens thus depend on its own noise
    only: a process that samples some rows of a global batch, given those rows' noise, samples what one
    process sampling them all would. Log-probs are those of `softmax(logits / temperature)` — the same
    distribution training recomputes — even when top-k/top-p narrow what is sampled. Stops early once every
    row has produced a stop token. `decoder` runs the forward passes (`rlhfkit.rollout.decoding`; the
    eager one by default).
    """
    batch = prompt_ids.shape[0]
    if noise is None and not settings.greedy:
        noise = torch.rand(
            settings.max_new_tokens, batch, generator=generator, device=prompt_ids.device
        )  # (max_new_tokens, B)
    decoder = decoder or EagerDecoder(model)
    logits = decoder.start(prompt_ids, prompt_mask, settings.max_new_tokens)  # (B, V)
    tokens, logprobs = [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)  # (B,)
    for step in range(settings.max_new_tokens):
        scaled = logits.float() / settings.temperature  # (B, V)
        if settings.greedy:
            token = scaled.argmax(dim=-1)  # (B,)
        else:
            probs = torch.softmax(filter_logits(scaled, settings.top_k, settings.top_p), dim=-1)  # (B, V)
            token = inverse_cdf(probs, noise[step])  # (B,)
        logprobs.append(torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1))  # (B,)
        tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if finished.all():
            break
        logits = decoder.step(token)  # (B, V)
    response, response_mask, stopped = truncate_after_stop(
        torch.stack(tokens, dim=1), stop_ids, pad_id
    )  # (B, T)
    logp = torch.stack(logprobs, dim=1) * response_mask  # (B, T)
    return Rollout(prompt_ids, prompt_mask, response, response_mask, logp, stopped)


def widen(rollout: Rollout, prompt_width: int, response_width: int, pad_id: int) -> Rollout:
    """The same rollout with prompts left-padded to `prompt_width` and responses right-padded to
    `response_width` (so that the rollouts of several processes stack into one batch)."""
    left = prompt_width - rollout.prompt_ids.shape[1]
    right = response_width - rollout.response_ids.shape[1]

    def grow(x: torch.Tensor | None, before: int, after: int, value: float) -> torch.Tensor | None:
        return None if x is None else torch.nn.functional.pad(x, (before, after), value=value)  # (B, width)

    return Rollout(
        grow(rollout.prompt_ids, left, 0, pad_id),
        grow(rollout.prompt_mask, left, 0, 0),
        grow(rollout.response_ids, 0, right, pad_id),
        grow(rollout.response_mask, 0, right, False),
        grow(rollout.logprobs, 0, right, 0.0),
        rollout.stopped,
        grow(rollout.policy_mask, 0, right, False),
        grow(rollout.turn_rewards, 0, right, 0.0),
        rollout.turns,
        rollout.ended,
    )

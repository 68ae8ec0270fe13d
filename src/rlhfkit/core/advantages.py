"""Generalised advantage estimation."""

from __future__ import annotations

import torch

from rlhfkit.core.masked import zero_masked


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE along the response: `A_t = delta_t + gamma*lam*A_{t+1}`, `delta_t = r_t + gamma * V_{t+1} - V_t`.

    rewards, values, mask: (B, T). The value after a row's last valid token is 0 (the episode ends there).
    Returns (advantages, returns) with `returns = advantages + values`, both (B, T) and 0 where masked.
    No whitening here: that is a separate, explicit step (`masked_whiten`).
    """
    # With padding zeroed, the value after a row's last token is 0 and every padded delta is 0, so the
    # running sum below is still 0 when it reaches the last valid token: no explicit episode reset.
    rewards, values = zero_masked(rewards, mask), zero_masked(values, mask)  # (B, T)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T)
    deltas = rewards + gamma * next_values - values  # (B, T)
    advantages = torch.zeros_like(deltas)  # (B, T)
    running = torch.zeros_like(deltas[:, 0])  # (B,)
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages, zero_masked(advantages + values, mask)

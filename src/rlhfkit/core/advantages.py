"""Advantages: generalised advantage estimation (with a critic), and the critic-free estimators' pieces:
group baselines (GRPO, RLOO) and rewards-to-go."""

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


def group_normalised_scores(scores: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO's baseline: (B,) scores of consecutive groups of `group` samples of one prompt -> each score minus
    its group's mean, divided by the group's standard deviation (unbiased, + 1e-4) when `scale` (with
    `scale=False`, Dr. GRPO: the std's division biases towards prompts that are all-easy or all-hard)."""
    grouped = scores.view(-1, group)  # (B / group, group)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B / group, group)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)  # (B,)


def leave_one_out_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """RLOO's baseline: (B,) scores of consecutive groups of `group` (>= 2) samples of one prompt -> each
    score minus the mean of the other `group - 1` scores of its group, i.e. `group / (group - 1)` times its
    distance to the group mean."""
    grouped = scores.view(-1, group)  # (B / group, group)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group - 1)  # (B / group, group)
    return (grouped - others).reshape(-1)  # (B,)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """(B, T) per-token rewards -> (B, T) rewards-to-go `G_t = r_t + gamma * G_{t+1}` along each response, 0
    where masked: the critic-free estimators' advantages (REINFORCE with the KL penalty in the reward)."""
    rewards = zero_masked(rewards, mask)  # (B, T)
    returns = torch.zeros_like(rewards)  # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return zero_masked(returns, mask)

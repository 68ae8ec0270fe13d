"""Advantages: generalised advantage estimation (with a critic), the critic-free estimators' pieces (group
baselines for GRPO and RLOO, rewards-to-go), and per estimator the rewards and advantages that PPO's steps 6
and 7 compute (`estimator_rewards`, `estimator_advantages`)."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from rlhfkit.core.kl import KLKind, kl_shaped_rewards, sequence_kl
from rlhfkit.core.masked import masked_whiten, zero_masked

Estimator = Literal["gae", "grpo", "rloo", "reinforce_pp"]
RLOOBaseline = Literal["sequence_reward", "score"]


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """A value outside `allowed` would fall through to another branch silently: refuse it, by name."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE along the response: `A_t = delta_t + gamma*lam*A_{t'}`, `delta_t = r_t + gamma * V_{t'} - V_t`,
    where t' is the next valid position after t (t + 1 within a response).

    rewards, values, mask: (B, T). The value after a row's last valid token is 0 (the episode ends there).
    Masked positions are skipped, not stepped through: in a multi-turn episode the environment's tokens
    between two policy turns are context, not actions, so the policy's tokens form one trajectory and the
    last token of a turn bootstraps from the first token of the next (docs/ppo-details.md #26).
    Returns (advantages, returns) with `returns = advantages + values`, both (B, T) and 0 where masked.
    No whitening here: that is a separate, explicit step (`masked_whiten`).
    """
    valid = mask.bool()  # (B, T)
    rewards, values = zero_masked(rewards, mask), zero_masked(values, mask)  # (B, T)
    advantages = torch.zeros_like(rewards)  # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,) A at the next valid position
    next_value = torch.zeros_like(values[:, 0])  # (B,) V at the next valid position
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        here = delta + gamma * lam * running  # (B,)
        running = torch.where(valid[:, t], here, running)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(valid[:, t], here, torch.zeros_like(here))
    return advantages, zero_masked(advantages + values, mask)


def _grouped_from_first(scores: torch.Tensor, group: int) -> torch.Tensor:
    """(B,) scores -> (B / group, group), each group shifted by its first score. Both baselines are unchanged
    by a shift, and equal scores become exact zeros: a float mean of equal values may miss them by a rounding
    residue (1000.1 three times in fp32), which a division by the std (0) + 1e-4 would blow up to ~0.35."""
    grouped = scores.view(-1, group)  # (B / group, group)
    return grouped - grouped[:, :1]  # (B / group, group)


def group_normalised_scores(scores: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO's baseline: (B,) scores of consecutive groups of `group` samples of one prompt -> each score minus
    its group's mean, divided by the group's standard deviation (unbiased, + 1e-4) when `scale` (with
    `scale=False`, Dr. GRPO: the std's division biases towards prompts that are all-easy or all-hard).
    A group of equal scores gives exactly 0, for any `group`."""
    shifted = _grouped_from_first(scores, group)  # (B / group, group)
    centred = shifted - shifted.mean(dim=1, keepdim=True)  # (B / group, group)
    if scale:
        centred = centred / (shifted.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)  # (B,)


def leave_one_out_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """RLOO's baseline: (B,) scores of consecutive groups of `group` (>= 2) samples of one prompt -> each
    score minus the mean of the other `group - 1` scores of its group, i.e. `group / (group - 1)` times its
    distance to the group mean. A group of equal scores gives exactly 0."""
    shifted = _grouped_from_first(scores, group)  # (B / group, group)
    others = (shifted.sum(dim=1, keepdim=True) - shifted) / (group - 1)  # (B / group, group)
    return (shifted - others).reshape(-1)  # (B,)


def uniform_groups(scores: torch.Tensor, group: int) -> torch.Tensor:
    """(B,) scores of consecutive groups of `group` -> (B / group,) bool, True where every score of the group
    is equal: a group baseline gives such a group 0, it carries no signal (DAPO's dynamic sampling)."""
    grouped = scores.view(-1, group)  # (B / group, group)
    return (grouped == grouped[:, :1]).all(dim=1)  # (B / group,)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """(B, T) per-token rewards -> (B, T) rewards-to-go `G_t = r_t + gamma * G_{t'}` along each response (t':
    the next valid position; masked positions, such as an environment's tokens, are skipped), 0 where
    masked: the critic-free estimators' advantages (REINFORCE with the KL penalty in the reward)."""
    valid = mask.bool()  # (B, T)
    rewards = zero_masked(rewards, mask)  # (B, T)
    returns = torch.zeros_like(rewards)  # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return zero_masked(returns, mask)


def baselined_scores(
    scores: torch.Tensor, estimator: Estimator, group: int, scale: bool = True
) -> torch.Tensor:
    """(B,) scores less the baseline of the critic-free estimators that have one: GRPO's group mean (and std
    when `scale`), RLOO's mean of the other samples of the prompt. Unchanged for `gae` (its baseline is the
    critic) and `reinforce_pp` (it whitens the returns instead). An unknown estimator is a ValueError."""
    _check("estimator", estimator, get_args(Estimator))
    if estimator == "grpo":
        return group_normalised_scores(scores, group, scale)
    if estimator == "rloo":
        return leave_one_out_scores(scores, group)
    return scores


def estimator_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: Estimator = "gae",
    group: int = 1,
    *,
    scale: bool = True,
    rloo_baseline: RLOOBaseline = "sequence_reward",
    kind: KLKind = "k1",
    turn_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token rewards each estimator turns into advantages, and the per-token KL.
    scores: (B,), consecutive groups of `group` samples of a prompt; logp, ref_logp, mask: (B, T).
    Returns (rewards, kl), both (B, T) and 0 where masked:
    - `kl_shaped_rewards` of the `baselined_scores`: `-kl_coef * kl` on every valid token, and the score less
      its baseline (GRPO, RLOO with `rloo_baseline="score"`) or the score itself (GAE, REINFORCE++) on the
      last one;
    - RLOO with `rloo_baseline="sequence_reward"` (Ahmadian et al. 2024, TRL): one reward per sequence,
      `R = score - kl_coef * sum_t kl_t`, less the mean R of the other samples of its prompt, on the last
      token; no per-token KL, so with `gamma = 1` (the default of `estimator_advantages`, which discounts the
      rewards-to-go) every token's return is the same baselined R.
    `turn_rewards` (B, T), a multi-turn episode's rewards from its environment, each on its turn's last token:
    GAE and REINFORCE++ keep them at their positions (the critic, or the rewards-to-go, credit each turn);
    GRPO and RLOO compare whole episodes: each episode's total (score + its turn rewards) is baselined by its
    group and placed on its last token, as a single response's score is, so a group of equal totals gives
    exactly 0 everywhere (docs/ppo-details.md #26).
    An unknown estimator or rloo_baseline is a ValueError.
    """
    _check("estimator", estimator, get_args(Estimator))
    _check("rloo_baseline", rloo_baseline, get_args(RLOOBaseline))
    turns = None if turn_rewards is None else zero_masked(turn_rewards, mask)  # (B, T)
    if turns is not None and estimator in ("grpo", "rloo"):
        scores = scores + turns.sum(-1)  # (B,) the episode's total, baselined below as one score
    if estimator != "rloo" or rloo_baseline == "score":
        rewards, kl = kl_shaped_rewards(
            baselined_scores(scores, estimator, group, scale), logp, ref_logp, mask, kl_coef, kind
        )  # (B, T), (B, T)
    else:
        sequence_rewards = scores - kl_coef * sequence_kl(logp, ref_logp, mask, kind)  # (B,)
        baselined = leave_one_out_scores(sequence_rewards, group)  # (B,)
        rewards, kl = kl_shaped_rewards(baselined, logp, ref_logp, mask, 0.0, kind)  # no per-token KL
    if turns is not None and estimator in ("gae", "reinforce_pp"):
        rewards = rewards + turns  # (B, T) each turn's reward at its last token
    return rewards, kl


def estimator_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    estimator: Estimator = "gae",
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) per-token rewards (`estimator_rewards`) and values (0 without a critic) -> (advantages,
    returns), both (B, T), 0 where masked. `gae`: GAE(gamma, lam) with the critic's values, the advantages
    whitened over the batch (docs/ppo-details.md #15); `reinforce_pp`: the rewards-to-go, whitened over the
    batch (REINFORCE++, Hu 2025); `grpo`, `rloo`: the rewards-to-go themselves (the baseline is already in
    the rewards). `gamma` discounts the rewards-to-go too: a reward on the last token only gives every token
    the same advantage for `gamma = 1`. An unknown estimator is a ValueError."""
    _check("estimator", estimator, get_args(Estimator))
    if estimator == "gae":
        advantages, returns = gae(rewards, values, mask, gamma, lam)  # (B, T)
        return masked_whiten(advantages, mask), returns
    returns = discounted_returns(rewards, mask, gamma)  # (B, T)
    if estimator == "reinforce_pp":
        return masked_whiten(returns, mask), returns
    return returns, returns

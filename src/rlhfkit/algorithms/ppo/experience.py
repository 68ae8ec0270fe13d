"""Steps 3-7 of a PPO iteration: from one rollout, everything the PPO epochs need, fixed during them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rlhfkit.algorithms.ppo.rewards import Normalise, Rewards, component_stats
from rlhfkit.algorithms.ppo.roles import PolicyAndValue, Roles
from rlhfkit.config import PPOConfig
from rlhfkit.core import (
    discounted_returns,
    explained_variance,
    gae,
    group_normalised_scores,
    kl_shaped_rewards,
    leave_one_out_scores,
    masked_mean,
    masked_whiten,
)
from rlhfkit.rollout import Rollout
from rlhfkit.runtime.distributed import all_rows, local_rows
from rlhfkit.runtime.outputs import read_run_file
from rlhfkit.runtime.process import autocast

log = logging.getLogger("rlhfkit")


@dataclass
class Experience:
    """One iteration's batch. Response tensors are (B, T); `mask` is True at valid response tokens."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    context: int  # P
    mask: torch.Tensor  # (B, T) bool
    old_logp: torch.Tensor  # (B, T) the policy that sampled, recomputed by a full pass
    ref_logp: torch.Tensor  # (B, T) the reference
    old_values: torch.Tensor  # (B, T) normalised critic values (0 without a critic)
    scores: torch.Tensor  # (B,) the scores PPO uses (normalised, clipped, penalised)
    rewards: torch.Tensor  # (B, T) per-token rewards given to GAE
    advantages: torch.Tensor  # (B, T) whitened
    returns: torch.Tensor  # (B, T)


def reward_normaliser(config: PPOConfig) -> Normalise:
    """Raw RM scores -> the scale PPO uses: normalised with the RM's saved mean/std when asked
    (docs/ppo-details.md #9). A critic that starts as the RM reads its values through the same map."""
    if not config.normalize_reward or not config.reward_model:  # reward functions alone: their own scale
        return lambda scores: scores
    stats = read_run_file(config.reward_model).get("reward_stats")
    if not stats:
        log.warning(
            "%s has no reward_stats (not trained by `rlhfkit rm`): scores are not normalised",
            config.reward_model,
        )
        return lambda scores: scores
    mean, std = stats["mean"], max(stats["std"], 1e-6)
    return lambda scores: (scores - mean) / std


def shape_scores(scores: torch.Tensor, stopped: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """(B,) scores (the RM's normalised, see `Rewards.total`) -> the scores in the reward: clipped, and
    replaced by the configured penalty for responses without a stop token (docs/ppo-details.md #4)."""
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    if config.missing_eos_penalty is not None:
        scores = torch.where(stopped, scores, torch.full_like(scores, config.missing_eos_penalty))
    return scores


LOGIT_BUDGET = 2**28  # fp32 logits (1 GiB) one no-grad pass may hold


def forward_rows(config: PPOConfig, width: int, vocab: int) -> int:
    """Episodes per no-grad pass: `forward_batch_size`; else `micro_batch_size` (set to fit memory); else as
    many as keep a pass's (rows, width, vocab) fp32 logits within LOGIT_BUDGET. Memory bounds these passes,
    not the optimiser's mini-batch: bigger passes mean fewer, fuller matrix products (and on a GPU fewer
    kernel launches)."""
    return config.forward_batch_size or config.micro_batch_size or max(1, LOGIT_BUDGET // (width * vocab))


def row_slices(rows: int, chunk: int) -> list[slice]:
    """Slices of at most `chunk` rows: no-grad passes go by chunks to bound their memory."""
    return [slice(s, min(s + chunk, rows)) for s in range(0, rows, chunk)]


def vocab_size(roles: Roles) -> int:
    """The policy's vocabulary (its logits' last dimension)."""
    return roles.trainable.policy.get_output_embeddings().weight.shape[0]


def baselined(scores: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """(B,) scores less the baseline of the critic-free estimators that have one: GRPO's group mean (and std
    when `scale_rewards`), RLOO's mean of the other samples of the prompt. GAE's baseline is the critic;
    REINFORCE++ whitens the returns instead."""
    k = config.samples_per_prompt
    if config.advantage_estimator == "grpo":
        return group_normalised_scores(scores, k, config.scale_rewards)
    if config.advantage_estimator == "rloo":
        return leave_one_out_scores(scores, k)
    return scores


def estimate_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, config: PPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) per-token rewards -> (advantages, returns). GAE with the critic's values, whitened over the
    batch (docs/ppo-details.md #15); critic-free: the rewards-to-go themselves (the baseline is already in the
    score), whitened over the global batch for REINFORCE++."""
    if config.advantage_estimator == "gae":
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)  # (B, T)
        return masked_whiten(advantages, mask), returns
    returns = discounted_returns(rewards, mask, config.gamma)  # (B, T)
    if config.advantage_estimator == "reinforce_pp":
        return masked_whiten(returns, mask), returns
    return returns, returns


@torch.no_grad()
def make_experience(
    model: PolicyAndValue,
    roles: Roles,
    rollout: Rollout,
    kl_coef: float,
    normalise: Normalise,
    config: PPOConfig,
    rewards: Rewards,
) -> tuple[Experience, dict[str, torch.Tensor]]:
    """Steps 3-7: everything PPO needs from one rollout, and the iteration's objective statistics."""
    ids, attention = rollout.input_ids, rollout.attention_mask  # (B, P + T)
    context, mask = rollout.prompt_ids.shape[1], rollout.response_mask  # P, (B, T)
    # Each process runs the passes of its own rows, by chunks; then every process holds the whole batch, and
    # every statistic below (whitening, explained variance, means) is over the global batch.
    mine = local_rows(ids.shape[0])
    chunks = [
        slice(mine.start + s.start, mine.start + s.stop)
        for s in row_slices(mine.stop - mine.start, forward_rows(config, ids.shape[1], vocab_size(roles)))
    ]
    with autocast(ids.device, config.bf16):
        # 3. old log-probs and values. The log-probs come from the same full pass as the reference's (not from
        # the KV-cached rollout), so the KL is exactly 0 before the first update.
        parts = [model(ids[s], attention[s], context, config.temperature, True) for s in chunks]
        old_logp, entropy = (all_rows(torch.cat([p[i] for p in parts])) for i in (0, 2))  # (B, T)
        # The critic starts as the RM: its head is read through the same normalisation as the scores, so at
        # iteration 0 its values are on the scale of the returns it must predict.
        critic = parts[0][1] is not None
        old_values = (
            normalise(all_rows(torch.cat([p[1] for p in parts]))) if critic else torch.zeros_like(old_logp)
        )  # (B, T)
        # 4. scores: the weighted sum of the reward components
        components = rewards.components(rollout, chunks)  # {name: (B,)}
        raw_scores = rewards.total(components, normalised=False)  # (B,) for the logs
        scores = shape_scores(rewards.total(components), rollout.stopped, config)  # (B,)
        # 5. reference log-probs
        ref_logp = all_rows(
            torch.cat(
                [roles.reference_logprobs(ids[s], attention[s], context, config.temperature) for s in chunks]
            )
        )  # (B, T)
    # 6. per-token rewards: the score (for GRPO and RLOO, less its group's baseline) on the last response
    # token, and -beta * KL on every token when the penalty is in the reward (with `kl_penalty: loss` it is
    # added to the policy loss instead)
    in_reward = kl_coef if config.kl_penalty == "reward" else 0.0
    per_token, kl = kl_shaped_rewards(
        baselined(scores, config), old_logp, ref_logp, mask, in_reward, config.kl_estimator
    )  # (B, T), (B, T)
    if config.whiten_rewards:
        per_token = masked_whiten(per_token, mask, shift_mean=False)
    # 7. advantages (computed once, then frozen for the epochs)
    advantages, returns = estimate_advantages(per_token, old_values, mask, config)  # (B, T)
    experience = Experience(
        ids, attention, context, mask, old_logp, ref_logp, old_values, scores, per_token, advantages, returns
    )
    non_score = (-kl_coef * kl).sum(1)  # (B,) the objective's KL term, wherever the penalty is applied
    stats = {
        "objective/scores": scores.mean(),
        "objective/scores_raw": raw_scores.mean(),
        "objective/kl": kl.sum(1).mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/rlhf_reward": (scores + non_score).mean(),
        "objective/entropy": masked_mean(entropy, mask),
        **({"val/explained_variance": explained_variance(old_values, returns, mask)} if critic else {}),
        **(component_stats(components) if len(components) > 1 or rewards.functions else {}),
        "response/length_mean": mask.sum(1).float().mean(),
        "response/stop_rate": rollout.stopped.float().mean(),
        "rollout/logprob_mismatch": ((old_logp - rollout.logprobs).abs() * mask).max(),
    }
    return experience, stats

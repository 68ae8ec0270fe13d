"""Steps 3-7 of a PPO iteration: from one rollout, everything the PPO epochs need, fixed during them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.algorithms.ppo.rewards import Episodes, Normalise, Rewards, component_stats
from rlhfkit.algorithms.ppo.roles import PolicyAndValue, Roles
from rlhfkit.config import PPOConfig
from rlhfkit.core import (
    estimator_advantages,
    estimator_rewards,
    explained_variance,
    masked_mean,
    masked_whiten,
    uniform_groups,
)
from rlhfkit.models.packing import budget_groups
from rlhfkit.rollout.environments import episode_stats
from rlhfkit.runtime.distributed import all_max, all_rows, local_rows
from rlhfkit.runtime.process import autocast


@dataclass
class Experience:
    """One iteration's batch. Response tensors are (B, T); `mask` is True at valid response tokens."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    context: int  # P
    mask: torch.Tensor  # (B, T) bool; all False in rows the update leaves out (drop_uniform_groups)
    old_logp: torch.Tensor  # (B, T) the policy that sampled, recomputed by a full pass
    ref_logp: torch.Tensor  # (B, T) the reference
    old_values: torch.Tensor  # (B, T) normalised critic values (0 without a critic)
    scores: (
        torch.Tensor
    )  # (B,) the scores PPO uses (normalised, clipped, penalised; + an environment's rewards)
    rewards: torch.Tensor  # (B, T) per-token rewards given to GAE
    advantages: torch.Tensor  # (B, T) whitened
    returns: torch.Tensor  # (B, T)


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


def pass_costs(attention_mask: torch.Tensor, packed: bool) -> list[int]:
    """The tokens a pass computes for each (B, L) row: its real tokens when packed, else the batch's padded
    width (every row of a padded pass is that wide)."""
    if packed:
        return attention_mask.sum(1).tolist()
    return [attention_mask.shape[1]] * attention_mask.shape[0]


def budget_slices(attention_mask: torch.Tensor, config: PPOConfig) -> list[slice] | None:
    """Consecutive slices of the (b, L) rows whose passes compute at most `max_tokens_per_micro_batch`
    tokens each (`models.packing.budget_groups`; a longer row alone), or None without a token budget."""
    budget = config.max_tokens_per_micro_batch
    if budget is None:
        return None
    groups = budget_groups(pass_costs(attention_mask, config.padding_free), budget, config.padding_free)
    return [slice(g[0], g[-1] + 1) for g in groups]


def agreed_passes(count: int, config: PPOConfig) -> int:
    """The most training passes any process runs: each process runs that many through the trained module
    (DDP syncs on every backward, FSDP's forwards are collective), stand-ins after its own when it has
    fewer. Only a token budget makes the counts differ; fixed counts are the same everywhere. (The
    experience's no-grad passes run with the parameters gathered whole: they need no agreement.)"""
    if config.max_tokens_per_micro_batch is None:
        return count
    return int(all_max(torch.tensor(count)))


def vocab_size(roles: Roles) -> int:
    """The policy's vocabulary (its logits' last dimension)."""
    return roles.trainable.policy.get_output_embeddings().weight.shape[0]


def step_rewards(
    scores: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    config: PPOConfig,
    trained: torch.Tensor,
    turn_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6: (B,) scores -> per-token rewards and KL, both (B, T), for the configured estimator (the
    baseline each one uses is chosen in `core.estimator_rewards`). The KL penalty joins the reward when
    `kl_penalty=reward`; with `kl_penalty=loss` it is added to the policy loss instead. `trained`: (B, T),
    `mask` less the rows the update leaves out (`drop_uniform_groups`); `whiten_rewards` scales by their
    statistics only, since a dropped row never reaches the loss (its rewards are 0 then). `turn_rewards`:
    (B, T) a multi-turn episode's rewards from its environment, on each turn's last token."""
    in_reward = kl_coef if config.kl_penalty == "reward" else 0.0
    rewards, kl = estimator_rewards(
        scores,
        old_logp,
        ref_logp,
        mask,
        in_reward,
        config.advantage_estimator,
        config.samples_per_prompt,
        scale=config.scale_rewards,
        rloo_baseline=config.rloo_baseline,
        kind=config.kl_estimator,
        turn_rewards=turn_rewards,
    )  # (B, T), (B, T)
    if config.whiten_rewards:
        rewards = masked_whiten(rewards, trained, shift_mean=False)  # (B, T)
    return rewards, kl


def uniform_share(scores: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """`policy/uniform_groups`: the fraction of groups of `group` samples whose (B,) scores are all equal."""
    return {"policy/uniform_groups": uniform_groups(scores, group).to(scores.dtype).mean()}


def kept_rows(scores: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """(B,) bool: the rows the update trains on. With `drop_uniform_groups` (DAPO's dynamic sampling) the
    groups whose scores are all equal are left out: they carry no task signal (their baselined score is 0).
    With the KL in the reward (RLOO's `sequence_reward`, GRPO with `kl_penalty=reward`) such a group's
    advantages are not 0, and the KL signal of its responses is dropped with them (DAPO has no KL term)."""
    if not config.drop_uniform_groups:
        return torch.ones_like(scores, dtype=torch.bool)
    uniform = uniform_groups(scores, config.samples_per_prompt)  # (B / k,)
    return (~uniform).repeat_interleave(config.samples_per_prompt)  # (B,)


@torch.no_grad()
def make_experience(
    model: PolicyAndValue,
    roles: Roles,
    rollout: Episodes,
    kl_coef: float,
    critic_scale: Normalise,
    config: PPOConfig,
    rewards: Rewards,
) -> tuple[Experience, dict[str, torch.Tensor]]:
    """Steps 3-7: everything PPO needs from one rollout (its episodes carry their prompts' rows), and the
    iteration's objective statistics. `critic_scale`: the critic's raw values -> the returns' scale."""
    ids, attention = rollout.input_ids, rollout.attention_mask  # (B, P + T)
    # the policy's tokens: a multi-turn episode's environment tokens are context only (no loss, no KL)
    context, mask = rollout.prompt_ids.shape[1], rollout.loss_mask  # P, (B, T)
    # Each process runs the passes of its own rows, by chunks; then every process holds the whole batch, and
    # every statistic below (whitening, explained variance, means) is over the global batch.
    mine = local_rows(ids.shape[0])
    slices = budget_slices(attention[mine], config) or row_slices(
        mine.stop - mine.start, forward_rows(config, ids.shape[1], vocab_size(roles))
    )
    chunks = [slice(mine.start + s.start, mine.start + s.stop) for s in slices]
    packed = config.padding_free
    with autocast(ids.device, config.bf16):
        # 3. old log-probs and values. The log-probs come from the same full pass as the reference's (not from
        # the KV-cached rollout), so the KL is exactly 0 before the first update.
        # (no-grad passes with the parameters whole: the processes may run different numbers of them)
        parts = [model(ids[s], attention[s], context, config.temperature, True, packed) for s in chunks]
        old_logp, entropy = (all_rows(torch.cat([p[i] for p in parts])) for i in (0, 2))  # (B, T)
        # A critic that starts as the RM reads its head as the score reads the RM (normalised, weighted), so
        # at iteration 0 its values are on the scale of the returns it must predict (`critic_scale`).
        critic = parts[0][1] is not None
        old_values = (
            critic_scale(all_rows(torch.cat([p[1] for p in parts]))) if critic else torch.zeros_like(old_logp)
        )  # (B, T)
        # 4. scores: the weighted sum of the reward components
        components = rewards.components(rollout, chunks)  # {name: (B,)}
        raw_scores = rewards.total(components, normalised=False, like=rollout.stopped)  # (B,) for the logs
        scores = shape_scores(
            rewards.total(components, like=rollout.stopped), rollout.stopped, config
        )  # (B,)
        # 5. reference log-probs
        ref_logp = all_rows(
            torch.cat(
                [
                    roles.reference_logprobs(ids[s], attention[s], context, config.temperature, packed)
                    for s in chunks
                ]
            )
        )  # (B, T)
    # the update trains on the kept rows only: every batch statistic that feeds it (reward whitening, the
    # advantages' whitening) is over them; the logged objective below is over every row
    turn_rewards = rollout.turn_rewards  # (B, T) an environment's rewards, or None
    totals = scores if turn_rewards is None else scores + turn_rewards.sum(1)  # (B,) the episode's reward
    trained = mask & kept_rows(totals, config)[:, None]  # (B, T)
    # 6. per-token rewards: the score (for GRPO and RLOO, less its group's baseline) on the last response
    # token, and -beta * KL on every token when the penalty is in the reward
    per_token, kl = step_rewards(
        scores, old_logp, ref_logp, mask, kl_coef, config, trained, turn_rewards
    )  # (B, T), (B, T)
    # 7. advantages (computed once, then frozen for the epochs): GAE whitened, or the rewards-to-go (whitened
    # for REINFORCE++)
    advantages, returns = estimator_advantages(
        per_token, old_values, trained, config.advantage_estimator, config.gamma, config.lam
    )  # (B, T)
    experience = Experience(
        ids,
        attention,
        context,
        trained,
        old_logp,
        ref_logp,
        old_values,
        totals,
        per_token,
        advantages,
        returns,
    )
    non_score = (-kl_coef * kl).sum(1)  # (B,) the objective's KL term, wherever the penalty is applied
    stats = {
        "objective/scores": totals.mean(),
        "objective/scores_raw": raw_scores.mean(),
        "objective/kl": kl.sum(1).mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/rlhf_reward": (totals + non_score).mean(),
        "objective/entropy": masked_mean(entropy, mask),
        **({"val/explained_variance": explained_variance(old_values, returns, mask)} if critic else {}),
        **(component_stats(components) if len(components) > 1 or rewards.functions else {}),
        # the groups whose scores are all equal: no signal for a group baseline; left out of the update
        # with drop_uniform_groups
        **(uniform_share(totals, config.samples_per_prompt) if config.samples_per_prompt > 1 else {}),
        **({} if turn_rewards is None else episode_stats(rollout)),
        "response/length_mean": mask.sum(1).float().mean(),
        "response/stop_rate": rollout.stopped.float().mean(),
        "rollout/logprob_mismatch": ((old_logp - rollout.logprobs).abs() * mask).max(),
    }
    return experience, stats

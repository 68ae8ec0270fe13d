"""Step 10 of a PPO iteration: fixed-seed samples on held-out prompts, scored, with their KL to the
reference."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.algorithms.ppo.experience import shape_scores
from rlhfkit.algorithms.ppo.rewards import Rewards, with_rows
from rlhfkit.algorithms.ppo.roles import Roles
from rlhfkit.config import PPOConfig
from rlhfkit.core import sequence_kl
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import RolloutEngine, SamplingSettings
from rlhfkit.rollout.completions import response_texts
from rlhfkit.runtime.process import autocast


@torch.no_grad()
def evaluate_policy(
    engine: RolloutEngine,
    roles: Roles,
    policy: Any,
    prompts: list[int],
    config: PPOConfig,
    rewards: Rewards,
) -> tuple[dict[str, float], list[dict]]:
    """Mean score, KL to the reference and length on `prompts` (indices into `rewards.prompts`, whose rows
    the rewards read), and the samples. The same random draws at every evaluation, so two evaluations differ
    only by the policy."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
    scores, kls, lengths, samples = [], [], [], []
    for start in range(0, len(prompts), config.mini_batch_size):
        batch = prompts[start : start + config.mini_batch_size]
        rollout = engine.generate([rewards.prompts.ids[i] for i in batch], settings, generator)
        rollout = with_rows(rollout, batch)
        ids, mask, context = rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
        with autocast(device, config.bf16):
            logp, _ = response_logprobs(policy, ids, mask, context, config.temperature)  # (b, T)
            ref = roles.reference_logprobs(ids, mask, context, config.temperature)  # (b, T)
            components = rewards.components(
                rollout, [slice(0, ids.shape[0])], gather=False
            )  # the main process alone
            batch_scores = shape_scores(rewards.total(components), rollout.stopped, config)  # (b,)
        kls.append(sequence_kl(logp, ref, rollout.response_mask))
        scores.append(batch_scores)
        lengths.append(rollout.response_mask.sum(1).float())
        responses = response_texts(roles.tokenizer, rollout)  # as the reward functions read them
        samples += [
            {
                "prompt": roles.tokenizer.decode(
                    rollout.prompt_ids[row][rollout.prompt_mask[row].bool()], skip_special_tokens=True
                ),
                "response": responses[row],
                "score": batch_scores[row].item(),
            }
            for row in range(ids.shape[0])
        ]
    metrics = {
        "eval/score": torch.cat(scores).mean().item(),
        "eval/kl": torch.cat(kls).mean().item(),
        "eval/length": torch.cat(lengths).mean().item(),
    }
    return metrics, samples

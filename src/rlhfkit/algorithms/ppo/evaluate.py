"""Step 10 of a PPO iteration: fixed-seed samples on held-out prompts, scored, with their KL to the
reference and the monitors' values (`rlhfkit.tasks.scorers`: measured, never part of the reward)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhfkit.algorithms.ppo.experience import shape_scores
from rlhfkit.algorithms.ppo.prompts import PromptSet
from rlhfkit.algorithms.ppo.rewards import Episodes, Rewards, with_rows
from rlhfkit.algorithms.ppo.rewards.episodes import episode_texts
from rlhfkit.algorithms.ppo.rewards.functions import agreed
from rlhfkit.algorithms.ppo.roles import Roles
from rlhfkit.config import PPOConfig
from rlhfkit.core import sequence_kl
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import RolloutEngine, SamplingSettings
from rlhfkit.rollout.completions import response_texts
from rlhfkit.rollout.environments import ENDINGS, EpisodeRunner, episode_stats, episode_turns
from rlhfkit.runtime.process import autocast
from rlhfkit.tasks.scorers import Scorer, monitor_means, monitor_scores


def episode_monitors(
    monitors: Sequence[Scorer],
    episodes: Episodes,
    prompts: PromptSet,
    tokenizer: Any,
    everywhere: bool,
) -> dict[str, list[float]]:
    """{`monitor/<name>`: one value per episode} of every monitor, on the episodes' text as the reward
    functions read it (a conversation's messages for a reward-model monitor). Nothing random is drawn and
    nothing is trained. A monitor function that fails stops the run as a failing reward function does
    (StepFailed: a checkpoint, status 1), every process together with `everywhere` (`agreed`)."""
    if not monitors:
        return {}
    texts = episode_texts(episodes, range(len(episodes.rows)), prompts, tokenizer)
    messages = [record.get("messages") for record in texts.records]

    def user() -> dict[str, list[float]]:
        return monitor_scores(
            list(monitors),
            texts.prompts,
            texts.responses,
            texts.columns,
            messages=messages,
            finished=texts.finished,
        )

    return agreed(user, episodes.prompt_ids.device, everywhere)


@torch.no_grad()
def evaluate_policy(
    engine: RolloutEngine,
    roles: Roles,
    policy: Any,
    prompts: list[int],
    config: PPOConfig,
    rewards: Rewards,
    monitors: Sequence[Scorer] = (),
    episodes: EpisodeRunner | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Mean score, KL to the reference and length on `prompts` (indices into `rewards.prompts`, whose rows
    the rewards read), each monitor's mean (`monitor/<name>`), and the samples (with their monitors' values).
    The same random draws at every evaluation, so two evaluations differ only by the policy. With `episodes`
    (multi-turn), whole episodes: the score adds the environment's rewards, and `eval/turns`,
    `eval/env_reward`, ... describe them (`episode_stats`); each sample lists its turns."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
    scores, kls, lengths, samples, monitored, described = [], [], [], [], {}, []
    for start in range(0, len(prompts), config.mini_batch_size):
        batch = prompts[start : start + config.mini_batch_size]
        ids = [rewards.prompts.ids[i] for i in batch]
        if episodes is None:
            rollout = engine.generate(ids, settings, generator)
        else:
            columns, records = (
                [getattr(rewards.prompts, f)[i] for i in batch] for f in ("columns", "records")
            )
            rollout = episodes.run(
                ids, columns, records, settings, None, everywhere=False, generator=generator
            )
        rollout = with_rows(rollout, batch)
        ids, mask, context = rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
        with autocast(device, config.bf16):
            logp, _ = response_logprobs(policy, ids, mask, context, config.temperature)  # (b, T)
            ref = roles.reference_logprobs(ids, mask, context, config.temperature)  # (b, T)
            components = rewards.components(
                rollout, [slice(0, ids.shape[0])], gather=False
            )  # the main process alone
            batch_scores = shape_scores(
                rewards.total(components, like=rollout.stopped), rollout.stopped, config
            )  # (b,)
        if rollout.turn_rewards is not None:  # the episode's whole reward
            batch_scores = batch_scores + rollout.turn_rewards.sum(1)  # (b,)
            described.append(episode_stats(rollout, prefix="eval/"))
        kls.append(sequence_kl(logp, ref, rollout.loss_mask))
        scores.append(batch_scores)
        lengths.append(rollout.loss_mask.sum(1).float())
        responses = response_texts(roles.tokenizer, rollout)  # as the reward functions read them
        values = episode_monitors(monitors, rollout, rewards.prompts, roles.tokenizer, everywhere=False)
        for name, v in values.items():
            monitored.setdefault(name, []).extend(v)
        samples += [
            {
                "prompt": roles.tokenizer.decode(
                    rollout.prompt_ids[row][rollout.prompt_mask[row].bool()], skip_special_tokens=True
                ),
                "response": responses[row],
                "score": batch_scores[row].item(),
                **{name: v[row] for name, v in values.items()},
                **({} if episodes is None else episode_sample(episodes, rollout, row)),
            }
            for row in range(ids.shape[0])
        ]
    metrics = {
        "eval/score": torch.cat(scores).mean().item(),
        "eval/kl": torch.cat(kls).mean().item(),
        "eval/length": torch.cat(lengths).mean().item(),
        **monitor_means(monitored),
        **weighted_means(described, [len(s) for s in scores]),
    }
    return metrics, samples


def episode_sample(episodes: EpisodeRunner, rollout: Episodes, row: int) -> dict[str, Any]:
    """What samples.jsonl shows of a multi-turn episode besides its text: its turns (the environment's
    marked), its reward from the environment, and how it ended."""
    stops = set(episodes.stop_ids.tolist())
    return {
        "turns": episode_turns(episodes.tokenizer, rollout, row, stops),
        "env_reward": rollout.turn_rewards[row].sum().item(),
        "ended": ENDINGS[int(rollout.ended[row])],
    }


def weighted_means(parts: list[dict[str, torch.Tensor]], sizes: list[int]) -> dict[str, float]:
    """{name: mean over every episode} of per-batch means `parts` of batches of `sizes` episodes."""
    if not parts:
        return {}
    total = sum(sizes)
    return {
        name: sum(p[name].item() * n for p, n in zip(parts, sizes, strict=True)) / total for name in parts[0]
    }

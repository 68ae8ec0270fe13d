"""The scales of the reward: the RM's raw scores normalised with its saved statistics, and the critic's
values, read on the scale of the returns it predicts."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.runtime.outputs import read_run_file

log = logging.getLogger("rlhfkit")
Normalise = Callable[[torch.Tensor], torch.Tensor]  # raw RM scores (or critic values) -> PPO's scale
RM = "model"  # the reward model's component name: `reward/model`


def unchanged(values: torch.Tensor) -> torch.Tensor:
    return values


def reward_normaliser(config: PPOConfig) -> Normalise:
    """Raw RM scores -> the scale PPO uses: normalised with the RM's saved mean/std when asked
    (docs/ppo-details.md #9)."""
    if not config.normalize_reward or not config.reward_model:  # reward functions alone: their own scale
        return unchanged
    stats = read_run_file(config.reward_model).get("reward_stats")
    if not stats:
        log.warning(
            "%s has no reward_stats (not trained by `rlhfkit rm`): scores are not normalised",
            config.reward_model,
        )
        return unchanged
    return saved_scale(stats)


def saved_scale(stats: dict[str, float]) -> Normalise:
    """Raw RM scores (tensors or numbers) -> normalised by the mean and std `rm` saved (`reward_stats`)."""
    mean, std = stats["mean"], max(stats["std"], 1e-6)
    return lambda scores: (scores - mean) / std


def critic_scale(normalise: Normalise, weights: dict[str, float], starts_from_rm: bool) -> Normalise:
    """The critic's raw values -> the scale of the returns (docs/ppo-details.md #19). A critic that starts as
    the RM predicts at iteration 0 the RM's part of the score, `weight · normalise(value)`: exactly the
    return's scale when the RM is the only component (up to clipping, the missing-EOS penalty and reward
    whitening, which no fixed affine map follows). With reward functions too (or an RM weighted 0) it cannot
    know the rest: warned once. Any other critic (a new head) learns the scale; its values are taken as they
    are."""
    if not starts_from_rm:
        return unchanged
    weight = weights[RM]
    if len(weights) > 1 or weight == 0:
        log.warning(
            "the critic starts as the reward model and knows only its part of the score (weight %g); the "
            "rest it must learn (docs/ppo-details.md #19)",
            weight,
        )
    if weight in (0, 1):  # 0 would give the critic no gradient: its values stay on the RM's scale
        return normalise
    return lambda values: weight * normalise(values)

"""The run's reward components and their weights: each episode's score is the weighted sum of the reward
model's (normalised) score and the user's reward functions' values, weights matched to components by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.algorithms.ppo.prompts import PromptSet
from rlhfkit.algorithms.ppo.rewards.episodes import Episodes, EpisodeTexts, episode_texts
from rlhfkit.algorithms.ppo.rewards.functions import Scores, agreed, function_scores, gathered
from rlhfkit.algorithms.ppo.rewards.model import ModelScores
from rlhfkit.algorithms.ppo.rewards.scale import RM, Normalise
from rlhfkit.algorithms.ppo.roles import Roles
from rlhfkit.config import PPOConfig
from rlhfkit.data.encode import prompt_texts
from rlhfkit.errors import UsageError
from rlhfkit.tasks.rewards import (
    RewardFunction,
    RewardFunctionError,
    call_reward_function,
    load_reward_function,
)


def component_names(has_reward_model: bool, functions: list[RewardFunction]) -> list[str]:
    """Unique component names, the RM's first: a function's own name, or its whole spec when that name is
    taken (by another function or by the RM)."""
    short = [f.name for f in functions]
    names = [f.spec if short.count(f.name) > 1 or f.name == RM else f.name for f in functions]
    return ([RM] if has_reward_model else []) + names


@dataclass
class Rewards:
    """The reward components of a run (the RM's, then the functions', in order) and their weights."""

    roles: Roles
    functions: dict[str, RewardFunction]  # component name -> function
    weights: dict[str, float]  # component name -> weight, every component
    prompts: PromptSet  # the rows the episodes' indices point into
    normalise: Normalise  # the RM's raw scores -> the scale PPO uses (its saved mean/std)
    model: ModelScores | None  # the RM's scores, None without an RM
    concurrency: int = 16

    def texts(self, episodes: Episodes, rows: range) -> EpisodeTexts:
        """Batch rows `rows` as text (with what a re-encoding RM reads when there is one)."""
        reencodes = self.model is not None and self.roles.rm_tokenizer is not None
        tokenizer, functions = self.roles.tokenizer, bool(self.functions)
        return episode_texts(episodes, rows, self.prompts, tokenizer, functions or not reencodes, reencodes)

    def model_scores(
        self, episodes: Episodes, chunks: list[slice], texts: EpisodeTexts | None
    ) -> torch.Tensor:
        """(b,) raw RM scores of the rows of `chunks`, one forward pass per chunk; `texts` (theirs, from the
        first chunk's first row on) when the RM reads its own tokens."""
        first = chunks[0].start
        if self.roles.rm_tokenizer is not None:
            device = episodes.prompt_ids.device
            return torch.cat([self.model.reencoded(texts.part(s, first), device) for s in chunks])
        chat = ["messages" in self.prompts.records[episodes.rows[r]] for r in range(first, chunks[-1].stop)]
        return torch.cat(
            [self.model.shared(episodes, s, chat[s.start - first : s.stop - first]) for s in chunks]
        )

    def components(self, episodes: Episodes, chunks: list[slice], gather: bool = True) -> Scores:
        """{name: (B,) raw scores} of every component. This process scores the rows of `chunks` (its own, by
        chunks); with `gather`, every process then holds all rows. A failing reward function stops every
        process together (StepFailed); any other error propagates as it is."""
        device, mine = episodes.prompt_ids.device, range(chunks[0].start, chunks[-1].stop)
        needs_text = bool(self.functions) or self.roles.rm_tokenizer is not None
        texts = self.texts(episodes, mine) if needs_text else None  # decoded once for functions and the RM
        scores = {RM: self.model_scores(episodes, chunks, texts)} if self.model is not None else {}

        def user() -> Scores:
            return function_scores(self.functions, texts, self.concurrency) if self.functions else {}

        return gathered(scores | agreed(user, device, gather), device, gather)

    def total(
        self, components: Scores, normalised: bool = True, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) the weighted sum of the components, each weight the one of its component's name; the RM's
        scores normalised with its saved statistics (raw, for the logs, with `normalised=False`): the score
        PPO then clips and penalises. Without any component (an environment's rewards alone) zeros like
        `like` ((B,))."""
        if not components:
            return torch.zeros_like(like, dtype=torch.float32)
        return sum(
            self.weights[name] * (self.normalise(c) if name == RM and normalised else c)
            for name, c in components.items()
        )


def component_stats(components: Scores) -> dict[str, torch.Tensor]:
    """`reward/<name>` (mean) and `reward/<name>_std` of each component, for the metrics."""
    stats = {}
    for name, scores in components.items():
        stats[f"reward/{name}"] = scores.mean()
        stats[f"reward/{name}_std"] = scores.std() if scores.numel() > 1 else torch.zeros(())
    return stats


def check_function(function: RewardFunction, prompts: PromptSet, tokenizer: Any, concurrency: int) -> None:
    """A UsageError when `function` takes a column some prompt row lacks, or fails on the first row with an
    empty response (before anything is written)."""
    try:
        function.check_columns(prompts.columns)
    except RewardFunctionError as exc:
        raise UsageError(str(exc)) from None
    try:
        example = prompt_texts(prompts.records[:1], tokenizer)
        call_reward_function(function, example, [""], concurrency, prompts.columns[:1])
    except RewardFunctionError as exc:
        raise UsageError(f"{exc} (checked at start-up on an empty response)") from None


def load_rewards(config: PPOConfig, roles: Roles, prompts: PromptSet, normalise: Normalise) -> Rewards:
    """The run's reward components, weights matched to them by name, each function checked on one example
    before anything is written: one that cannot be imported, takes a column the prompts lack, raises, or
    returns something other than one finite number is a UsageError."""
    functions = [load_reward_function(spec) for spec in config.reward_functions]
    names = component_names(roles.has_reward_model, functions)
    weights = dict(zip(names, list(config.reward_weights) or [1.0] * len(names), strict=True))
    for function in functions:
        check_function(function, prompts, roles.tokenizer, config.reward_concurrency)
    named = dict(zip(names[len(names) - len(functions) :], functions, strict=True))
    model = ModelScores.create(roles, config.padding_free) if roles.has_reward_model else None
    return Rewards(roles, named, weights, prompts, normalise, model, config.reward_concurrency)


def describe(rewards: Rewards) -> dict[str, Any]:
    """The components and weights, for the run file."""
    return dict(rewards.weights)

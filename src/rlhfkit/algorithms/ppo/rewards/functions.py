"""The user's reward functions on the episodes' text, and the one place where their failure is caught: a
`RewardFunctionError` stops every process together (a `StepFailed` the run loop checkpoints on), while any
other exception — a bug in rlhfkit, an out-of-memory in the RM — propagates with its type and traceback."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhfkit.algorithms.ppo.rewards.episodes import EpisodeTexts
from rlhfkit.runtime.distributed import agreed_on_failure, all_rows
from rlhfkit.tasks.rewards import RewardFunction, RewardFunctionError, call_reward_function

Scores = dict[str, torch.Tensor]  # component name -> (b,) raw scores


def function_scores(functions: dict[str, RewardFunction], texts: EpisodeTexts, concurrency: int) -> Scores:
    """{name: (b,) float tensor} of each reward function (by component name) on the episodes of `texts`,
    with their rows' columns for the functions that take them; a RewardFunctionError on failure."""
    return {
        name: torch.tensor(
            call_reward_function(f, texts.prompts, texts.responses, concurrency, texts.columns)
        )
        for name, f in functions.items()
    }


def agreed(user: Callable[[], Scores], device: torch.device, everywhere: bool) -> Scores:
    """`user()`, the calls into the user's reward functions, with the processes agreeing on its outcome
    (`runtime.distributed.agreed_on_failure`): a RewardFunctionError on any process is a StepFailed on every
    process together. `everywhere=False`: this process alone runs (evaluation)."""
    message = "a reward function failed on another process"
    return agreed_on_failure(user, RewardFunctionError, device, everywhere, message)


def gathered(scores: Scores, device: torch.device, everywhere: bool) -> Scores:
    """Each component's scores on `device`; with `everywhere`, every process's rows in rank order (the
    whole batch on every process)."""
    return {name: all_rows(v.to(device)) if everywhere else v.to(device) for name, v in scores.items()}

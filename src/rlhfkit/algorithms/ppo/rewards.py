"""Step 4 of a PPO iteration: the score of each episode, the weighted sum of its reward components — the
reward model (in its own tokens when its tokenizer differs from the policy's) and the user's reward functions
(`rlhfkit.tasks.rewards`) on the prompt and response as text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.algorithms.ppo.roles import Roles
from rlhfkit.config import PPOConfig
from rlhfkit.data import pad
from rlhfkit.data.encode import prompt_texts, scored_sequence
from rlhfkit.errors import StepFailed, UsageError, first_line
from rlhfkit.rollout import Rollout
from rlhfkit.runtime.distributed import all_max, all_rows
from rlhfkit.tasks.rewards import (
    RewardFunction,
    RewardFunctionError,
    call_reward_function,
    load_reward_function,
)

RM = "model"  # the reward model's component name: `reward/model`
Normalise = Callable[[torch.Tensor], torch.Tensor]  # raw RM scores (or critic values) -> PPO's scale


@dataclass
class Rewards:
    """The reward components of a run and their weights (the RM first when there is one)."""

    roles: Roles
    functions: list[RewardFunction]
    weights: list[float]
    records: dict[tuple[int, ...], dict]  # prompt ids -> the prompt's data row ({prompt} or {messages})
    normalise: Normalise  # the RM's raw scores -> the scale PPO uses (its saved mean/std)
    concurrency: int = 16

    @property
    def names(self) -> list[str]:
        """Component names, unique: a function's own name, or its whole spec when that name is taken."""
        short = [f.name for f in self.functions]
        names = [f.spec if short.count(f.name) > 1 or f.name == RM else f.name for f in self.functions]
        return ([RM] if self.roles.has_reward_model else []) + names

    def prompts(self, rollout: Rollout, rows: range) -> list[dict]:
        """The data rows of the prompts of `rows`."""
        return [
            self.records[tuple(rollout.prompt_ids[r][rollout.prompt_mask[r].bool()].tolist())] for r in rows
        ]

    def responses(self, rollout: Rollout, rows: range) -> list[str]:
        """The responses of `rows` as text (the stop token left out)."""
        tokenizer = self.roles.tokenizer
        return [
            tokenizer.decode(rollout.response_ids[r][rollout.response_mask[r]], skip_special_tokens=True)
            for r in rows
        ]

    def model_scores(
        self, rollout: Rollout, rows: slice, records: list[dict], responses: list[str]
    ) -> torch.Tensor:
        """(b,) raw RM scores of `rows`: on the rollout's own ids when the RM reads the policy's tokens, else
        on prompt + response (`records`, `responses`: those rows' as text) re-encoded with the RM's tokenizer
        and chat template."""
        if self.roles.rm_tokenizer is None:
            return self.roles.scores(rollout.input_ids[rows], rollout.attention_mask[rows])
        tokenizer = self.roles.rm_tokenizer
        limit = self.roles.rm_max_length  # the RM's own positions: a long prompt loses its beginning
        sequences = []
        for record, response, stopped in zip(records, responses, rollout.stopped[rows], strict=True):
            prompt = record.get("messages") or record["prompt"]
            # an unfinished response is scored without the EOS (or closing turn) it never produced
            ids = scored_sequence(prompt, response, tokenizer, finished=bool(stopped))
            sequences.append(ids[-limit:] if limit else ids)
        ids, mask = pad(sequences, tokenizer.pad_token_id, "right")  # (b, L)
        device = rollout.prompt_ids.device
        return self.roles.scores(ids.to(device), mask.to(device))

    def function_scores(self, records: list[dict], responses: list[str]) -> dict[str, torch.Tensor]:
        """{name: (b,) float tensor} of each reward function on the rows of `records` and `responses`; a
        RewardFunctionError on failure."""
        prompts = prompt_texts(records, self.roles.tokenizer)
        names = self.names[len(self.names) - len(self.functions) :]
        return {
            name: torch.tensor(call_reward_function(f, prompts, responses, self.concurrency))
            for name, f in zip(names, self.functions, strict=True)
        }

    def components(
        self, rollout: Rollout, chunks: list[slice], gather: bool = True
    ) -> dict[str, torch.Tensor]:
        """{name: (B,) raw scores} of every component over the batch. Each process scores the rows of
        `chunks` (its own, by chunks); with `gather`, every process then holds all rows. A failing reward
        function stops every process together (StepFailed), never leaves one waiting for the others."""
        device = rollout.prompt_ids.device
        mine, failure, scores = range(chunks[0].start, chunks[-1].stop), None, {}
        try:  # anything that fails here fails on this process alone: the others are told before they wait
            # the rows as text, decoded once, for the functions and for an RM with its own tokenizer
            text = self.functions or self.roles.rm_tokenizer is not None
            records = self.prompts(rollout, mine) if text else []
            responses = self.responses(rollout, mine) if text else []

            def part(items: list, rows: slice) -> list:
                return items[rows.start - mine.start : rows.stop - mine.start]

            if self.roles.has_reward_model:
                scores[RM] = torch.cat(
                    [self.model_scores(rollout, s, part(records, s), part(responses, s)) for s in chunks]
                )
            scores |= self.function_scores(records, responses) if self.functions else {}
        except RewardFunctionError as exc:
            failure = str(exc)
        except Exception as exc:
            failure = f"scoring failed: {type(exc).__name__} ({first_line(exc)})"
        failed = all_max(torch.tensor(float(failure is not None), device=device)) if gather else failure
        if failed:
            raise StepFailed(failure or "scoring failed on another process")
        merge = all_rows if gather else (lambda x: x)
        return {name: merge(v.to(device)) for name, v in scores.items()}

    def total(self, components: dict[str, torch.Tensor], normalised: bool = True) -> torch.Tensor:
        """(B,) the weighted sum of the components, the RM's normalised with its saved statistics (raw, for
        the logs, with `normalised=False`): the score PPO then clips and penalises."""
        return sum(
            w * (self.normalise(c) if name == RM and normalised else c)
            for w, (name, c) in zip(self.weights, components.items(), strict=True)
        )


def component_stats(components: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`reward/<name>` (mean) and `reward/<name>_std` of each component, for the metrics."""
    stats = {}
    for name, scores in components.items():
        stats[f"reward/{name}"] = scores.mean()
        stats[f"reward/{name}_std"] = scores.std() if scores.numel() > 1 else torch.zeros(())
    return stats


def load_rewards(
    config: PPOConfig, roles: Roles, records: dict[tuple[int, ...], dict], normalise: Normalise
) -> Rewards:
    """The run's reward components, each function checked on one example before anything is written: one
    that cannot be imported, raises, or returns something other than one finite number is a UsageError."""
    functions = [load_reward_function(spec) for spec in config.reward_functions]
    weights = list(config.reward_weights) or [1.0] * (bool(config.reward_model) + len(functions))
    example = prompt_texts([next(iter(records.values()))], roles.tokenizer)
    for function in functions:
        try:
            call_reward_function(function, example, [""], config.reward_concurrency)
        except RewardFunctionError as exc:
            raise UsageError(f"{exc} (checked at start-up on an empty response)") from None
    return Rewards(roles, functions, weights, records, normalise, config.reward_concurrency)


def describe(rewards: Rewards) -> dict[str, Any]:
    """The components and weights, for the run file."""
    return dict(zip(rewards.names, rewards.weights, strict=True))

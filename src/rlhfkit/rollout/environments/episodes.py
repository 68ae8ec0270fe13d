"""Episodes as they grow turn by turn around the sampler, as one `Rollout` once finished, and what is
reported of them (their turns as text, their statistics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from rlhfkit.data import pad
from rlhfkit.data.encode import special_ids
from rlhfkit.errors import EnvironmentFailure
from rlhfkit.rollout.completions import response_text
from rlhfkit.rollout.decoding import EagerDecoder
from rlhfkit.rollout.engine import RolloutEngine
from rlhfkit.rollout.environments.chat import TemplateDelta
from rlhfkit.rollout.environments.interface import Environment, opening_ids
from rlhfkit.rollout.sampling import Rollout, SamplingSettings
from rlhfkit.runtime.distributed import agreed_on_failure, all_max
from rlhfkit.tasks.rewards import run_coroutine

# How an episode ended: `step` returned None; the policy had its `max_turns`; a turn ran out of tokens
# (`response_length`, or the room `max_episode_length` left) or the environment's answer would not fit.
ENDINGS = ("environment", "max_turns", "length")


@dataclass
class Episode:
    """One episode as it grows: the opening's ids, then the region after it (policy and environment)."""

    env: Any
    opening: list[int]
    messages: list[dict] | None  # the opening conversation (messages mode), None for a text opening
    region: list[int] = field(default_factory=list)
    policy: list[bool] = field(default_factory=list)  # per region token: the policy's own
    logprobs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # per region token: a turn's reward on its last
    turns: int = 0
    turn_start: int = 0  # where the policy's last turn starts in `region`
    ended: int | None = None  # an index into ENDINGS
    stopped: bool = False  # the last policy turn ended with a stop token

    @property
    def length(self) -> int:
        return len(self.opening) + len(self.region)

    def add(self, ids: list[int], policy: bool, logprobs: list[float] | None = None) -> None:
        self.region += ids
        self.policy += [policy] * len(ids)
        self.logprobs += logprobs or [0.0] * len(ids)
        self.rewards += [0.0] * len(ids)


@dataclass
class EpisodeRunner:
    """Runs the episodes of a batch of prompts turn by turn: every live episode's next turn sampled in one
    batch by `engine`, then each environment's `step` (an async one `concurrency` at once).

    `everywhere`: every process runs its share of a batch, and the processes agree each turn on the padding
    width (each turn is sampled as one process sampling all of them would) and on failure."""

    engine: RolloutEngine
    tokenizer: Any
    environment: Environment
    stop_ids: torch.Tensor  # (S,)
    max_turns: int
    max_length: int  # tokens of the whole context (opening included)
    max_prompt_length: int
    concurrency: int = 16

    def start(self, prompts: list[list[int]], rows: list[dict], records: list[dict]) -> list[Episode]:
        """An episode per prompt: its environment made on the data row, its opening (`reset()`, else the
        prompt's own ids: `prompts`), cut from the left to `max_prompt_length` as prompts are."""
        episodes = []
        for ids, row, record in zip(prompts, rows, records, strict=True):
            env = self.environment.make(row)
            opening = self.environment.opening(env)
            messages = record.get("messages") if opening is None else None
            if opening is not None:
                messages = opening if isinstance(opening, list) else None
                ids = opening_ids(self.environment, self.tokenizer, opening)[-self.max_prompt_length :]
            episodes.append(Episode(env, list(ids), messages))
        return episodes

    def run(
        self,
        prompts: list[list[int]],
        rows: list[dict],
        records: list[dict],
        settings: SamplingSettings,
        noise: torch.Tensor | None,
        everywhere: bool,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """The episodes of `prompts` (their data `rows`, and `records` in normal form) as one rollout.
        `noise` ((max_turns, response_length, b) uniforms) decides turn t's draws of row b (else
        `generator`). A failing environment is a StepFailed, on every process together with `everywhere`."""
        episodes: list[Episode] = []
        self.agree(lambda: episodes.extend(self.start(prompts, rows, records)), everywhere)
        for turn in range(self.max_turns):
            live = [i for i, e in enumerate(episodes) if e.ended is None]
            width = max((episodes[i].length for i in live), default=0)
            width = int(all_max(torch.tensor(width, device=self.stop_ids.device))) if everywhere else width
            if width == 0:  # no live episode anywhere
                break
            if live:
                turn_noise = None if noise is None else noise[turn][:, live]  # (T, live)
                rows = len(episodes) if self.fixed_rows else len(live)
                self.sample_turn([episodes[i] for i in live], settings, turn_noise, width, generator, rows)
            answering = [episodes[i] for i in live]
            self.agree(lambda: self.answer(answering), everywhere)  # noqa: B023 (called at once)
        return self.assemble(episodes)

    def sample_turn(
        self,
        episodes: list[Episode],
        settings: SamplingSettings,
        noise: torch.Tensor | None,
        width: int,
        generator: torch.Generator | None,
        rows: int,
    ) -> None:
        """Each live episode's next policy turn, sampled in one batch (left-padded to `width`) of `rows` rows
        (copies of the first fill it: a compiled decoder keeps one graph for one batch size), cut to the room
        its episode has left."""
        room = [min(settings.max_new_tokens, self.max_length - e.length) for e in episodes]
        turn = dataclasses.replace(settings, max_new_tokens=max(room))
        contexts = [e.opening + e.region for e in episodes]
        filler = rows - len(contexts)
        if noise is None and filler and not settings.greedy:  # the live rows' draws as without the filler
            noise = torch.rand(max(room), len(contexts), generator=generator, device=self.stop_ids.device)
        if noise is not None:
            noise = noise[: max(room)]  # (max(room), live)
            noise = torch.cat([noise, noise[:, :1].expand(-1, filler)], dim=1)  # (max(room), rows)
        rollout = self.engine.generate(contexts + contexts[:1] * filler, turn, generator, noise, width)
        for row, (episode, limit) in enumerate(zip(episodes, room, strict=True)):
            mask = rollout.response_mask[row]  # (T,)
            ids = rollout.response_ids[row][mask][:limit].tolist()
            logprobs = rollout.logprobs[row][mask][:limit].tolist()
            episode.stopped = bool(rollout.stopped[row]) and int(mask.sum()) <= limit
            episode.turn_start = len(episode.region)
            episode.add(ids, policy=True, logprobs=logprobs)
            episode.turns += 1

    def answer(self, episodes: list[Episode]) -> None:
        """Each episode's environment answers its last turn: the reward on that turn's last token, then the
        answer appended, or the episode ended."""
        texts = [self.last_turn_text(e) for e in episodes]
        if self.environment.is_async:
            results = run_coroutine(self.gathered(episodes, texts))
        else:
            results = [self.environment.step(e.env, text) for e, text in zip(episodes, texts, strict=True)]
        for episode, (answer, reward) in zip(episodes, results, strict=True):
            episode.rewards[-1] += reward
            if not episode.stopped:  # the turn ran out of tokens: nothing can follow it
                episode.ended = ENDINGS.index("length")
            elif answer is None:
                episode.ended = ENDINGS.index("environment")
            elif episode.turns == self.max_turns:
                episode.ended = ENDINGS.index("max_turns")
            else:
                ids = self.answer_ids(episode, answer)
                if episode.length + len(ids) >= self.max_length:  # no room for a policy token after it
                    episode.ended = ENDINGS.index("length")
                else:
                    episode.add(ids, policy=False)

    async def gathered(self, episodes: list[Episode], texts: list[str]) -> list:
        import asyncio

        gate = asyncio.Semaphore(self.concurrency)

        async def one(episode: Episode, text: str) -> tuple:
            async with gate:
                return await self.environment.step_async(episode.env, text)

        return await asyncio.gather(*(one(e, t) for e, t in zip(episodes, texts, strict=True)))

    def last_turn_text(self, episode: Episode) -> str:
        """The policy's last turn as the environment reads it: decoded without its stop token."""
        ids = torch.tensor(episode.region[episode.turn_start :])  # (n,)
        return response_text(self.tokenizer, ids, torch.ones_like(ids, dtype=torch.bool), episode.stopped)

    def answer_ids(self, episode: Episode, answer: str | list[dict]) -> list[int]:
        """The environment's answer as the tokens that follow the policy's turn."""
        if isinstance(answer, str):
            return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if episode.messages is None:
            raise EnvironmentFailure(
                f"environment {self.environment.spec} answered with messages in an episode that opened "
                "with text: give the prompts as messages (or reset() a conversation), or answer with text"
            )
        last = episode.region[-1]
        end_text = self.tokenizer.decode([last]) if last in self.special else ""
        return TemplateDelta(self.tokenizer).ids(episode.messages, answer, end_text)

    @cached_property
    def fixed_rows(self) -> bool:
        """Whether every turn samples as many rows as the batch has (not only the live episodes'): yes for a
        static or compiled decoder, whose cache and graph would be rebuilt for every new batch size."""
        decoder = getattr(self.engine, "decoder", None)
        return decoder is not None and not isinstance(decoder, EagerDecoder)

    @cached_property
    def special(self) -> set[int]:
        return special_ids(self.tokenizer)

    def agree(self, work: Any, everywhere: bool) -> None:
        """Run `work` (calls into the environment); an EnvironmentFailure on any process is a StepFailed on
        every process together (`runtime.distributed.agreed_on_failure`)."""
        elsewhere = "the environment failed on another process"
        agreed_on_failure(work, EnvironmentFailure, self.stop_ids.device, everywhere, elsewhere)

    def assemble(self, episodes: list[Episode]) -> Rollout:
        """The episodes as one rollout: openings left-padded, the regions after them right-padded."""
        pad_id = self.tokenizer.pad_token_id
        device = self.stop_ids.device
        opening, opening_mask = pad([e.opening for e in episodes], pad_id, "left")  # (b, P)
        region, region_mask = pad([e.region for e in episodes], pad_id, "right")  # (b, T)

        def column(values: list[list], fill: Any, dtype: torch.dtype) -> torch.Tensor:
            width = region.shape[1]
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=dtype)  # (b, T)

        return Rollout(
            opening.to(device),
            opening_mask.to(device),
            region.to(device),
            region_mask.bool().to(device),
            column([e.logprobs for e in episodes], 0.0, torch.float32).to(device),
            torch.tensor([e.stopped for e in episodes], device=device),
            column([e.policy for e in episodes], False, torch.bool).to(device),
            column([e.rewards for e in episodes], 0.0, torch.float32).to(device),
            torch.tensor([e.turns for e in episodes], device=device),
            torch.tensor([e.ended for e in episodes], device=device),
        )


def episode_turns(tokenizer: Any, rollout: Rollout, row: int, stop_ids: set[int]) -> list[dict[str, str]]:
    """Row `row`'s episode after its opening as the turns it was made of, each `{"role": "policy" or
    "environment", "text": ...}` (decoded with special tokens, so stop tokens and template markers show). A
    policy turn ends at a stop token (`stop_ids`): two turns with an empty answer between them stay two."""
    ids = rollout.response_ids[row][rollout.response_mask[row]].tolist()
    policy = rollout.policy_mask[row][rollout.response_mask[row]].tolist()
    turns: list[dict[str, str]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        turn_over = policy[end - 1] and ids[end - 1] in stop_ids
        if end == len(ids) or policy[end] != policy[start] or turn_over:
            role = "policy" if policy[start] else "environment"
            turns.append({"role": role, "text": tokenizer.decode(ids[start:end], skip_special_tokens=False)})
            start = end
    return turns


def episode_stats(rollout: Rollout, prefix: str = "episode/") -> dict[str, torch.Tensor]:
    """Means over the batch: policy turns, tokens of the whole context, the environment's reward, and the
    share of episodes that ended each way (`<prefix>ended_<how>`)."""
    length = rollout.prompt_mask.sum(1) + rollout.response_mask.sum(1)  # (B,)
    stats = {
        f"{prefix}turns": rollout.turns.float().mean(),
        f"{prefix}length": length.float().mean(),
        f"{prefix}env_reward": rollout.turn_rewards.sum(1).mean(),
    }
    for index, how in enumerate(ENDINGS):
        stats[f"{prefix}ended_{how}"] = (rollout.ended == index).float().mean()
    return stats

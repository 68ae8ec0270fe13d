"""Scripted environments for the multi-turn tests (`envs:Name`): what they answer and reward is fixed by the
turn number, so a test can say token for token what the context must be."""

from __future__ import annotations

import asyncio

LOG: list[tuple[str, str]] = []  # (row prompt, response) of every step, for the tests that read them


class Scripted:
    """Answers "the film was" then "it was great" (several tokens each); the reward of turn t is t
    (1, 2, ...); the episode ends after `row["turns"]` turns (3 when the row has no such column)."""

    ANSWERS = (" the film was", " it was great", " and then")

    def __init__(self, row: dict) -> None:
        self.row, self.turn = row, 0

    def step(self, response: str) -> tuple[str | None, float]:
        LOG.append((self.row.get("prompt", ""), response))
        self.turn += 1
        done = self.turn >= self.row.get("turns", 3)
        return (None if done else self.ANSWERS[(self.turn - 1) % 3]), float(self.turn)


class Opening(Scripted):
    """`Scripted` with its own opening text instead of the row's prompt."""

    def reset(self) -> str:
        return "the story was"


class Chat(Scripted):
    """Answers with a user message (messages mode)."""

    def step(self, response: str) -> tuple[list[dict] | None, float]:
        answer, reward = super().step(response)
        return (None if answer is None else [{"role": "user", "content": answer.strip()}]), reward


class Async(Scripted):
    async def step(self, response: str) -> tuple[str | None, float]:
        await asyncio.sleep(0)
        return Scripted.step(self, response)


class Raises(Scripted):
    def step(self, response: str) -> tuple[str | None, float]:
        raise RuntimeError("the game server is down")


class WrongType(Scripted):
    def step(self, response: str):
        return "higher"


class FailsLater(Scripted):
    """The episodes made after the first `FAIL_AFTER` of the process fail in `step` (a server going down:
    one is made at the start-up check, then one per episode, so the iteration it fails in is known)."""

    MADE = {"n": 0}
    FAIL_AFTER = 1_000_000

    def __init__(self, row: dict) -> None:
        super().__init__(row)
        FailsLater.MADE["n"] += 1
        self.broken = FailsLater.MADE["n"] > FailsLater.FAIL_AFTER

    def step(self, response: str) -> tuple[str | None, float]:
        if self.broken:
            raise ConnectionError("the game server is down")
        return super().step(response)


class Quiet(Scripted):
    """Answers nothing at all ("") between turns: the next turn follows the last one directly."""

    def step(self, response: str) -> tuple[str | None, float]:
        answer, reward = super().step(response)
        return (None if answer is None else ""), reward


class Tool(Chat):
    """Answers as a `tool` message, a role some chat templates refuse."""

    def step(self, response: str) -> tuple[list[dict] | None, float]:
        answer, reward = super().step(response)
        return (None if answer is None else [{**answer[0], "role": "tool"}]), reward


class ChatOpening(Scripted):
    """Opens with a conversation (`reset()`), answers with text."""

    def reset(self) -> list[dict]:
        return [{"role": "user", "content": "the story was"}]


class EmptyOpening(Scripted):
    def reset(self) -> list[dict]:
        return []

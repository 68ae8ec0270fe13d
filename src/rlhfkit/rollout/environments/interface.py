"""The user's environment: loading `module:Class`, every call into it checked (one object per episode, its
opening, its steps), and the start-up check on the first prompt."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from rlhfkit.data.encode import end_of_turn, prompt_ids
from rlhfkit.errors import EnvironmentFailure, UsageError, first_line
from rlhfkit.rollout.environments.chat import check_template
from rlhfkit.tasks.base import load_gold
from rlhfkit.tasks.rewards import run_coroutine, shown


def is_messages(value: Any) -> bool:
    """Whether `value` is a list of messages (dicts with a string `role` and `content`)."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )


@dataclass(frozen=True)
class Environment:
    """The user's environment class and the checks around every call into it."""

    spec: str  # module:Class, as the user wrote it
    cls: Any

    def make(self, row: dict) -> Any:
        """One environment object for an episode on `row`."""
        try:
            return self.cls(dict(row))
        except Exception as exc:
            raise self.failed("its constructor", exc) from None

    def opening(self, env: Any) -> str | list[dict] | None:
        """`reset()`'s opening (None without a reset, or when it returns None: the row's prompt)."""
        reset = getattr(env, "reset", None)
        if reset is None:
            return None
        try:
            value = reset()
            value = run_coroutine(value) if inspect.isawaitable(value) else value
        except Exception as exc:
            raise self.failed("reset()", exc) from None
        if value is not None and not isinstance(value, str) and not is_messages(value):
            raise EnvironmentFailure(
                f"environment {self.spec}: reset() returned {shown(value)}; it must return text, a list of "
                "messages ({'role', 'content'} dicts) or None"
            )
        return value

    def step(self, env: Any, response: str) -> tuple[str | list[dict] | None, float]:
        """`env.step(response)` checked: (text, messages or None; a finite reward)."""
        try:
            result = env.step(response)
            result = run_coroutine(result) if inspect.isawaitable(result) else result
        except Exception as exc:
            raise self.failed("step()", exc) from None
        return self.checked(result, response)

    async def step_async(self, env: Any, response: str) -> tuple[str | list[dict] | None, float]:
        try:
            result = await env.step(response)
        except Exception as exc:
            raise self.failed("step()", exc) from None
        return self.checked(result, response)

    def checked(self, result: Any, response: str) -> tuple[str | list[dict] | None, float]:
        """`step`'s return value, or an EnvironmentFailure saying what is wrong with it."""
        ok = isinstance(result, tuple | list) and len(result) == 2
        answer, reward = result if ok else (None, None)
        number = None
        if ok and not isinstance(reward, str | bytes | bool) and reward is not None:
            try:
                number = float(reward)
            except (TypeError, ValueError):
                number = None
        if not ok or not (answer is None or isinstance(answer, str) or is_messages(answer)) or number is None:
            raise EnvironmentFailure(
                f"environment {self.spec}: step({shown(response)}) returned {shown(result)}; it must "
                "return (text, a list of messages or None, a reward number)"
            )
        if not math.isfinite(number):
            raise EnvironmentFailure(f"environment {self.spec}: step({shown(response)}) gave reward {number}")
        return answer, number

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(getattr(self.cls, "step", None))

    def failed(self, call: str, exc: BaseException) -> EnvironmentFailure:
        return EnvironmentFailure(
            f"environment {self.spec}: {call} raised {type(exc).__name__} ({first_line(exc)})"
        )


def load_environment(spec: str) -> Environment:
    """`module:Class` -> the Environment; one that cannot be imported or has no `step` is a UsageError."""
    cls = load_gold(spec, what="environment")
    if not callable(getattr(cls, "step", None)):
        raise UsageError(f"environment {spec!r} has no step(response) method")
    return Environment(spec, cls)


def opening_ids(environment: Environment, tokenizer: Any, opening: str | list[dict]) -> list[int]:
    """`reset()`'s opening as the ids generation starts from (as a prompt's: text with the tokenizer's special
    tokens, a conversation with its generation prompt); an EnvironmentFailure when it cannot be rendered or
    is empty (nothing for the policy to follow)."""
    try:
        ids = prompt_ids(tokenizer, opening)
    except Exception as exc:
        raise EnvironmentFailure(
            f"environment {environment.spec}: reset()'s opening {shown(opening)} cannot be encoded: "
            f"{first_line(exc)}"
        ) from None
    if not ids:
        raise EnvironmentFailure(f"environment {environment.spec}: reset() gave an empty opening")
    return list(ids)


def check_environment(environment: Environment, row: dict, record: dict, tokenizer: Any) -> None:
    """A UsageError, before anything is written, when the environment fails on the first prompt's row: its
    constructor or `reset()` raises or returns the wrong type, `step("")` (an empty first turn) raises or
    returns the wrong type, or it answers with messages that cannot follow the opening (a text opening; a
    chat template that rewrites earlier turns)."""
    try:
        env = environment.make(row)
        opening = environment.opening(env)
        if opening is not None:
            opening_ids(environment, tokenizer, opening)
        answer, _ = environment.step(env, "")
    except EnvironmentFailure as exc:
        raise UsageError(f"{exc} (checked at start-up on the first prompt with an empty response)") from None
    if not isinstance(answer, list):
        return
    messages = record.get("messages") if opening is None else opening
    if not isinstance(messages, list):
        raise UsageError(
            f"environment {environment.spec} answers with messages, but the episode opens with text: give "
            "the prompts as messages (or reset() a conversation), or answer with text"
        )
    check_template(tokenizer, messages, answer, end_of_turn(tokenizer))

"""Reward functions users bring: `module:function`, the convention of `label`/`eval`'s `--gold`.

A function takes `(prompt: str, response: str)` and returns a number. Marked `@rlhfkit.batched`, it takes the
two lists and returns a list. An `async def` function is awaited, `concurrency` calls in flight at once (a
remote verifier or a judge behind an HTTP API). Every value is checked: a function that raises, or returns the
wrong number of values, a non-number or a NaN, is a `RewardFunctionError` naming the function and the example.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlhfkit.errors import first_line
from rlhfkit.tasks.base import load_gold

PROMPT_SHOWN = 80  # characters of the prompt an error message shows


class RewardFunctionError(Exception):
    """A reward function failed on an example (one line: the function, the example, what went wrong)."""


def batched(fn: Callable) -> Callable:
    """Mark a reward function as batched: `fn(prompts: list[str], responses: list[str]) -> list[float]`."""
    fn.batched = True
    return fn


@dataclass(frozen=True)
class RewardFunction:
    spec: str  # module:function, as the user wrote it
    fn: Callable

    @property
    def name(self) -> str:
        """The metric name: `reward/<function>`."""
        return self.spec.partition(":")[2]

    @property
    def is_batched(self) -> bool:
        return bool(getattr(self.fn, "batched", False))

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def load_reward_function(spec: str) -> RewardFunction:
    """`module:function` -> the function; an import problem is a UsageError naming it."""
    return RewardFunction(spec, load_gold(spec, what="reward function"))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _example(prompt: str) -> str:
    shown = prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "…"
    return repr(shown)


def _number(function: RewardFunction, value: Any, prompt: str) -> float:
    """`value` as a finite float, or a RewardFunctionError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, str):
        raise RewardFunctionError(
            f"reward function {function.spec} returned {_shown(value)} for prompt "
            f"{_example(prompt)}; it must return a number"
        )
    if not math.isfinite(number):
        raise RewardFunctionError(
            f"reward function {function.spec} returned {number} for prompt {_example(prompt)}"
        )
    return number


def _failed(function: RewardFunction, exc: BaseException, prompt: str) -> RewardFunctionError:
    return RewardFunctionError(
        f"reward function {function.spec} raised {type(exc).__name__} ({first_line(exc)}) on prompt "
        f"{_example(prompt)}"
    )


async def _gather(
    function: RewardFunction, prompts: Sequence[str], responses: Sequence[str], limit: int
) -> list:
    """Await an async per-example function over every example, at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(prompt: str, response: str) -> Any:
        async with gate:
            try:
                return await function.fn(prompt, response)
            except Exception as exc:
                raise _failed(function, exc, prompt) from None

    return await asyncio.gather(*(one(p, r) for p, r in zip(prompts, responses, strict=True)))


def call_reward_function(
    function: RewardFunction, prompts: Sequence[str], responses: Sequence[str], concurrency: int = 16
) -> list[float]:
    """One checked float per (prompt, response)."""
    if not prompts:
        return []
    if function.is_batched:
        try:
            values = function.fn(list(prompts), list(responses))
            if inspect.isawaitable(values):
                values = _run(_awaited(values))
        except Exception as exc:
            raise _failed(function, exc, prompts[0]) from None
        values = values.tolist() if hasattr(values, "tolist") else values  # a NumPy array, a tensor
        if not isinstance(values, list | tuple) or len(values) != len(prompts):
            count = len(values) if isinstance(values, list | tuple) else _shown(values)
            raise RewardFunctionError(
                f"reward function {function.spec} (batched) returned {count} values for {len(prompts)} "
                f"examples (first prompt {_example(prompts[0])}); it must return one per example"
            )
    elif function.is_async:
        values = _run(_gather(function, prompts, responses, concurrency))
    else:
        values = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                values.append(function.fn(prompt, response))
            except Exception as exc:
                raise _failed(function, exc, prompt) from None
    return [_number(function, v, p) for v, p in zip(values, prompts, strict=True)]


def _run(coroutine: Any) -> Any:
    """Run a coroutine to its end, also from code that is itself inside an event loop (a notebook): there,
    in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _awaited(values: Any) -> Any:
    return await values

"""Reward functions users bring: `module:function`, the convention of `label`/`eval`'s `--gold`.

A function takes `(prompt: str, response: str)` and returns a number. Marked `@rlhfkit.batched`, it takes the
two lists and returns a list. An `async def` function is awaited, `concurrency` calls in flight at once (a
remote verifier or a judge behind an HTTP API). A function with more parameters also gets its prompt's data
row, as TRL passes dataset columns: each further parameter named like a column gets that column's value (a
list of them, one per example, when batched), and `**kwargs` gets every column but the prompt's own. Every
value is checked: a function that raises, or returns the wrong number of values, a non-number (a string such
as "1.5" too) or a NaN, is a `RewardFunctionError` naming the function and the example.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rlhfkit.errors import first_line
from rlhfkit.tasks.base import load_gold

PROMPT_SHOWN = 80  # characters of the prompt an error message shows
PROMPT_FIELDS = ("prompt", "messages")  # a row's prompt: the function's first argument, not a column
Row = Mapping[str, Any]  # a prompt's data row, by column name


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

    @cached_property
    def parameters(self) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """(the names of its parameters after prompt and response, those of them without a default, whether
        it takes `**kwargs`): which columns of the row it is given."""
        try:
            found = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):  # a callable without a signature: the plain two arguments
            return (), (), False
        named = [p for p in found if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][2:]
        required = tuple(p.name for p in named if p.default is p.empty)
        return tuple(p.name for p in named), required, any(p.kind == p.VAR_KEYWORD for p in found)

    @cached_property
    def _not_columns(self) -> set[str]:
        """Row fields never given as columns: the prompt's, and any named like the function's first two
        parameters (which hold the prompt and the response)."""
        try:
            first = {p.name for p in list(inspect.signature(self.fn).parameters.values())[:2]}
        except (TypeError, ValueError):
            first = set()
        return first | set(PROMPT_FIELDS)

    def columns(self, row: Row) -> dict[str, Any]:
        """The columns of `row` this function is given: those its parameters name, or with `**kwargs` every
        one but the prompt's."""
        named, _, every = self.parameters
        if not every:
            return {name: row[name] for name in named if name in row}
        return {k: v for k, v in row.items() if k not in self._not_columns}

    def check_columns(self, rows: Sequence[Row]) -> None:
        """A RewardFunctionError when the function needs a column one of `rows` does not have."""
        required = self.parameters[1]
        for number, row in enumerate(rows, 1):
            missing = ", ".join(repr(name) for name in required if name not in row)
            if missing:
                columns = ", ".join(map(repr, row)) or "none"
                raise RewardFunctionError(
                    f"reward function {self.spec} takes {missing}, which the prompt rows do not have (row "
                    f"{number} of them; its columns: {columns})"
                )


def load_reward_function(spec: str) -> RewardFunction:
    """`module:function` -> the function; an import problem is a UsageError naming it."""
    return RewardFunction(spec, load_gold(spec, what="reward function"))


def shown(value: Any) -> str:
    """`repr(value)`, cut to 60 characters: what an error message shows of a wrong value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _example(prompt: str) -> str:
    shown = prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "…"
    return repr(shown)


def _number(function: RewardFunction, value: Any, prompt: str) -> float:
    """`value` as a finite float, or a RewardFunctionError. Text is refused even when `float` would read it
    ("1.5"): a function returning text has a bug that a number read from it would hide."""
    number = None
    if not isinstance(value, str | bytes | bytearray):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if number is None:
        raise RewardFunctionError(
            f"reward function {function.spec} returned {shown(value)} for prompt "
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
    function: RewardFunction,
    prompts: Sequence[str],
    responses: Sequence[str],
    rows: Sequence[Row],
    limit: int,
) -> list:
    """Await an async per-example function over every example, at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(prompt: str, response: str, row: Row) -> Any:
        async with gate:
            try:
                return await function.fn(prompt, response, **function.columns(row))
            except Exception as exc:
                raise _failed(function, exc, prompt) from None

    examples = zip(prompts, responses, rows, strict=True)
    return await asyncio.gather(*(one(p, r, row) for p, r, row in examples))


def _batched_columns(function: RewardFunction, rows: Sequence[Row]) -> dict[str, list]:
    """{column: one value per example (None where a row lacks it)} for a batched function."""
    names = dict.fromkeys(name for row in rows for name in function.columns(row))  # ordered, unique
    return {name: [row.get(name) for row in rows] for name in names}


def call_reward_function(
    function: RewardFunction,
    prompts: Sequence[str],
    responses: Sequence[str],
    concurrency: int = 16,
    rows: Sequence[Row] | None = None,
) -> list[float]:
    """One checked float per (prompt, response); `rows`, each example's data row, for a function that takes
    columns (none are given without them)."""
    if not prompts:
        return []
    rows = rows if rows is not None else [{}] * len(prompts)
    if function.is_batched:
        try:
            values = function.fn(list(prompts), list(responses), **_batched_columns(function, rows))
            if inspect.isawaitable(values):
                values = run_coroutine(_awaited(values))
        except Exception as exc:
            raise _failed(function, exc, prompts[0]) from None
        values = values.tolist() if hasattr(values, "tolist") else values  # a NumPy array, a tensor
        if not isinstance(values, list | tuple) or len(values) != len(prompts):
            count = len(values) if isinstance(values, list | tuple) else shown(values)
            raise RewardFunctionError(
                f"reward function {function.spec} (batched) returned {count} values for {len(prompts)} "
                f"examples (first prompt {_example(prompts[0])}); it must return one per example"
            )
    elif function.is_async:
        values = run_coroutine(_gather(function, prompts, responses, rows, concurrency))
    else:
        values = []
        for prompt, response, row in zip(prompts, responses, rows, strict=True):
            try:
                values.append(function.fn(prompt, response, **function.columns(row)))
            except Exception as exc:
                raise _failed(function, exc, prompt) from None
    return [_number(function, v, p) for v, p in zip(values, prompts, strict=True)]


def run_coroutine(coroutine: Any) -> Any:
    """Run a coroutine to its end, also from code that is itself inside an event loop (a notebook): there,
    in a thread of its own."""
    if not inspect.iscoroutine(coroutine):  # a Future, or any object with __await__
        coroutine = _awaited(coroutine)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _awaited(values: Any) -> Any:
    return await values

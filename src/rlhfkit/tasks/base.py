"""A task: prompts, demonstrations and a programmatic gold reward that plays the human labeler."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from rlhfkit.errors import UsageError

Gold = Callable[[str, str], float]  # (prompt, response) -> reward


@dataclass(frozen=True)
class Task:
    """Everything the simulated-human pipeline needs. `gold` is used to label pairs and to evaluate, never
    inside PPO."""

    name: str
    demonstrations: list[dict]  # SFT rows {"prompt", "completion"}
    train_prompts: list[str]  # for labeling and PPO
    eval_prompts: list[str]  # held out: never seen in SFT, labeling or PPO
    gold: Gold


def load_gold(spec: str, what: str = "gold") -> Gold:
    """`module:function` -> the callable; a bad spec is a UsageError naming it (as `what`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{what} {spec!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"{what} {spec!r}: {module_name} has no callable {attr!r}")
    return fn

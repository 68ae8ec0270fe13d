"""The pieces every config class is made of: `option` (a field with its help text) and the range checks that
`__post_init__` runs, each a `ConfigError` naming the field."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

from rlhfkit.errors import ConfigError

MISSING = dataclasses.MISSING
# Default of a field that an owning config fills in itself (the demo wires paths, seeds and flags between its
# stages); the owner refuses any other value. A string whatever the field's type, so `--help` shows it.
SET_BY_DEMO = "(set by the demo)"


def option(default: Any = MISSING, help: str = "") -> Any:
    """A config field with its documentation. No default means the field is required."""
    if default is MISSING:
        return field(metadata={"help": help})
    return field(default=default, metadata={"help": help})


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """{field: allowed values} for the fields of the dataclass `cls` annotated `Literal[...]` (or
    `Literal[...] | None`, None then allowed); string annotations are resolved."""
    hints, choices = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        literals = [o for o in options if typing.get_origin(o) is Literal]
        others = [o for o in options if typing.get_origin(o) is not Literal and o is not type(None)]
        if literals and not others:  # `bool | Literal["auto"]` is checked where it is resolved
            allowed = [v for lit in literals for v in typing.get_args(lit)]
            choices[f.name] = (*allowed, None) if type(None) in options else tuple(allowed)
    return choices


def one_of_choices(config: Any) -> None:
    """ConfigError naming the first `Literal` field of the dataclass `config` whose value is not one of its
    choices: the command line checks them when it parses, a config built in Python would only fail later."""
    for name, allowed in _choices(type(config)).items():
        value = getattr(config, name)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


DEMO_BF16_HELP = (
    "`bf16` of every stage ({stages}): true, false or auto (bf16 where this machine computes it faster, see "
    "`rlhfkit ppo --help`); false by default, so that the demo's numbers are the same on every machine"
)


def bf16_choice(config: Any) -> None:
    """ConfigError unless `config.bf16` is true, false or "auto" (or the demo's placeholder)."""
    value = config.bf16
    if not (value is True or value is False or value in ("auto", SET_BY_DEMO)):
        raise ConfigError(f"bf16 must be true, false or 'auto', got {config.bf16!r}")


def settle_precision(config: Any) -> None:
    """Replace `bf16: auto` and `model_dtype: auto` of `config` with what this machine runs best
    (`rlhfkit.runtime.process.resolve_precision`), in place (the configs are frozen: once, as they are made).
    The one point where `auto` becomes a value: trainers read `bf16` as a bool and `model_dtype` as float32
    or bfloat16, and config.yaml records what the run used. A stage whose `bf16` its demo sets is left as
    it is until the demo sets it."""
    bf16_choice(config)
    if config.bf16 == SET_BY_DEMO:
        return
    from rlhfkit.runtime.process import precision_here  # torch, only when a config is made

    bf16, model_dtype = precision_here(config.bf16, config.model_dtype)
    object.__setattr__(config, "bf16", bf16)
    object.__setattr__(config, "model_dtype", model_dtype)


def positive(config: Any, *names: str) -> None:
    """ConfigError naming the first of `names` whose value is not > 0."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")


def non_negative(config: Any, *names: str) -> None:
    """ConfigError naming the first of `names` whose value is < 0."""
    for name in names:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)}")


def within(config: Any, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    """ConfigError unless `low <= value <= high` (`low < value` with `open_low`)."""
    value = getattr(config, name)
    if value > high or value < low or (open_low and value == low):
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ConfigError(f"{name} must be in {interval}, got {value}")


def reward_components(config: Any) -> int:
    """How many reward components `config` names (its reward model, then each reward function); a
    ConfigError for a function named twice or `reward_weights` of another length."""
    repeated = {f for f in config.reward_functions if config.reward_functions.count(f) > 1}
    if repeated:
        raise ConfigError(f"reward_functions names {sorted(repeated)[0]} twice; give a weight instead")
    components = bool(config.reward_model) + len(config.reward_functions)
    if config.reward_weights and len(config.reward_weights) != components:
        raise ConfigError(
            f"reward_weights has {len(config.reward_weights)} values for {components} reward components "
            "(the reward model first when given, then each reward function)"
        )
    return components


TRACKERS = ("tensorboard", "wandb", "mlflow")
REPORT_TO_HELP = (
    "experiment trackers besides metrics.jsonl, through accelerate: tensorboard, wandb, mlflow (each needs "
    "its package; tensorboard writes under `out`)"
)


def known_trackers(config: Any) -> None:
    """ConfigError for a `report_to` entry that is not a tracker rlhfkit knows."""
    for name in config.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")

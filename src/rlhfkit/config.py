"""One frozen dataclass per command, loaded from YAML and dotted `key=value` overrides.

Every field carries its help text in `metadata["help"]`; `--help` prints them with their defaults.
A key that names no field, or a value of the wrong type, is a `ConfigError` that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlhfkit.errors import ConfigError

C = TypeVar("C")
_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "") -> Any:
    """A config field with its documentation. No default means the field is required."""
    if default is _MISSING:
        return field(metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (AdamW), shared by `sft` and `rm`."""

    lr: float = option(2e-5, "peak learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    warmup_ratio: float = option(0.03, "fraction of the steps spent warming the learning rate up from 0")
    schedule: Literal["linear", "cosine", "constant"] = option("linear", "decay after the warm-up")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0 = no clipping)")


@dataclass(frozen=True)
class SupervisedConfig:
    """The fields `sft` and `rm` share: data, length of training, evaluation, checkpoints."""

    model: str = option(help="model to start from: a local folder or a hub name")
    data: str = option(help="training data: JSONL/Parquet file, a `datasets` folder, or a hub dataset name")
    out: str = option(help="output folder for the model, tokenizer, config.yaml, metrics.jsonl")
    eval_data: str | None = option(None, "held-out data; None = split `eval_fraction` off `data`")
    eval_fraction: float = option(0.05, "fraction of `data` held out when `eval_data` is None")
    max_length: int = option(512, "maximum tokens of prompt + response")
    truncation: Literal["left", "drop"] = option(
        "left", "over-long prompts: cut from the left or drop the row"
    )
    epochs: int = option(1, "passes over the training data")
    max_steps: int | None = option(None, "stop after this many optimiser steps (overrides `epochs`)")
    batch_size: int = option(8, "examples per optimiser step (split into micro-batches by `grad_accum`)")
    grad_accum: int = option(1, "micro-batches per optimiser step (gradient accumulation)")
    optim: OptimConfig = option(OptimConfig(), "optimiser settings, e.g. `optim.lr=1e-4`")
    eval_every: int = option(100, "evaluate on the held-out data every N steps (0 = only at the end)")
    save_every: int = option(
        0, "write a resumable checkpoint every N steps (0 = none; SIGINT/SIGTERM always write one)"
    )
    keep_checkpoints: int = option(2, "how many of the newest checkpoints to keep")
    resume: bool = option(False, "continue from the newest complete checkpoint in `out`")
    max_bad_steps: int = option(3, "stop after this many non-finite updates in a row (each is skipped)")
    seed: int = option(0, "random seed")
    bf16: bool = option(False, "bf16 autocast for forward passes (log-probs, scores and losses stay fp32)")
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")

    def __post_init__(self) -> None:
        positive(
            self, "max_length", "epochs", "batch_size", "grad_accum", "keep_checkpoints", "max_bad_steps"
        )
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def positive(config: Any, *names: str) -> None:
    """ConfigError naming the first of `names` whose value is not > 0."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")


@dataclass(frozen=True)
class SFTConfig(SupervisedConfig):
    """`rlhfkit sft`: supervised fine-tuning on demonstrations; the loss covers the completion only.
    `data` holds {prompt, completion} or {messages} rows."""


@dataclass(frozen=True)
class RewardConfig(SupervisedConfig):
    """`rlhfkit rm`: a scalar-head reward model trained on preference pairs (Bradley-Terry loss).
    `data` holds {prompt, chosen, rejected} rows (optional margin); `model` is usually the SFT model."""

    eval_fraction: float = option(0.1, "fraction of `data` held out when `eval_data` is None")
    epochs: int = option(1, "passes over the pairs (about 1 is right: more overfits)")
    optim: OptimConfig = option(OptimConfig(lr=1e-5), "optimiser settings, e.g. `optim.lr=1e-4`")


@dataclass(frozen=True)
class PPOConfig:
    """`rlhfkit ppo`: PPO with actor, critic, frozen reference and frozen reward model."""

    policy: str = option(help="SFT model folder: initialises the actor and serves as the frozen reference")
    reward_model: str = option(help="reward model folder: frozen scorer, and the critic's initialisation")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    out: str = option(help="output folder for actor, critic, metrics.jsonl and samples.jsonl")
    eval_prompts: str | None = option(
        None, "held-out prompts for evaluation; None = 32 held out from `prompts`"
    )
    max_prompt_length: int = option(256, "maximum prompt tokens")
    truncation: Literal["left", "drop"] = option("left", "over-long prompts: cut from the left or drop them")
    max_steps: int = option(100, "PPO iterations (each: rollout, score, `ppo_epochs` of updates)")
    batch_size: int = option(16, "episodes (prompts) per iteration")
    mini_batch_size: int = option(8, "episodes per optimiser step; must divide `batch_size`")
    micro_batch_size: int | None = option(
        None, "episodes per forward pass (gradient accumulation); None = `mini_batch_size`; must divide it"
    )
    ppo_epochs: int = option(4, "passes over each batch of experience")
    response_length: int = option(32, "maximum new tokens per response")
    temperature: float = option(
        0.7, "sampling temperature; logits are divided by it wherever log-probs are taken"
    )
    top_k: int = option(0, "sample from the k most likely tokens (0 = off)")
    top_p: float = option(1.0, "nucleus sampling threshold (1.0 = off)")
    stop_tokens: tuple[str, ...] = option((), "extra stop strings besides the tokenizer's EOS")
    kl_coef: float = option(0.05, "beta: weight of the per-token KL penalty (initial value when adaptive)")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "per-token KL estimator in the reward")
    kl_target: float | None = option(
        None, "target KL (nats per sequence) for the adaptive beta; None = fixed"
    )
    kl_horizon: float = option(10000.0, "adaptive beta horizon, in episodes")
    gamma: float = option(1.0, "discount factor of GAE")
    lam: float = option(0.95, "lambda of GAE")
    clip: float = option(0.2, "PPO ratio clip range")
    value_clip: float = option(0.2, "value clip range around the old values")
    vf_coef: float = option(0.1, "weight of the value loss")
    actor_lr: float = option(1e-5, "actor learning rate (linear decay to 0)")
    critic_lr: float = option(1e-5, "critic learning rate (linear decay to 0)")
    adam_eps: float = option(1e-5, "Adam epsilon for both optimisers")
    max_grad_norm: float = option(1.0, "clip each model's gradient norm to this value (0 = no clipping)")
    whiten_rewards: bool = option(False, "whiten the per-token rewards (masked) before GAE")
    normalize_reward: bool = option(True, "normalise RM scores with the mean/std saved by `rlhfkit rm`")
    reward_clip: float | None = option(None, "clip (normalised) scores to [-c, c]; None = no clipping")
    missing_eos_penalty: float | None = option(
        None, "score given to a response with no stop token; None = keep"
    )
    ptx_coef: float = option(0.0, "gamma of the objective: weight of the pretraining NLL (0 = off)")
    ptx_data: str | None = option(None, "pretraining/SFT data for the ptx loss (needed when ptx_coef > 0)")
    seed: int = option(0, "random seed")
    eval_every: int = option(10, "evaluate on held-out prompts every N iterations (0 = only at the end)")
    save_every: int = option(
        0, "write a resumable checkpoint every N iterations (0 = none; SIGINT/SIGTERM always write one)"
    )
    keep_checkpoints: int = option(2, "how many of the newest checkpoints to keep")
    resume: bool = option(False, "continue from the newest complete checkpoint in `out`")
    max_bad_steps: int = option(
        3, "stop after this many non-finite optimiser steps in a row (each is skipped)"
    )
    bf16: bool = option(False, "bf16 autocast for forward passes (log-probs and losses stay fp32)")
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")

    def __post_init__(self) -> None:
        positive(
            self,
            "response_length",
            "max_steps",
            "ppo_epochs",
            "max_prompt_length",
            "kl_horizon",
            "keep_checkpoints",
            "max_bad_steps",
        )
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be > 0 (or none for a fixed beta), got {self.kl_target}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                f"top_p must be in (0, 1] and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}"
            )
        if self.batch_size <= 0 or self.mini_batch_size <= 0 or self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size "
                f"({self.batch_size}), both > 0"
            )
        micro = self.micro_batch_size
        if micro is not None and (micro <= 0 or self.mini_batch_size % micro):
            raise ConfigError(
                f"micro_batch_size ({micro}) must divide mini_batch_size ({self.mini_batch_size})"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("ptx_coef > 0 needs ptx_data (pretraining/SFT text for the ptx loss)")


@dataclass(frozen=True)
class LabelConfig:
    """`rlhfkit label`: sample two responses per prompt and let a gold function pick the preferred one."""

    policy: str = option(help="model that samples the responses (usually the SFT model)")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    gold: str = option(help="gold reward as `module:function`, called as fn(prompt, response) -> float")
    out: str = option(help="output JSONL of {prompt, chosen, rejected} rows")
    tau: float = option(0.1, "labeler noise: chosen with probability sigmoid((g1 - g2) / tau); 0 = perfect")
    pairs_per_prompt: int = option(1, "response pairs sampled for each prompt")
    batch_size: int = option(64, "prompts sampled at once")
    response_length: int = option(32, "maximum new tokens per response")
    temperature: float = option(1.0, "sampling temperature")
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "allow replacing an existing output file")


@dataclass(frozen=True)
class EvalConfig:
    """`rlhfkit eval`: mean reward, KL to a reference, length and stop rate of a model on prompts."""

    model: str = option(help="model to evaluate")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    reward_model: str | None = option(None, "reward model folder to score with")
    gold: str | None = option(None, "gold reward as `module:function` to score with")
    reference: str | None = option(None, "reference model for the KL (usually the SFT model)")
    out: str | None = option(None, "write eval.json and samples.jsonl to this folder")
    response_length: int = option(32, "maximum new tokens per response")
    temperature: float = option(0.7, "sampling temperature (log-probs for the KL are taken at it too)")
    batch_size: int = option(64, "prompts sampled at once")
    seed: int = option(0, "random seed")


@dataclass(frozen=True)
class DemoConfig:
    """`rlhfkit demo`: SFT -> simulated labeling -> RM -> PPO -> evaluation on the bundled sentiment task."""

    out: str = option("runs/demo", "output folder for every stage, summary.json and report.html")
    preset: Literal["tiny", "smollm2"] = option(
        "tiny", "tiny model built from scratch, or SmolLM2-135M (configs/demo-smollm2.yaml, slower)"
    )
    seed: int = option(0, "random seed of every stage")
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")
    # the task
    demonstrations: int = option(4000, "SFT demonstrations generated for the task")
    eval_prompts: int = option(128, "held-out prompts for the final evaluation (never trained on)")
    # the tiny model (preset tiny)
    vocab_size: int = option(1024, "BPE vocabulary trained on the task's text")
    hidden_size: int = option(128, "width of the tiny Llama")
    num_layers: int = option(3, "layers of the tiny Llama")
    num_heads: int = option(4, "attention heads of the tiny Llama")
    # stage 1
    sft_epochs: int = option(2, "SFT passes over the demonstrations")
    sft_lr: float = option(2e-3, "SFT learning rate")
    sft_batch_size: int = option(32, "SFT examples per step")
    # labeling
    pairs_per_prompt: int = option(8, "response pairs the simulated labeler judges per training prompt")
    tau: float = option(0.1, "labeler noise (Bradley-Terry temperature on the gold reward)")
    label_temperature: float = option(1.0, "sampling temperature of the pairs")
    # stage 2
    rm_epochs: int = option(1, "RM passes over the labeled pairs")
    rm_lr: float = option(5e-4, "RM learning rate")
    rm_batch_size: int = option(32, "pairs per RM step")
    # stage 3
    ppo_steps: int = option(150, "PPO iterations")
    ppo_batch_size: int = option(32, "episodes per PPO iteration")
    ppo_mini_batch_size: int = option(16, "episodes per PPO optimiser step")
    ppo_epochs: int = option(4, "PPO epochs per batch")
    response_length: int = option(24, "maximum response tokens")
    temperature: float = option(0.7, "sampling temperature in PPO and evaluation")
    kl_coef: float = option(0.05, "KL penalty coefficient (fixed)")
    actor_lr: float = option(3e-4, "PPO actor learning rate")
    critic_lr: float = option(3e-4, "PPO critic learning rate")
    ppo_eval_every: int = option(5, "PPO iterations between evaluations (points of the reward-KL frontier)")
    bf16: bool = option(False, "bf16 autocast in every stage")


COMMAND_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RewardConfig,
    "label": LabelConfig,
    "ppo": PPOConfig,
    "eval": EvalConfig,
    "demo": DemoConfig,
}

# ----------------------------------------------------------------------------------------- loading


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["a=1", "optim.lr=3e-4"]` -> `{"a": "1", "optim": {"lr": "3e-4"}}` (values stay text)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or non-mapping content is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


def build(cls: type[C], values: Mapping[str, Any], where: str = "") -> C:
    """Instantiate a config dataclass from a (nested) mapping, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [key for key in values if key not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {where + str(unknown[0])!r} for {cls.__name__}{hint}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {where + name!r} is a section: set its fields, e.g. {name}.x=..."
                )
            default = fields[name].default
            base = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}
            kwargs[name] = build(tp, merge(base, value), where=f"{where}{name}.")
        else:
            kwargs[name] = coerce(value, tp, where + name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if missing:
        raise ConfigError(f"missing required config key {where + missing[0]!r} for {cls.__name__}")
    return cls(**kwargs)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`; text (from the command line or quoted YAML) is parsed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        ):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"config key {name!r} must be one of {', '.join(map(repr, args))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = [] if value.strip() == "" else parsed
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r} expects a list, got {value!r}")
        return tuple(coerce(v, args[0], name) for v in value)
    return _coerce_scalar(value, tp, name)


def _coerce_scalar(value: Any, tp: type, name: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"config key {name!r} expects {tp.__name__}, got {value!r}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # also YAML's `1e-5`, which PyYAML reads as text
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise TypeError(f"config key {name!r}: unsupported annotation {tp!r}")


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    **values: Any,
) -> C:
    """Defaults < `base` (a preset) < YAML at `path` < keyword `values` (None ones skipped) < overrides."""
    data = merge(base or {}, read_yaml(path) if path else {})
    data = merge(data, {k: v for k, v in values.items() if v is not None})
    return build(cls, merge(data, parse_overrides(overrides)))


def preset(name: str) -> dict[str, Any]:
    """The values of a packaged preset, `rlhfkit/configs/demo-NAME.yaml` (the repository's configs/)."""
    from importlib.resources import files

    resource = files("rlhfkit") / "configs" / f"demo-{name}.yaml"
    if not resource.is_file():
        raise ConfigError(f"no preset {name!r}")
    return read_yaml(Path(str(resource)))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) that `build` accepts back."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    """Write the config as YAML; `load_config(type(config), path)` gives it back."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """Help lines `name (type, default X): help` for every field, nested sections dotted. `defaults` is the
    section's default instance when its owner sets one (the RM's optimiser has its own learning rate)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = f.default if defaults is None else getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, prefix=f"{prefix}{f.name}.", defaults=value)
            continue
        default = "required" if value is _MISSING else f"default {value!r}"
        type_name = str(tp).replace("typing.", "") if typing.get_origin(tp) else tp.__name__
        lines.append(f"  {prefix}{f.name} ({type_name}, {default}): {f.metadata.get('help', '')}")
    return lines

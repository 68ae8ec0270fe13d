"""The `did you mean` of an unknown config key: the nearest name the config class has, across its sections.

Users arrive with the names of other libraries (TRL, OpenRLHF, transformers' TrainingArguments) or put a
section's field at the top level; both get the dotted name that exists here. Only names the class has are
ever suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from rlhfkit.config.options import SET_BY_DEMO
from rlhfkit.errors import ConfigError

# Other libraries' names -> ours, in order of preference (each kept only where the class has it).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "learning_rate": ("optim.lr", "actor_lr"),
    "lr": ("optim.lr", "actor_lr"),
    "actor_learning_rate": ("actor_lr",),
    "critic_learning_rate": ("critic_lr",),
    "adam_epsilon": ("optim.adam_eps", "adam_eps"),
    "lr_scheduler_type": ("optim.schedule",),
    "num_train_epochs": ("epochs",),
    "max_epochs": ("epochs", "ppo_epochs"),  # OpenRLHF's max_epochs is its PPO epochs per batch
    "num_ppo_epochs": ("ppo_epochs",),
    "per_device_train_batch_size": ("batch_size",),
    "train_batch_size": ("batch_size",),
    "rollout_batch_size": ("batch_size",),
    "micro_train_batch_size": ("micro_batch_size", "batch_size"),
    "local_rollout_forward_batch_size": ("forward_batch_size",),
    "micro_rollout_batch_size": ("forward_batch_size",),
    "gradient_accumulation_steps": ("grad_accum",),
    "packing_samples": ("padding_free",),  # OpenRLHF
    "use_remove_padding": ("padding_free",),  # veRL
    "use_dynamic_bsz": ("max_tokens_per_micro_batch",),  # veRL: the budget below turns it on
    "ppo_max_token_len_per_gpu": ("max_tokens_per_micro_batch",),
    "max_tokens_per_batch": ("max_tokens_per_micro_batch",),
    "cliprange": ("clip",),
    "eps_clip": ("clip",),
    "cliprange_value": ("value_clip",),
    "init_kl_coef": ("kl_coef",),
    "beta": ("kl_coef",),
    "target_kl": ("kl_target",),
    "target": ("kl_target",),
    "horizon": ("kl_horizon",),
    "lambd": ("lam",),
    "gae_lambda": ("lam",),
    "max_new_tokens": ("response_length",),
    "generate_max_len": ("response_length",),
    "prompt_max_len": ("max_prompt_length",),
    "max_prompt_len": ("max_prompt_length",),
    "max_seq_length": ("max_length",),
    "max_len": ("max_length",),
    "output_dir": ("out",),
    "save_path": ("out",),
    "model_name_or_path": ("model", "policy"),
    "pretrain": ("model", "policy"),
    "sft_model_path": ("policy", "model"),
    "reward_model_path": ("reward_model",),
    "reward_pretrain": ("reward_model",),
    "dataset": ("data", "prompts"),
    "rpo_alpha": ("nll_coef",),  # TRL's DPO
    "ref_model": ("reference",),
    "ref_model_init_kwargs": ("reference",),
    "num_generations": ("samples_per_prompt",),
    "dataset_name": ("data", "prompts"),
    "dataset_train_split": ("data",),
    "dataset_text_field": ("columns.text",),
    "input_key": ("columns.prompt",),  # OpenRLHF's column names
    "output_key": ("columns.completion",),
    "chosen_key": ("columns.chosen",),
    "rejected_key": ("columns.rejected",),
    "pretrain_data": ("ptx_data",),
    "prompt_data": ("prompts",),
    "eval_dataset": ("eval_data", "eval_prompts"),
    "eval_steps": ("eval_every",),
    "save_steps": ("save_every",),
    "ptx_data_path": ("ptx_data",),
}
MAX_SUGGESTIONS = 3


def unknown_key(cls: type, key: Any, where: str = "", defaults: Any = None) -> ConfigError:
    """`unknown config key 'X' for Cls (did you mean 'Y'?)`, the hint left out when nothing is near."""
    names = [repr(where + name) for name in nearest(cls, str(key), defaults)]
    hint = ""
    if names:
        either = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        hint = f" (did you mean {either}?)"
    return ConfigError(f"unknown config key {where + str(key)!r} for {cls.__name__}{hint}")


def nearest(cls: type, key: str, defaults: Any = None) -> list[str]:
    """Dotted names of `cls` that `key` most likely meant: a synonym, a section's field of that name, else
    the closest spelling (of a field, a section's field or an old name)."""
    paths = field_paths(cls, "", defaults)
    found = [p for name in SYNONYMS.get(key, ()) for p in _matching(paths, name)]
    found = found or _matching(paths, key)
    if not found:
        spellings = _spellings(cls, paths)
        close = difflib.get_close_matches(key, list(spellings), n=1)
        found = spellings[close[0]] if close else []
    return list(dict.fromkeys(found))[:MAX_SUGGESTIONS]


def field_paths(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """Every field of `cls` as a dotted path, sections and the fields inside them alike, except the fields an
    owner sets itself (their default is the placeholder, and setting them is refused)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = f.default if defaults is None else getattr(defaults, f.name)
        if value == SET_BY_DEMO:
            continue
        paths.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            section_default = value if dataclasses.is_dataclass(value) else None
            paths += field_paths(hints[f.name], f"{prefix}{f.name}.", section_default)
    return paths


def _matching(paths: list[str], name: str) -> list[str]:
    """Paths that are `name` or end in it (`optim.lr` in `sft.optim.lr`); else those that end in its tail,
    for a synonym meant for an owner used inside the section (`lr` for `optim.lr` in OptimConfig)."""
    found = [p for p in paths if p == name or p.endswith("." + name)]
    if not found and "." in name:
        return _matching(paths, name.split(".", 1)[1])
    return found


def _spellings(cls: type, paths: list[str]) -> dict[str, list[str]]:
    """Every name a typo can be near -> the paths it stands for: paths, their last part, old names."""
    spellings: dict[str, list[str]] = {}
    for path in paths:
        spellings.setdefault(path, []).append(path)
        leaf = path.rsplit(".", 1)[-1]
        if leaf != path:
            spellings.setdefault(leaf, []).append(path)
    for old, new in getattr(cls, "ALIASES", {}).items():
        spellings.setdefault(old, []).extend(new)
    return spellings

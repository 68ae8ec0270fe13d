"""One frozen dataclass per command, loaded from YAML and dotted `key=value` overrides.

Every field carries its help text in `metadata["help"]`; `--help` prints them with their defaults. A key that
names no field, or a value of the wrong type or range, is a `ConfigError` that names it.

    options.py   `option` (a documented field) and the range checks of `__post_init__`
    commands.py  OptimConfig, SFTConfig, RewardConfig, LabelConfig, EvalConfig
    ppo.py       PPOConfig
    report.py    ReportConfig
    dpo.py       DPOConfig (offline and online DPO)
    demo.py      DemoConfig: its own fields, one section per stage, and the old flat names as aliases
    multiturn.py MultiturnConfig: `demo-multiturn`'s fields, its `sft` and `ppo` sections
    loading.py   YAML, overrides, build, coerce, describe
    suggest.py   the `did you mean` of an unknown key
"""

from rlhfkit.config.commands import (
    ColumnsConfig,
    EvalConfig,
    LabelConfig,
    LoraConfig,
    OptimConfig,
    RewardConfig,
    SFTConfig,
    SupervisedConfig,
)
from rlhfkit.config.demo import DemoConfig
from rlhfkit.config.dpo import DPOConfig
from rlhfkit.config.loading import (
    build,
    coerce,
    describe,
    load_config,
    merge,
    normalise,
    parse_overrides,
    preset,
    read_yaml,
    save_config,
    to_dict,
)
from rlhfkit.config.multiturn import MultiturnConfig
from rlhfkit.config.options import SET_BY_DEMO, non_negative, option, positive, within
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.config.report import ReportConfig

COMMAND_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RewardConfig,
    "label": LabelConfig,
    "ppo": PPOConfig,
    "dpo": DPOConfig,
    "eval": EvalConfig,
    "demo": DemoConfig,
    "demo-multiturn": MultiturnConfig,
    "report": ReportConfig,
}

__all__ = [
    "COMMAND_CONFIGS",
    "SET_BY_DEMO",
    "DemoConfig",
    "DPOConfig",
    "ColumnsConfig",
    "LoraConfig",
    "EvalConfig",
    "LabelConfig",
    "MultiturnConfig",
    "OptimConfig",
    "PPOConfig",
    "ReportConfig",
    "RewardConfig",
    "SFTConfig",
    "SupervisedConfig",
    "build",
    "coerce",
    "describe",
    "load_config",
    "merge",
    "non_negative",
    "normalise",
    "option",
    "parse_overrides",
    "positive",
    "preset",
    "read_yaml",
    "save_config",
    "to_dict",
    "within",
]

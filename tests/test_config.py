import dataclasses

import pytest
import yaml

from rlhfkit.config import (
    COMMAND_CONFIGS,
    OptimConfig,
    PPOConfig,
    SFTConfig,
    describe,
    load_config,
    parse_overrides,
    save_config,
)
from rlhfkit.errors import ConfigError

REQUIRED_PPO = {"policy": "sft", "reward_model": "rm", "prompts": "p.jsonl", "out": "o"}


def write_yaml(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_and_overrides_round_trip(tmp_path):
    path = write_yaml(
        tmp_path,
        {
            "model": "m",
            "data": "d.jsonl",
            "out": "o",
            "epochs": 3,
            "optim": {"lr": "1e-4", "schedule": "cosine"},
        },
    )  # PyYAML reads 1e-4 as text
    cfg = load_config(SFTConfig, path, ["optim.weight_decay=0.1", "max_steps=50", "bf16=true"])
    assert cfg.epochs == 3 and cfg.max_steps == 50 and cfg.bf16 is True
    assert cfg.optim == OptimConfig(lr=1e-4, weight_decay=0.1, schedule="cosine")
    save_config(cfg, tmp_path / "back.yaml")
    assert load_config(SFTConfig, tmp_path / "back.yaml") == cfg


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    path = write_yaml(tmp_path, {**REQUIRED_PPO, "kl_coef": 0.2, "batch_size": 32})
    cfg = load_config(PPOConfig, path, ["kl_coef=0.3"], kl_coef="0.25", batch_size="64", max_steps=None)
    assert cfg.kl_coef == 0.3  # override beats flag beats YAML
    assert cfg.batch_size == 64  # flag beats YAML
    assert cfg.max_steps == 100  # a flag left unset (None) keeps the default


def test_unknown_key_inside_a_section_is_named_with_its_path():
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate' for OptimConfig"):
        load_config(SFTConfig, overrides=["model=m", "data=d", "out=o", "optim.learning_rate=1"])


def test_section_override_keeps_the_sections_other_defaults():
    cfg = load_config(SFTConfig, overrides=["model=m", "data=d", "out=o", "optim.lr=0.5"])
    assert cfg.optim.lr == 0.5 and cfg.optim.schedule == "linear"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("kl_target=none", None),
        ("kl_target=null", None),
        ("kl_target=6", 6.0),
        ("stop_tokens=</s>,###", ("</s>", "###")),
        ("stop_tokens=[a, b]", ("a", "b")),
        ("stop_tokens=", ()),
        ("whiten_rewards=yes", True),
        ("whiten_rewards=0", False),
        ("kl_estimator=k3", "k3"),
    ],
)
def test_text_values_are_parsed_by_type(text, expected):
    cfg = load_config(PPOConfig, overrides=[text], **REQUIRED_PPO)
    assert getattr(cfg, text.split("=")[0]) == expected


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["kl_coeff=0.1"], "unknown config key 'kl_coeff'.*did you mean 'kl_coef'"),
        (["actor.lr=1"], "unknown config key 'actor' for PPOConfig"),
        (["batch_size=abc"], "'batch_size' expects int, got 'abc'"),
        (["batch_size=1.5"], "'batch_size' expects int"),
        (["kl_coef=big"], "'kl_coef' expects float, got 'big'"),
        (["whiten_rewards=maybe"], "'whiten_rewards' expects bool"),
        (["kl_estimator=k9"], "'kl_estimator' must be one of 'k1', 'k2', 'k3'"),
        (["novalue"], "not of the form key=value"),
        (["mini_batch_size=5"], r"mini_batch_size \(5\) must divide batch_size \(16\)"),
        (["response_length=0"], "response_length must be > 0"),
        (["ptx_coef=1"], "ptx_coef > 0 needs ptx_data"),
        (["micro_batch_size=3"], r"micro_batch_size \(3\) must divide"),
        (["kl_target=0"], "kl_target must be > 0"),
        (["kl_horizon=0"], "kl_horizon must be > 0"),
        (["top_p=0"], r"top_p must be in \(0, 1\]"),
        (["max_steps=0"], "max_steps must be > 0"),
        (["max_bad_steps=0"], "max_bad_steps must be > 0"),
    ],
)
def test_bad_overrides_name_the_culprit(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PPOConfig, overrides=overrides, **REQUIRED_PPO)


def test_bad_yaml_types_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="'epochs' expects int, got True"):
        load_config(SFTConfig, write_yaml(tmp_path, {"model": "m", "data": "d", "out": "o", "epochs": True}))
    with pytest.raises(ConfigError, match="'model' expects str, got 3"):
        load_config(SFTConfig, write_yaml(tmp_path, {"model": 3, "data": "d", "out": "o"}))
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(SFTConfig, write_yaml(tmp_path, {"model": "m", "data": "d", "out": "o", "optim": 1}))


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_size=0", "batch_size must be > 0"),
        ("grad_accum=0", "grad_accum must be > 0"),
        ("max_bad_steps=0", "max_bad_steps must be > 0"),
        ("eval_fraction=1", r"eval_fraction must be in \[0, 1\)"),
    ],
)
def test_supervised_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, overrides=["model=m", "data=d", "out=o", override])


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing required config key 'data'"):
        load_config(SFTConfig, overrides=["model=m", "out=o"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SFTConfig, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, tmp_path / "broken.yaml")


def test_overrides_parse_into_a_tree():
    assert parse_overrides(["a=1", "b.c=x=y", "b.d="]) == {"a": "1", "b": {"c": "x=y", "d": ""}}


@pytest.mark.parametrize("cls", list(COMMAND_CONFIGS.values()))
def test_configs_are_frozen_and_every_field_documented(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
    assert len(describe(cls)) >= len(dataclasses.fields(cls))
    assert cls.__dataclass_params__.frozen

import dataclasses

import pytest
import yaml

from rlhfkit.config import (
    COMMAND_CONFIGS,
    DemoConfig,
    DPOConfig,
    EvalConfig,
    LabelConfig,
    OptimConfig,
    PPOConfig,
    RewardConfig,
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


# ----------------------------------------------------------------------- the demo's sections and old names

SMALL_OLD = ["sft_epochs=3", "sft_lr=0.1", "rm_lr=0.2", "tau=0.3", "ppo_steps=4", "ppo_epochs=1"]


def test_old_demo_names_set_their_new_places():
    cfg = load_config(DemoConfig, overrides=SMALL_OLD)
    assert (cfg.sft.epochs, cfg.sft.optim.lr, cfg.rm.optim.lr) == (3, 0.1, 0.2)
    assert (cfg.label.tau, cfg.ppo.max_steps, cfg.ppo.ppo_epochs) == (0.3, 4, 1)
    # only the named field moves: the rest of each section keeps the demo's defaults
    assert cfg.sft.batch_size == 32 and cfg.rm.epochs == 1 and cfg.ppo.eval_every == 5
    assert cfg.sft.optim.warmup_ratio == OptimConfig().warmup_ratio


def test_old_and_dotted_names_build_the_same_config():
    dotted = ["sft.epochs=3", "sft.optim.lr=0.1", "rm.optim.lr=0.2", "label.tau=0.3"]
    dotted += ["ppo.max_steps=4", "ppo.ppo_epochs=1"]
    assert load_config(DemoConfig, overrides=SMALL_OLD) == load_config(DemoConfig, overrides=dotted)


def test_response_length_alias_sets_labeling_and_ppo():
    cfg = load_config(DemoConfig, overrides=["response_length=9"])
    assert cfg.label.response_length == 9 and cfg.ppo.response_length == 9


# a value for each aliased place that differs from the demo's default and passes its checks
ALIAS_VALUES = {"ppo.batch_size": 48, "ppo.mini_batch_size": 8, "label.tau": 0.5, "label.temperature": 0.5}


@pytest.mark.parametrize(
    "old,place", [(old, place) for old, places in DemoConfig.ALIASES.items() for place in places]
)
def test_every_alias_reaches_its_place(old, place):
    value = ALIAS_VALUES.get(place, 0.5 if place.endswith(("lr", "temperature", "kl_coef")) else 7)
    cfg = load_config(DemoConfig, overrides=[f"{old}={value}"])
    section = cfg
    for part in place.split("."):
        section = getattr(section, part)
    assert section == value
    assert getattr(cfg, old) == value  # the old name still reads (its first place)


def test_aliases_work_from_yaml_and_keyword_values(tmp_path):
    path = write_yaml(tmp_path, {"ppo_steps": 6, "rm": {"epochs": 2}, "sft.batch_size": 8})
    cfg = load_config(DemoConfig, path, kl_coef="0.2")
    assert (cfg.ppo.max_steps, cfg.rm.epochs, cfg.sft.batch_size, cfg.ppo.kl_coef) == (6, 2, 8, 0.2)


def test_a_later_layer_wins_whichever_name_either_uses(tmp_path):
    path = write_yaml(tmp_path, {"sft": {"epochs": 5}, "ppo_steps": 9})
    cfg = load_config(DemoConfig, path, ["sft_epochs=4", "ppo.max_steps=8"], base={"sft_epochs": 1})
    assert cfg.sft.epochs == 4 and cfg.ppo.max_steps == 8
    cfg = load_config(DemoConfig, path, base={"sft_epochs": 1})
    assert cfg.sft.epochs == 5  # the YAML's new name beats the preset's old one


def test_old_and_new_name_in_one_layer_is_an_error():
    with pytest.raises(ConfigError, match="config key 'sft.epochs' is given twice"):
        load_config(DemoConfig, overrides=["sft_epochs=2", "sft.epochs=3"])


def test_help_lists_the_old_names():
    text = "\n".join(describe(DemoConfig))
    assert "ppo_steps -> ppo.max_steps" in text
    assert "response_length -> label.response_length and ppo.response_length" in text
    assert "sft.model (str, set by the demo)" in text
    assert "sft.epochs (int, default 2)" in text  # the section's default is the demo's


def test_demo_sections_carry_the_demo_defaults():
    cfg = DemoConfig()
    assert (cfg.sft.epochs, cfg.sft.batch_size, cfg.sft.optim, cfg.sft.max_length) == (
        2,
        32,
        OptimConfig(lr=2e-3),
        256,
    )
    label = cfg.label
    # a weak proxy on purpose: few, noisy labels, so the study shows over-optimisation
    assert (label.tau, label.pairs_per_prompt, label.temperature, label.response_length) == (0.3, 2, 1.0, 24)
    assert label.batch_size == 64  # the label command's own default
    rm = cfg.rm
    assert (rm.epochs, rm.batch_size, rm.optim, rm.max_length, rm.eval_every) == (
        1,
        32,
        OptimConfig(lr=5e-4),
        256,
        10,
    )
    assert rm.eval_fraction == 0.1  # RewardConfig's own default
    ppo = cfg.ppo
    assert (ppo.max_steps, ppo.batch_size, ppo.mini_batch_size, ppo.ppo_epochs) == (60, 32, 16, 4)
    assert (ppo.response_length, ppo.temperature, ppo.kl_coef, ppo.eval_every) == (24, 0.7, 0.05, 5)
    assert cfg.algorithms == ("ppo", "rloo", "bon") and cfg.bon_max == 16
    assert (cfg.dpo.epochs, cfg.dpo.eval_every, cfg.online_dpo.max_steps, cfg.online_dpo.eval_every) == (
        2,
        5,
        60,
        6,
    )
    assert (ppo.actor_lr, ppo.critic_lr) == (3e-4, 3e-4)
    assert ppo.vf_coef == 0.1 and ppo.kl_estimator == "k1"  # PPOConfig's own defaults


@pytest.mark.parametrize(
    "key",
    [
        "sft.model",
        "sft.data",
        "sft.out",
        "sft.seed",
        "sft.overwrite",
        "sft.bf16",
        "label.policy",
        "label.gold",
    ]
    + ["label.prompts", "label.seed", "rm.eval_data", "rm.bf16", "ppo.reward_model", "ppo.eval_prompts"]
    + ["ppo.seed", "ppo.out", "ppo.overwrite"],
)
def test_a_field_the_demo_wires_is_refused(key):
    value = "true" if key.endswith(("overwrite", "bf16")) else "1"
    with pytest.raises(ConfigError, match=f"config key '{key}' is set by the demo"):
        load_config(DemoConfig, overrides=[f"{key}={value}"])


def test_a_wired_field_is_refused_from_python_too():
    with pytest.raises(ConfigError, match="'ppo.policy' is set by the demo"):
        DemoConfig(ppo=dataclasses.replace(DemoConfig().ppo, policy="sft"))


def test_saved_demo_config_loads_back(tmp_path):
    cfg = load_config(DemoConfig, overrides=["ppo_steps=3", "sft.optim.lr=0.01", "bf16=true"])
    save_config(cfg, tmp_path / "demo.yaml")
    assert load_config(DemoConfig, tmp_path / "demo.yaml") == cfg


# ----------------------------------------------------------------------------------- did you mean

SUPERVISED = ["model=m", "data=d", "out=o"]


@pytest.mark.parametrize(
    "cls,key,suggestion",
    [
        (PPOConfig, "learning_rate", "'actor_lr'"),
        (PPOConfig, "lr", "'actor_lr'"),
        (SFTConfig, "learning_rate", "'optim.lr'"),
        (RewardConfig, "lr", "'optim.lr'"),
        (SFTConfig, "warmup_ratio", "'optim.warmup_ratio'"),
        (SFTConfig, "max_grad_norm", "'optim.max_grad_norm'"),
        (SFTConfig, "optim.learning_rate", "'optim.lr'"),
        (SFTConfig, "num_train_epochs", "'epochs'"),
        (SFTConfig, "per_device_train_batch_size", "'batch_size'"),
        (SFTConfig, "gradient_accumulation_steps", "'grad_accum'"),
        (PPOConfig, "num_ppo_epochs", "'ppo_epochs'"),
        (PPOConfig, "cliprange", "'clip'"),
        (PPOConfig, "cliprange_value", "'value_clip'"),
        (PPOConfig, "max_new_tokens", "'response_length'"),
        (PPOConfig, "kl_coeff", "'kl_coef'"),
        (PPOConfig, "use_remove_padding", "'padding_free'"),  # veRL's and OpenRLHF's packing names
        (SFTConfig, "packing_samples", "'padding_free'"),
        (PPOConfig, "ppo_max_token_len_per_gpu", "'max_tokens_per_micro_batch'"),
        # the first three of the sections that have it (sft, rm, dpo, online_dpo, ppo)
        (DemoConfig, "learning_rate", "'sft.optim.lr', 'rm.optim.lr' or 'dpo.optim.lr'"),
        (DemoConfig, "epochs", "'sft.epochs', 'rm.epochs' or 'dpo.epochs'"),
        (DemoConfig, "kl_estimator", "'ppo.kl_estimator'"),
        (DemoConfig, "ppo_step", "'ppo.max_steps'"),  # a typo of an old name: its new place
        (DemoConfig, "sft.learning_rate", "'sft.optim.lr'"),
        (DPOConfig, "rpo_alpha", "'nll_coef'"),  # TRL's DPOConfig names
        (DPOConfig, "ref_model", "'reference'"),
        (DPOConfig, "learning_rate", "'optim.lr'"),
    ],
)
def test_unknown_key_suggests_the_nearest_known_one(cls, key, suggestion):
    required = {PPOConfig: list(REQUIRED_PPO_OVERRIDES), DemoConfig: []}.get(cls, SUPERVISED)
    owner = cls.__name__ if "." not in key else ("OptimConfig" if key.startswith("optim.") else "SFTConfig")
    message = f"unknown config key '{key}' for {owner} (did you mean {suggestion}?)"
    with pytest.raises(ConfigError) as error:
        load_config(cls, overrides=[*required, f"{key}=1"])
    assert str(error.value) == message


@pytest.mark.parametrize(
    "cls,key",
    [
        (PPOConfig, "gradient_accumulation_steps"),  # a synonym whose target PPOConfig lacks
        (SFTConfig, "cliprange"),
        (PPOConfig, "xyzzy"),
        (DemoConfig, "seeds_of_doubt"),
    ],
)
def test_no_suggestion_of_a_name_the_class_lacks(cls, key):
    required = {PPOConfig: list(REQUIRED_PPO_OVERRIDES), DemoConfig: []}.get(cls, SUPERVISED)
    with pytest.raises(ConfigError) as error:
        load_config(cls, overrides=[*required, f"{key}=1"])
    assert str(error.value) == f"unknown config key '{key}' for {cls.__name__}"


def test_a_wired_field_is_never_suggested():
    with pytest.raises(ConfigError) as error:
        load_config(DemoConfig, overrides=["model=x"])  # sft.model and rm.model are the demo's
    assert "'sft.model'" not in str(error.value) and "'rm.model'" not in str(error.value)


@pytest.mark.parametrize("key", ["sft.modle", "sft.sed", "ppo.polcy"])
def test_a_wired_field_is_not_suggested_inside_its_section(key):
    """Inside a section the suggestion knows the demo wires `sft.model`, `sft.seed`, `ppo.policy`."""
    with pytest.raises(ConfigError) as error:
        load_config(DemoConfig, overrides=[f"{key}=x"])
    wired = {"sft.modle": "'sft.model'", "sft.sed": "'sft.seed'", "ppo.polcy": "'ppo.policy'"}[key]
    assert f"unknown config key '{key}'" in str(error.value) and wired not in str(error.value)


# ----------------------------------------------------------------------------------- range checks

REQUIRED_PPO_OVERRIDES = [f"{k}={v}" for k, v in REQUIRED_PPO.items()]
REQUIRED_LABEL = dict(policy="m", prompts="p", gold="mod:fn", out="o.jsonl")
REQUIRED_EVAL = dict(model="m", prompts="p")


@pytest.mark.parametrize(
    "override,message",
    [
        ("tau=-0.1", "tau must be >= 0"),
        ("pairs_per_prompt=0", "pairs_per_prompt must be > 0"),
        ("batch_size=0", "batch_size must be > 0"),
        ("response_length=0", "response_length must be > 0"),
        ("temperature=0", "temperature must be > 0"),
        ("max_prompt_length=0", "max_prompt_length must be > 0"),
    ],
)
def test_label_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LabelConfig, overrides=[override], **REQUIRED_LABEL)


@pytest.mark.parametrize(
    "override,message",
    [
        ("response_length=0", "response_length must be > 0"),
        ("batch_size=0", "batch_size must be > 0"),
        ("temperature=-1", "temperature must be > 0"),
        ("max_prompt_length=0", "max_prompt_length must be > 0"),
    ],
)
def test_eval_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvalConfig, overrides=[override], **REQUIRED_EVAL)


@pytest.mark.parametrize(
    "override,message",
    [
        ("max_steps=0", "max_steps must be > 0"),
        ("eval_every=-1", "eval_every must be >= 0"),
        ("save_every=-1", "save_every must be >= 0"),
        ("optim.lr=-1e-5", r"optim: lr must be >= 0"),
        ("optim.warmup_ratio=-0.1", r"optim: warmup_ratio must be in \[0, 1\]"),
        ("optim.warmup_ratio=1.5", r"optim: warmup_ratio must be in \[0, 1\]"),
        ("optim.max_grad_norm=-1", "optim: max_grad_norm must be >= 0"),
        ("optim.adam_eps=0", "optim: adam_eps must be > 0"),
    ],
)
def test_supervised_and_optimiser_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, overrides=[*SUPERVISED, override])


def test_reward_stats_samples_range():
    with pytest.raises(ConfigError, match="stats_samples must be > 0"):
        load_config(RewardConfig, overrides=[*SUPERVISED, "stats_samples=0"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval_every=-1", "eval_every must be >= 0"),
        ("save_every=-1", "save_every must be >= 0"),
        ("clip=0", "clip must be > 0"),
        ("value_clip=0", "value_clip must be > 0"),
        ("vf_coef=-0.1", "vf_coef must be >= 0"),
        ("lam=-0.1", r"lam must be in \[0, 1\]"),
        ("lam=1.1", r"lam must be in \[0, 1\]"),
        ("gamma=0", r"gamma must be in \(0, 1\]"),
        ("gamma=1.01", r"gamma must be in \(0, 1\]"),
        ("actor_lr=-1e-5", "actor_lr must be >= 0"),
        ("critic_lr=-1e-5", "critic_lr must be >= 0"),
        ("kl_coef=-0.1", "kl_coef must be >= 0"),
        ("eval_holdout=0", "eval_holdout must be > 0"),
        ("ptx_max_length=0", "ptx_max_length must be > 0"),
        ("temperature=0", "temperature must be > 0"),
    ],
)
def test_ppo_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PPOConfig, overrides=[override], **REQUIRED_PPO)


@pytest.mark.parametrize(
    "overrides",
    [
        ["gamma=1", "lam=0", "eval_every=0", "save_every=0", "vf_coef=0", "actor_lr=0", "kl_coef=0"],
        ["lam=1", "gamma=0.5"],
    ],
)
def test_ppo_range_edges_are_accepted(overrides):
    load_config(PPOConfig, overrides=overrides, **REQUIRED_PPO)


def test_range_edges_of_the_other_commands_are_accepted():
    load_config(LabelConfig, overrides=["tau=0"], **REQUIRED_LABEL)
    load_config(SFTConfig, overrides=[*SUPERVISED, "optim.warmup_ratio=0", "optim.lr=0", "max_steps=1"])
    load_config(SFTConfig, overrides=[*SUPERVISED, "optim.warmup_ratio=1", "optim.max_grad_norm=0"])


@pytest.mark.parametrize(
    "name", ["demonstrations", "eval_prompts", "vocab_size", "hidden_size", "num_layers", "num_heads"]
)
def test_demo_ranges(name):
    with pytest.raises(ConfigError, match=f"{name} must be > 0, got 0"):
        load_config(DemoConfig, overrides=[f"{name}=0"])


def test_a_range_error_inside_a_demo_section_names_the_section():
    with pytest.raises(ConfigError, match=r"^ppo: lam must be in \[0, 1\], got 2.0$"):
        load_config(DemoConfig, overrides=["ppo.lam=2"])


# ----------------------------------------------------------------------------------- the KL penalty's place


@pytest.mark.parametrize(
    "overrides,ok",
    [
        (["kl_penalty=loss"], False),  # with the default k1
        (["kl_penalty=loss", "kl_estimator=k1"], False),
        (["kl_penalty=loss", "kl_estimator=k3"], True),
        (["kl_penalty=loss", "kl_estimator=k2"], True),
        (["kl_penalty=reward", "kl_estimator=k1"], True),
        (["kl_penalty=reward", "kl_estimator=k3"], True),
    ],
)
def test_kl_penalty_in_the_loss_needs_k2_or_k3(overrides, ok):
    if ok:
        assert load_config(PPOConfig, overrides=overrides, **REQUIRED_PPO).kl_penalty in ("loss", "reward")
        return
    with pytest.raises(ConfigError, match="kl_penalty=loss needs kl_estimator k2 or k3"):
        load_config(PPOConfig, overrides=overrides, **REQUIRED_PPO)


def test_kl_penalty_takes_only_its_two_places():
    with pytest.raises(ConfigError, match="'kl_penalty' must be one of 'reward', 'loss'"):
        load_config(PPOConfig, overrides=["kl_penalty=both"], **REQUIRED_PPO)


def test_new_fields_have_their_documented_defaults():
    ppo = load_config(PPOConfig, **REQUIRED_PPO)
    assert (ppo.eval_holdout, ppo.ptx_max_length, ppo.kl_penalty) == (32, 1024, "reward")
    assert load_config(RewardConfig, overrides=SUPERVISED).stats_samples == 2048
    assert load_config(LabelConfig, **REQUIRED_LABEL).max_prompt_length == 1024
    assert load_config(EvalConfig, **REQUIRED_EVAL).max_prompt_length == 1024
    # added last: positional construction of the old fields is undisturbed
    assert [f.name for f in dataclasses.fields(PPOConfig)][-4:] == [
        "eval_holdout",
        "ptx_max_length",
        "kl_penalty",
        "report_to",
    ]


# Every Literal field of each config class, with a valid value to replace and a bogus one. Built from Python
# (not the command line, whose parser checks them), a value outside the Literal used to be accepted and fail
# later with exit status 1 (loss_aggregation="bogus" in the trainer).
LITERALS = [
    (PPOConfig, REQUIRED_PPO, name)
    for name in (
        "advantage_estimator",
        "rloo_baseline",
        "loss_aggregation",
        "ratio_level",
        "truncation",
        "kl_estimator",
        "decoder",
        "model_dtype",
        "kl_penalty",
    )  # fmt: skip
] + [
    (OptimConfig, {}, "schedule"),
    (SFTConfig, dict(model="m", data="d", out="o"), "truncation"),
    (RewardConfig, dict(model="m", data="d", out="o"), "model_dtype"),
    (DemoConfig, {}, "preset"),
]


@pytest.mark.parametrize(("cls", "required", "name"), LITERALS, ids=lambda x: getattr(x, "__name__", x))
def test_a_literal_field_built_from_python_is_checked(cls, required, name):
    with pytest.raises(ConfigError, match=rf"^{name} must be one of '.*', got 'bogus'$"):
        cls(**required, **{name: "bogus"})
    cls(**required)  # the defaults pass


def test_every_literal_field_is_checked():
    """LITERALS covers every Literal field of PPOConfig (a new one is checked by the same helper)."""
    import typing

    hints = typing.get_type_hints(PPOConfig)
    literal = {n for n, t in hints.items() if typing.get_origin(t) is typing.Literal}
    assert literal == {name for cls, _, name in LITERALS if cls is PPOConfig}

"""The config of `rlhfkit demo`: its own fields plus one section per stage, holding the demo's defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from rlhfkit.config.commands import LabelConfig, OptimConfig, RewardConfig, SFTConfig
from rlhfkit.config.dpo import DPOConfig
from rlhfkit.config.options import DEMO_BF16_HELP, SET_BY_DEMO, bf16_choice, one_of_choices, option, positive
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.errors import ConfigError

# The fields of each stage that the demo wires from its own (paths between stages, seed, bf16, overwrite).
WIRED: dict[str, tuple[str, ...]] = {
    "sft": ("model", "data", "out", "seed", "overwrite", "bf16"),
    "label": ("policy", "prompts", "gold", "out", "seed", "overwrite"),
    "rm": ("model", "data", "eval_data", "out", "seed", "overwrite", "bf16"),
    "ppo": ("policy", "reward_model", "prompts", "eval_prompts", "out", "seed", "overwrite", "bf16"),
    "dpo": ("model", "data", "eval_prompts", "out", "seed", "overwrite", "bf16"),
    "online_dpo": ("model", "prompts", "reward_model", "eval_prompts", "out", "seed", "overwrite", "bf16"),
}


def _wired(section: str) -> dict[str, Any]:
    return dict.fromkeys(WIRED[section], SET_BY_DEMO)


# `rlhfkit demo --algorithms`: the names users compare. PPO's family -> PPOConfig.advantage_estimator; then
# offline DPO on the labelled pairs, online DPO against the RM, and best-of-N sampling by the RM
ESTIMATORS = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp"}
ALGORITHMS = (*ESTIMATORS, "dpo", "online_dpo", "bon")

# Short stages sized for a CPU laptop; the rest of each stage keeps its command's default.
DEMO_SFT = SFTConfig(**_wired("sft"), epochs=2, batch_size=32, optim=OptimConfig(lr=2e-3), max_length=256)
# A weak proxy on purpose, as Gao et al.'s small reward models: ~470 noisy labels (2 pairs a prompt, labeler
# noise tau 0.3) give an RM that optimisation can exploit, so the study shows gold peaking and falling while
# the proxy keeps rising (RLOO's and GRPO's curves; docs/overoptimisation.md). 8 pairs a prompt at tau 0.1
# (1,881 labels) gave an RM of 88 % held-out accuracy that PPO and best-of-N only climbed.
DEMO_LABEL = LabelConfig(**_wired("label"), tau=0.3, pairs_per_prompt=2, temperature=1.0, response_length=24)
DEMO_RM = RewardConfig(
    **_wired("rm"),
    epochs=1,
    batch_size=32,
    optim=OptimConfig(lr=5e-4),
    max_length=256,
    eval_every=10,  # a held-out accuracy curve for the report
)
DEMO_PPO = PPOConfig(
    **_wired("ppo"),
    max_steps=60,  # the proxy reward saturates by iteration ~20; 150 gave the same gold reward (0.82)
    batch_size=32,
    mini_batch_size=16,
    ppo_epochs=4,
    response_length=24,
    temperature=0.7,
    kl_coef=0.05,
    actor_lr=3e-4,
    critic_lr=3e-4,
    eval_every=5,  # points of the reward-KL frontier in the report
)


DEMO_DPO = DPOConfig(
    **_wired("dpo"),
    epochs=2,
    batch_size=32,
    beta=0.1,
    optim=OptimConfig(lr=5e-4),
    max_length=256,
    eval_every=5,  # 6 points along its 30 steps (470 pairs, 2 epochs), each sampling the held-out prompts
    response_length=24,  # sampled as PPO samples
    temperature=0.7,
)
DEMO_ONLINE_DPO = DPOConfig(
    **_wired("online_dpo"),
    max_steps=60,
    batch_size=32,
    samples_per_prompt=4,
    beta=0.1,
    optim=OptimConfig(lr=5e-4),
    response_length=24,
    temperature=0.7,
    eval_every=6,
)


@dataclass(frozen=True)
class DemoConfig:
    """`rlhfkit demo`: SFT -> simulated labeling -> RM -> PPO -> evaluation on the bundled sentiment task.
    Each stage's settings are a section (`sft.epochs=3`, `ppo.kl_coef=0.1`); the evaluation samples with
    `ppo.response_length` and `ppo.temperature`."""

    # Flat names of the old DemoConfig -> the dotted field(s) they set now; accepted wherever keys are.
    ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {
        "sft_epochs": ("sft.epochs",),
        "sft_lr": ("sft.optim.lr",),
        "sft_batch_size": ("sft.batch_size",),
        "pairs_per_prompt": ("label.pairs_per_prompt",),
        "tau": ("label.tau",),
        "label_temperature": ("label.temperature",),
        "rm_epochs": ("rm.epochs",),
        "rm_lr": ("rm.optim.lr",),
        "rm_batch_size": ("rm.batch_size",),
        "ppo_steps": ("ppo.max_steps",),
        "ppo_batch_size": ("ppo.batch_size",),
        "ppo_mini_batch_size": ("ppo.mini_batch_size",),
        "ppo_epochs": ("ppo.ppo_epochs",),
        "response_length": ("label.response_length", "ppo.response_length"),
        "temperature": ("ppo.temperature",),
        "kl_coef": ("ppo.kl_coef",),
        "actor_lr": ("ppo.actor_lr",),
        "critic_lr": ("ppo.critic_lr",),
        "ppo_eval_every": ("ppo.eval_every",),
    }

    out: str = option("runs/demo", "output folder for every stage, summary.json and report.html")
    preset: Literal["tiny", "smollm2"] = option(
        "tiny",
        "tiny model built from scratch, or SmolLM2-135M (slower), whose values --preset smollm2 reads from "
        "src/rlhfkit/configs/demo-smollm2.yaml (rlhfkit/configs/ inside an installed package)",
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
    bf16: bool | Literal["auto"] = option(False, DEMO_BF16_HELP.format(stages="sft, rm and stage 3"))
    # the stages
    sft: SFTConfig = option(DEMO_SFT, "stage 1, supervised fine-tuning on the demonstrations")
    label: LabelConfig = option(DEMO_LABEL, "pairs sampled from the SFT model, judged by the noisy labeler")
    rm: RewardConfig = option(DEMO_RM, "stage 2, the reward model on the labeled pairs")
    ppo: PPOConfig = option(DEMO_PPO, "stage 3, PPO against the learned reward model")
    dpo: DPOConfig = option(DEMO_DPO, "offline DPO on the labelled pairs (algorithm `dpo`)")
    online_dpo: DPOConfig = option(DEMO_ONLINE_DPO, "online DPO against the learned RM (`online_dpo`)")
    algorithms: tuple[str, ...] = option(
        ("ppo", "rloo", "bon"),
        "stage 3 runs once per algorithm, from the same SFT model and RM, with the `ppo` section's settings: "
        "any of ppo (GAE with a critic), grpo, rloo, reinforce_pp (with the `ppo` section's settings), dpo "
        "(offline, on the labelled pairs: the `dpo` section), online_dpo (the `online_dpo` section), bon "
        "(best-of-N of the SFT model by the RM, N = 1, 2, 4, ... `bon_max`), e.g. `--algorithms "
        "ppo,dpo,bon`. Every one is followed along training by held-out gold, proxy and KL "
        "(summary.json's `overoptimisation`, the report's over-optimisation section). The first that trains "
        "by sampling (not dpo, not bon) is summary.json's `algorithm`: the report's training curves describe "
        "it, and the top-level keys are named after it (`gold_reward_ppo`, ...)",
    )
    group_size: int = option(4, "responses per prompt (samples_per_prompt) for grpo and rloo")
    bon_max: int = option(16, "the largest N of best-of-N (`bon`): N = 1, 2, 4, ... up to it")

    def __post_init__(self) -> None:
        one_of_choices(self)
        bf16_choice(self)
        positive(
            self, "demonstrations", "eval_prompts", "vocab_size", "hidden_size", "num_layers", "num_heads"
        )
        positive(self, "bon_max")
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown or not self.algorithms or len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError(
                f"algorithms must be distinct names among {', '.join(ALGORITHMS)}, "
                f"got {','.join(self.algorithms)}"
            )
        for algorithm in self.algorithms:
            if algorithm in ESTIMATORS:
                self.stage3(algorithm)  # its checks (batch_size a multiple of group_size) before any stage
        for section, names in WIRED.items():
            for name in names:
                if getattr(getattr(self, section), name) != SET_BY_DEMO:
                    raise ConfigError(
                        f"config key '{section}.{name}' is set by the demo itself "
                        f"(from out, seed, bf16 and the earlier stages); leave it out"
                    )

    def stage3(self, algorithm: str) -> PPOConfig:
        """The `ppo` section as `algorithm` runs it: its advantage estimator, and `group_size` samples per
        prompt for the estimators that compare the samples of a prompt."""
        grouped = algorithm in ("grpo", "rloo")
        return replace(
            self.ppo,
            advantage_estimator=ESTIMATORS[algorithm],
            samples_per_prompt=self.group_size if grouped else self.ppo.samples_per_prompt,
        )

    def __getattr__(self, name: str) -> Any:
        # Reading an old flat name still works (the first place it sets), for code written against them.
        targets = type(self).ALIASES.get(name)
        if targets is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value: Any = self
        for part in targets[0].split("."):
            value = getattr(value, part)
        return value

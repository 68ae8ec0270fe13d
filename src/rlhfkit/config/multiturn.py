"""The config of `rlhfkit demo-multiturn`: its own fields plus the `sft` and `ppo` sections, holding the
demo's defaults (as `config/demo.py` does for `rlhfkit demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit.config.commands import OptimConfig, SFTConfig
from rlhfkit.config.options import DEMO_BF16_HELP, SET_BY_DEMO, bf16_choice, option, positive, within
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.errors import ConfigError

# The fields of each stage that the demo wires from its own (paths between stages, seed, bf16, overwrite).
WIRED: dict[str, tuple[str, ...]] = {
    "sft": ("model", "data", "out", "seed", "overwrite", "bf16"),
    "ppo": ("policy", "prompts", "eval_prompts", "environment", "out", "seed", "overwrite", "bf16"),
}


def _wired(section: str) -> dict[str, Any]:
    return dict.fromkeys(WIRED[section], SET_BY_DEMO)


# Sized for 2 CPU cores: a game is ~30 tokens, a guess one token and its stop token.
MULTITURN_SFT = SFTConfig(
    **_wired("sft"), epochs=2, batch_size=32, optim=OptimConfig(lr=2e-3), max_length=128
)
MULTITURN_PPO = PPOConfig(
    **_wired("ppo"),
    max_turns=4,  # enough to find any of 8 numbers by halving the interval
    max_prompt_length=32,  # the opening is 15 tokens
    max_episode_length=96,  # a whole game is ~30 tokens
    max_steps=60,  # success ~0.74 after 40 iterations at actor_lr 5e-4; ~0.9 after 60 at 1e-3
    batch_size=64,
    mini_batch_size=32,
    ppo_epochs=4,
    response_length=4,  # a guess is one token and the stop token; room for a malformed one
    temperature=1.0,  # the SFT model's own distribution: its evaluation plays as the demonstrations do
    kl_coef=0.02,
    actor_lr=1e-3,
    critic_lr=1e-3,
    eval_every=20,
)


@dataclass(frozen=True)
class MultiturnConfig:
    """`rlhfkit demo-multiturn`: a multi-turn task learnt with PPO from an environment's rewards, no reward
    model: guess my number (`rlhfkit.tasks.guess`). Tokenizer and tiny model -> SFT on a weak player's games
    -> the SFT model's success rate on held-out games -> PPO against the environment -> the trained actor's.
    Each stage's settings are a section (`sft.epochs=3`, `ppo.max_steps=60`); the evaluations play as PPO
    samples (`ppo.max_turns`, `ppo.response_length`, `ppo.temperature`, `ppo.max_episode_length`)."""

    out: str = option("runs/guess", "output folder for every stage and summary.json")
    seed: int = option(0, "random seed of every stage")
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")
    bf16: bool | Literal["auto"] = option(False, DEMO_BF16_HELP.format(stages="sft and ppo"))
    # the task
    high: int = option(8, "the secret numbers are 1..high")
    episodes: int = option(2000, "games of the weak player whose turns are the SFT demonstrations")
    skill: float = option(
        1.0,
        "how often the weak player uses the feedback: that fraction of its turns names a number the answers "
        "still allow (uniformly: it never halves the interval), the others any number of 1..high. At 1.0 it "
        "finds the number 84 % of the time and the SFT model, imitating it imperfectly, ~60 %",
    )
    prompts: int = option(1024, "games (secret numbers) PPO trains on")
    eval_episodes: int = option(256, "held-out games that measure the success rate before and after PPO")
    # the tiny model
    vocab_size: int = option(512, "BPE vocabulary trained on the game's text (it stops early when done)")
    hidden_size: int = option(128, "width of the tiny Llama")
    num_layers: int = option(3, "layers of the tiny Llama")
    num_heads: int = option(4, "attention heads of the tiny Llama")
    # the stages
    sft: SFTConfig = option(MULTITURN_SFT, "stage 2, supervised fine-tuning on the weak player's turns")
    ppo: PPOConfig = option(MULTITURN_PPO, "stage 4, PPO against the environment (no reward model)")

    def __post_init__(self) -> None:
        bf16_choice(self)
        positive(self, "episodes", "prompts", "eval_episodes", "vocab_size", "hidden_size", "num_layers")
        positive(self, "num_heads")
        within(self, "skill", 0, 1)
        if self.high < 2:
            raise ConfigError(f"high must be at least 2, got {self.high}")
        needed = self.ppo.batch_size // self.ppo.samples_per_prompt  # checked here: PPO would refuse late
        if self.prompts < needed:
            raise ConfigError(
                f"prompts ({self.prompts}) must be at least the {needed} games a PPO iteration samples "
                f"(ppo.batch_size / ppo.samples_per_prompt)"
            )
        for section, names in WIRED.items():
            for name in names:
                if getattr(getattr(self, section), name) != SET_BY_DEMO:
                    raise ConfigError(
                        f"config key '{section}.{name}' is set by the demo itself "
                        f"(from out, seed, bf16 and the earlier stages); leave it out"
                    )

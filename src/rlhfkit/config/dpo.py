"""The config of `rlhfkit dpo`: offline DPO on preference pairs (`data`), or online DPO on prompts
(`prompts`) scored by a reward model and/or reward functions, as `ppo` scores them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit.config.commands import PADDING_FREE_HELP, TOKEN_BUDGET_HELP, OptimConfig, SupervisedConfig
from rlhfkit.config.options import non_negative, option, positive
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.errors import ConfigError

PPO_FIELDS = {f.name: f for f in dataclasses.fields(PPOConfig)}


def as_in_ppo(name: str, default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A field online DPO shares with `ppo`: its name, help and (unless given) default are `ppo`'s."""
    f = PPO_FIELDS[name]
    return option(f.default if default is dataclasses.MISSING else default, help or f.metadata["help"])


ONLINE = "online DPO only"
# the fields one mode reads and the other does not: set on the other, they are refused, not ignored
ONLINE_ONLY = (
    *("reward_model", "reward_functions", "reward_weights", "reward_concurrency", "normalize_reward"),
    *("reward_clip", "missing_eos_penalty", "samples_per_prompt", "eval_holdout"),
)
# how the policy samples: online DPO's training and evaluation, offline DPO's evaluation on `eval_prompts`
SAMPLING = ("response_length", "temperature", "top_k", "top_p", "stop_tokens", "decoder", "max_prompt_length")
MONITORS = ("monitor_functions", "monitor_models", "monitor_training")
SAMPLING += MONITORS[:2]  # measured on the evaluation's samples
ONLINE_ONLY += MONITORS[2:]  # offline DPO's training batch is pairs, not samples
OFFLINE_ONLY = ("reference", "eval_data", "eval_fraction", "max_length")
LABEL_SMOOTHED = ("sigmoid", "robust")
# the fields online DPO passes on to the `ppo` config it reuses, under the same names
SHARED_WITH_PPO = (
    *("prompts", "out", "reward_model", "reward_functions", "reward_weights", "reward_concurrency"),
    *("normalize_reward", "reward_clip", "missing_eos_penalty", "samples_per_prompt", "response_length"),
    *("temperature", "top_k", "top_p", "stop_tokens", "decoder", "max_prompt_length", "truncation"),
    *("eval_prompts", "eval_holdout", "eval_every", "batch_size", "seed", "bf16", "model_dtype"),
    *("save_every", "keep_checkpoints", "resume", "max_bad_steps", "overwrite", "report_to", "lora"),
    *("padding_free", "max_tokens_per_micro_batch"),  # the rollout's no-grad passes, as in `ppo`
    "columns",
    *MONITORS,
)


@dataclass(frozen=True, kw_only=True)
class DPOConfig(SupervisedConfig):
    """`rlhfkit dpo`: direct preference optimisation of a policy against a frozen reference. Offline with
    `data` ({prompt, chosen, rejected} rows, every schema `rm` reads); online with `prompts`: each step
    samples `samples_per_prompt` responses per prompt from the current policy, scores them with the reward
    model and/or reward functions (exactly as `ppo` does), and trains on the best and worst of each prompt."""

    data: str | None = option(
        None, "preference pairs for offline DPO: JSONL/Parquet, a `datasets` folder, or a hub dataset name"
    )
    beta: float = option(
        0.1, "strength of the KL regularisation towards the reference (IPO's tau; SimPO's reward scale)"
    )
    loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "simpo"] = option(
        "sigmoid",
        "`sigmoid` = DPO (cDPO with label_smoothing); `robust` = robust DPO under label noise; `hinge` = "
        "SLiC; `ipo` = IPO (length-averaged log-probs); `simpo` = SimPO (length-averaged, no reference)",
    )
    label_smoothing: float = option(
        0.0, "the assumed probability that a preference label is flipped, in [0, 0.5) (sigmoid, robust)"
    )
    simpo_gamma: float = option(0.5, "SimPO's target reward margin gamma")
    nll_coef: float = option(
        0.0,
        "weight of an NLL term on the chosen responses (RPO; Llama 3 used 0.2): each chosen response's "
        "length-averaged negative log-likelihood, averaged over pairs",
    )
    reference: str | None = option(
        None,
        "the frozen reference model; None = `model` (with LoRA: the base with its adapter off). Its "
        "log-probs of every pair are computed once before training. simpo uses none",
    )
    optim: OptimConfig = option(OptimConfig(lr=1e-6), "optimiser settings, e.g. `optim.lr=5e-7`")
    eval_every: int = option(20, "evaluate every N steps (0 = only at the end)")
    batch_size: int = option(
        8, "pairs per optimiser step (offline); responses sampled per step (online, as in `ppo`)"
    )
    padding_free: bool = option(
        False,
        PADDING_FREE_HELP + ". Offline: the training, reference and held-out passes; online: the training "
        "pass and the no-grad passes over the samples (as in `ppo`)",
    )
    max_tokens_per_micro_batch: int | None = option(
        None, TOKEN_BUDGET_HELP + ". Online DPO: also its no-grad passes over the samples (`ppo`'s)"
    )
    # online DPO
    prompts: str | None = option(None, "prompt data for online DPO: {prompt} or {messages} rows")
    reward_model: str | None = as_in_ppo("reward_model", help=f"{ONLINE}: reward model folder")
    reward_functions: tuple[str, ...] = as_in_ppo("reward_functions")
    reward_weights: tuple[float, ...] = as_in_ppo("reward_weights")
    reward_concurrency: int = as_in_ppo("reward_concurrency")
    normalize_reward: bool = as_in_ppo("normalize_reward")
    reward_clip: float | None = as_in_ppo("reward_clip")
    missing_eos_penalty: float | None = as_in_ppo("missing_eos_penalty")
    samples_per_prompt: int = option(
        2, f"{ONLINE}: responses sampled per prompt; the best and worst make its pair (>= 2)"
    )
    response_length: int = as_in_ppo("response_length")
    temperature: float = as_in_ppo("temperature")
    top_k: int = as_in_ppo("top_k")
    top_p: float = as_in_ppo("top_p")
    stop_tokens: tuple[str, ...] = as_in_ppo("stop_tokens")
    decoder: Literal["auto", "eager", "static", "compiled"] = as_in_ppo("decoder")
    max_prompt_length: int = as_in_ppo("max_prompt_length")
    eval_prompts: str | None = option(
        None,
        "held-out prompts sampled at each evaluation: online, None = `eval_holdout` held out from `prompts`; "
        "offline, None = no sampling (with them: the samples' KL to the reference, length and monitors)",
    )
    eval_holdout: int = as_in_ppo("eval_holdout")
    monitor_functions: tuple[str, ...] = as_in_ppo("monitor_functions")
    monitor_models: tuple[str, ...] = as_in_ppo("monitor_models")
    monitor_training: bool = as_in_ppo("monitor_training")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta")
        non_negative(self, "nll_coef")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in LABEL_SMOOTHED:
            raise ConfigError(f"label_smoothing is for loss_type sigmoid or robust, not {self.loss_type}")
        if self.loss_type == "simpo" and self.reference is not None:
            raise ConfigError("loss_type simpo uses no reference model: leave `reference` out")
        if (self.data is None) == (self.prompts is None):
            raise ConfigError(
                "give --data (offline DPO on preference pairs) or --prompts (online DPO), not "
                + ("both" if self.data is not None else "neither")
            )
        sampled = self.online or self.eval_prompts is not None
        other = self.set_fields(OFFLINE_ONLY if self.online else ONLINE_ONLY + ((), SAMPLING)[not sampled])
        if other and self.online:
            raise ConfigError(
                f"{other[0]} is for offline DPO (--data): online DPO's reference is its starting policy, it "
                "evaluates on eval_prompts / eval_holdout, and cuts prompts at max_prompt_length"
            )
        if other:
            raise ConfigError(
                f"{other[0]} is for online DPO (--prompts) or offline DPO's sampling evaluation "
                "(eval_prompts); offline DPO reads pairs from --data, cut at max_length"
                if other[0] in SAMPLING
                else f"{other[0]} is for online DPO (--prompts); offline DPO reads pairs from --data"
            )
        if self.online:
            self.ppo_config()  # ppo's own checks of the fields they share

    def set_fields(self, names: tuple[str, ...]) -> list[str]:
        """Those of `names` whose value is not the default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [name for name in names if getattr(self, name) != defaults[name]]

    @property
    def online(self) -> bool:
        return self.prompts is not None

    def ppo_config(self) -> PPOConfig:
        """The `ppo` config whose roles, prompts, rewards and rollout online DPO reuses: a critic-free run
        (no critic is loaded) whose KL coefficient is 0 (the DPO loss holds the KL); every optimiser step is
        one batch."""
        if self.samples_per_prompt < 2:
            raise ConfigError(
                f"online DPO pairs the best and worst of a prompt's samples: samples_per_prompt must be "
                f">= 2, got {self.samples_per_prompt}"
            )
        shared = {name: getattr(self, name) for name in SHARED_WITH_PPO}
        return PPOConfig(
            **shared,
            policy=self.model,
            advantage_estimator="rloo",
            kl_coef=0.0,
            max_steps=self.max_steps or 1,
            mini_batch_size=self.batch_size,
            ppo_epochs=1,
            actor_lr=self.optim.lr,
            adam_eps=self.optim.adam_eps,
            max_grad_norm=self.optim.max_grad_norm,
        )

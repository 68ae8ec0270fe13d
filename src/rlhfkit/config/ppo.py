"""The config of `rlhfkit ppo`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config.commands import MODEL_DTYPE_HELP, LoraConfig
from rlhfkit.config.options import REPORT_TO_HELP, known_trackers, non_negative, option, positive, within
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class PPOConfig:
    """`rlhfkit ppo`: PPO with actor, critic, frozen reference and frozen reward model."""

    policy: str = option(help="SFT model folder: initialises the actor and serves as the frozen reference")
    reward_model: str = option(help="reward model folder: frozen scorer, and the critic's initialisation")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    out: str = option(help="output folder for actor, critic, metrics.jsonl and samples.jsonl")
    eval_prompts: str | None = option(
        None, "held-out prompts for evaluation; None = `eval_holdout` held out from `prompts`"
    )
    max_prompt_length: int = option(256, "maximum prompt tokens")
    truncation: Literal["left", "drop"] = option("left", "over-long prompts: cut from the left or drop them")
    max_steps: int = option(100, "PPO iterations (each: rollout, score, `ppo_epochs` of updates)")
    batch_size: int = option(16, "episodes (prompts) per iteration")
    mini_batch_size: int = option(8, "episodes per optimiser step; must divide `batch_size`")
    micro_batch_size: int | None = option(
        None, "episodes per forward pass (gradient accumulation); None = `mini_batch_size`; must divide it"
    )
    forward_batch_size: int | None = option(
        None,
        "episodes per no-grad forward pass (old log-probs and values, scores, reference log-probs); None = "
        "as many as keep one pass's logits within 1 GiB (usually the whole batch)",
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
    kl_estimator: Literal["k1", "k2", "k3"] = option(
        "k1",
        "per-token KL estimator: k1 in the reward (k2/k3 there bias the gradient; see docs/ppo-details.md), "
        "k3 (GRPO) or k2 in the loss",
    )
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
    decoder: Literal["auto", "eager", "static", "compiled"] = option(
        "auto",
        "how the rollout runs the model token by token: `eager` = the model's growing KV cache; "
        "`static` = a KV cache of fixed length; `compiled` = static + torch.compile as a CUDA graph (one "
        "launch per token); `auto` = compiled on CUDA (eager when FSDP shards the model), eager on CPU. "
        "All sample the same tokens",
    )
    lora: LoraConfig = option(
        LoraConfig(),
        "LoRA adapters on actor and critic, e.g. `lora.r=16`: the reference and the reward model are then "
        "the same two bases with the adapters off (0 = four full models)",
    )
    model_dtype: Literal["float32", "bfloat16"] = option("float32", MODEL_DTYPE_HELP)
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")
    eval_holdout: int = option(
        32,
        "prompts held out from `prompts` for evaluation when `eval_prompts` is None "
        "(at most a quarter of them)",
    )
    ptx_max_length: int = option(1024, "maximum tokens of a ptx example")
    kl_penalty: Literal["reward", "loss"] = option(
        "reward",
        "where the KL penalty goes: `reward` = -beta*KL per token in the reward (k1 is the unbiased "
        "estimator there), `loss` = beta*mean(KL) added to the policy loss with its gradient (the GRPO "
        "placement; use k2 or k3)",
    )
    report_to: tuple[str, ...] = option((), REPORT_TO_HELP)

    def __post_init__(self) -> None:
        known_trackers(self)
        positive(
            self,
            "response_length",
            "max_steps",
            "ppo_epochs",
            "max_prompt_length",
            "kl_horizon",
            "keep_checkpoints",
            "max_bad_steps",
            "clip",
            "value_clip",
            "temperature",
            "adam_eps",
            "eval_holdout",
            "ptx_max_length",
        )
        non_negative(
            self,
            "eval_every",
            "save_every",
            "kl_coef",
            "vf_coef",
            "actor_lr",
            "critic_lr",
            "max_grad_norm",
            "ptx_coef",
        )
        within(self, "lam", 0, 1)
        within(self, "gamma", 0, 1, open_low=True)
        self._check_batches()
        self._check_sampling_and_penalties()

    def _check_batches(self) -> None:
        if self.batch_size <= 0 or self.mini_batch_size <= 0 or self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size "
                f"({self.batch_size}), both > 0"
            )
        if self.forward_batch_size is not None and self.forward_batch_size <= 0:
            raise ConfigError(f"forward_batch_size must be > 0, got {self.forward_batch_size}")
        micro = self.micro_batch_size
        if micro is not None and (micro <= 0 or self.mini_batch_size % micro):
            raise ConfigError(
                f"micro_batch_size ({micro}) must divide mini_batch_size ({self.mini_batch_size})"
            )

    def _check_sampling_and_penalties(self) -> None:
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                f"top_p must be in (0, 1] and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}"
            )
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be > 0 (or none for a fixed beta), got {self.kl_target}")
        if self.kl_penalty == "loss" and self.kl_estimator == "k1":
            raise ConfigError(
                "kl_penalty=loss needs kl_estimator k2 or k3: "
                "k1 has no gradient towards the reference in the loss"
            )
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("ptx_coef > 0 needs ptx_data (pretraining/SFT text for the ptx loss)")

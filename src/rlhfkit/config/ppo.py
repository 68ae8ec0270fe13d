"""The config of `rlhfkit ppo`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config.commands import BF16_HELP, COLUMNS_HELP, MODEL_DTYPE_HELP, ColumnsConfig, LoraConfig
from rlhfkit.config.options import (
    REPORT_TO_HELP,
    known_trackers,
    non_negative,
    one_of_choices,
    option,
    positive,
    reward_components,
    settle_precision,
    within,
)
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class PPOConfig:
    """`rlhfkit ppo`: the actor (from the SFT model) trained against a frozen reference by a clipped policy
    loss; scored by a frozen reward model, reward functions, or both; with a critic (`gae`) or a critic-free
    advantage estimator (`grpo`, `rloo`, `reinforce_pp`)."""

    policy: str = option(help="SFT model folder: initialises the actor and serves as the frozen reference")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    out: str = option(help="output folder for actor, critic, metrics.jsonl and samples.jsonl")
    reward_model: str | None = option(
        None,
        "reward model folder: frozen scorer, and the critic's initialisation when it reads the policy's "
        "tokens (one with another tokenizer or chat template scores re-encoded text); optional when "
        "`reward_functions` are given",
    )
    reward_functions: tuple[str, ...] = option(
        (),
        "Python rewards, `module:function` each: `(prompt, response) -> float`, or lists in and a list out "
        "when marked `@rlhfkit.batched`; `async def` functions run `reward_concurrency` calls at once",
    )
    reward_weights: tuple[float, ...] = option(
        (),
        "weight of each reward component, the reward model first when given, then `reward_functions` in "
        "order; () = 1 each. The score is their weighted sum",
    )
    reward_concurrency: int = option(
        16, "calls of an async reward function (and an async environment's `step`) in flight at once"
    )
    environment: str | None = option(
        None,
        "multi-turn episodes: `module:Class`, one object per episode made from the prompt's data row, with "
        "`step(response) -> (answer or None, reward)` and an optional `reset()` (docs/multiturn.md); its "
        "rewards suffice without a reward model or reward functions",
    )
    max_turns: int = option(4, "policy turns per episode at most (with `environment`)")
    max_episode_length: int = option(
        1024,
        "tokens of a whole episode (prompt, policy turns, environment answers) at most (with `environment`); "
        "a turn that reaches it is cut and ends the episode",
    )
    monitor_functions: tuple[str, ...] = option(
        (),
        "scores measured, never optimised: `module:function` each (the forms `reward_functions` take), "
        "logged as `monitor/<name>` on every held-out evaluation and in samples.jsonl",
    )
    monitor_models: tuple[str, ...] = option(
        (),
        "reward-model folders measured like `monitor_functions` (each reads the text with its own tokenizer; "
        "a gold RM), logged as `monitor/<folder name>`",
    )
    monitor_training: bool = option(
        False, "also compute the monitors on each training batch, logged as `monitor/train/<name>`"
    )
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_pp"] = option(
        "gae",
        "`gae` = PPO with a critic; critic-free: `grpo` (group-normalised scores), `rloo` (leave-one-out "
        "baseline), `reinforce_pp` (REINFORCE++: batch-whitened returns). All keep the KL penalty and the "
        "clipped policy loss",
    )
    samples_per_prompt: int = option(
        1, "responses sampled per prompt, grouped (GRPO and RLOO need >= 2); `batch_size` counts responses"
    )
    scale_rewards: bool = option(
        True,
        "GRPO: divide by the group's score std (False: only subtract the group mean; with "
        "`loss_aggregation=sequence_sum_norm` that is Dr. GRPO)",
    )
    rloo_baseline: Literal["sequence_reward", "score"] = option(
        "sequence_reward",
        "RLOO: what the leave-one-out baseline is taken of: `sequence_reward` = the score minus beta "
        "times the sequence's summed KL, the same advantage at every token with gamma=1 (Ahmadian et al. "
        "2024, TRL); "
        "`score` = the score alone, the per-token KL left in the rewards-to-go",
    )
    drop_uniform_groups: bool = option(
        False,
        "GRPO/RLOO: leave the groups whose scores are all equal (no task signal) out of the update (DAPO's "
        "dynamic sampling, without resampling); with the KL in the reward their advantages are not 0, and "
        "their KL signal is dropped with them (DAPO has no KL term); `policy/uniform_groups` logs their "
        "fraction",
    )
    loss_aggregation: Literal["token_mean", "sequence_mean", "sequence_sum_norm"] = option(
        "token_mean",
        "how the policy loss (and a KL in the loss) averages its tokens: `token_mean` over every token of "
        "the minibatch; `sequence_mean` each response's mean, then over responses (GRPO); "
        "`sequence_sum_norm` each response's sum / `response_length` (times `max_turns` with an "
        "`environment`), then over responses (Dr. GRPO)",
    )
    clip_high: float | None = option(
        None, "upper ratio clip: the ratio is clipped to [1 - clip, 1 + clip_high] (DAPO: 0.28); None = clip"
    )
    ratio_level: Literal["token", "sequence"] = option(
        "token",
        "`token` = a ratio per token; `sequence` = one per response, exp(mean log-ratio of its tokens) "
        "(GSPO = `sequence` with loss_aggregation=sequence_mean and a far tighter clip, clip=3e-4 "
        "clip_high=4e-4)",
    )
    critic_model: str | None = option(
        None,
        "where the critic starts (GAE only); None = the reward model when it shares the policy's tokenizer, "
        "else the policy with a new scalar head",
    )
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
        "`micro_batch_size` when set, else as many as keep one pass's logits within 1 GiB (usually the "
        "whole batch)",
    )
    padding_free: bool = option(
        False,
        "pack each pass's sequences into one row (position ids restart per sequence, attention kept within "
        "each sequence): no compute on padding; the same results to float rounding. The training passes and "
        "the experience's no-grad passes (old log-probs, values, reference log-probs, the RM's scores; the "
        "evaluation's policy passes stay padded). Needs models whose attention follows position ids "
        "(checked at start-up). Without flash attention (CPUs, sdpa) a packed row's attention grows with the "
        "square of its tokens: pack under `max_tokens_per_micro_batch`",
    )
    max_tokens_per_micro_batch: int | None = option(
        None,
        "fill each pass to at most this many tokens (real tokens with padding_free, rows x the batch's "
        "padded width without) instead of a fixed count of episodes: replaces `micro_batch_size` for the "
        "training passes and `forward_batch_size` for the no-grad ones; a longer episode is a pass of its "
        "own. None = the fixed counts",
    )
    ppo_epochs: int = option(4, "passes over each batch of experience")
    response_length: int = option(32, "maximum new tokens per response (per turn with an `environment`)")
    temperature: float = option(
        0.7, "sampling temperature; logits are divided by it wherever log-probs are taken"
    )
    top_k: int = option(0, "sample from the k most likely tokens (0 = off)")
    top_p: float = option(1.0, "nucleus sampling threshold (1.0 = off)")
    stop_tokens: tuple[str, ...] = option((), "stop strings besides EOS and the template's end of turn")
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
    gamma: float = option(
        1.0,
        "discount factor of GAE and of the critic-free estimators' rewards-to-go (with gamma < 1 a GRPO/RLOO "
        "response's tokens no longer share one advantage)",
    )
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
    bf16: bool | Literal["auto"] = option("auto", BF16_HELP)
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
    model_dtype: Literal["auto", "float32", "bfloat16"] = option("auto", MODEL_DTYPE_HELP)
    columns: ColumnsConfig = option(ColumnsConfig(), COLUMNS_HELP + "; for prompts and eval_prompts")
    ptx_columns: ColumnsConfig = option(
        ColumnsConfig(), "the same mapping for ptx_data, e.g. `ptx_columns.text=content`"
    )
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
        one_of_choices(
            self
        )  # the Literal fields, for a config built in Python (the command line checks them)
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
        self._check_rewards_and_estimator()
        self._check_policy_loss()
        settle_precision(self)

    def _check_rewards_and_estimator(self) -> None:
        if not self.reward_model and not self.reward_functions and not self.environment:
            raise ConfigError("give a reward_model, reward_functions, or both")
        positive(self, "max_turns")
        if self.environment and self.max_episode_length <= self.max_prompt_length:
            raise ConfigError(
                f"max_episode_length ({self.max_episode_length}) must be more than max_prompt_length "
                f"({self.max_prompt_length}): an episode needs room for the policy's turns"
            )
        reward_components(self)
        positive(self, "reward_concurrency", "samples_per_prompt")
        k = self.samples_per_prompt
        if self.batch_size % k:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt ({k})"
            )
        if self.advantage_estimator in ("grpo", "rloo") and k < 2:
            raise ConfigError(
                f"advantage_estimator={self.advantage_estimator} compares the samples of a prompt: set "
                f"samples_per_prompt >= 2 (got {k})"
            )
        if self.critic_model and self.advantage_estimator != "gae":
            raise ConfigError(
                "critic_model is used with advantage_estimator=gae only (a critic-free one is set)"
            )

    def _check_policy_loss(self) -> None:
        if self.clip_high is not None and self.clip_high < self.clip:
            raise ConfigError(
                f"clip_high ({self.clip_high}) must be >= clip ({self.clip}): it raises the ratio's upper "
                "bound (DAPO's clip-higher); none = clip"
            )
        if self.drop_uniform_groups and self.advantage_estimator not in ("grpo", "rloo"):
            raise ConfigError(
                "drop_uniform_groups leaves out groups whose group baseline is 0: use it with "
                f"advantage_estimator grpo or rloo (got {self.advantage_estimator})"
            )

    def _check_batches(self) -> None:
        if self.batch_size <= 0 or self.mini_batch_size <= 0 or self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size "
                f"({self.batch_size}), both > 0"
            )
        budget = self.max_tokens_per_micro_batch
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise ConfigError(f"max_tokens_per_micro_batch must be a positive integer or none, got {budget}")
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

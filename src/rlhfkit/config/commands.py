"""The configs of `sft`, `rm`, `label` and `eval` (and the optimiser section `sft`/`rm` share).

Each is a frozen dataclass documented field by field; `__post_init__` holds every range check, so a config
that exists is one the command can run with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

PROMPT_CUT = "maximum prompt tokens (cut from the left)"


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (AdamW), shared by `sft` and `rm`."""

    lr: float = option(2e-5, "peak learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    warmup_ratio: float = option(0.03, "fraction of the steps spent warming the learning rate up from 0")
    schedule: Literal["linear", "cosine", "constant"] = option("linear", "decay after the warm-up")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0 = no clipping)")

    def __post_init__(self) -> None:
        one_of_choices(self)
        non_negative(self, "lr", "weight_decay", "max_grad_norm")
        positive(self, "adam_eps")
        within(self, "warmup_ratio", 0, 1)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning: the base weights stay frozen (and may be bf16, see
    `model_dtype`); only the adapters, and a reward model's scalar head, are trained. Shared by `sft`, `rm`
    and `ppo`."""

    r: int = option(0, "adapter rank (0 = off: full fine-tuning)")
    alpha: float = option(16.0, "LoRA scaling numerator: the update is (alpha / r) * B @ A")
    dropout: float = option(
        0.0, "dropout on the adapters' input (sft/rm; PPO runs its roles in eval mode, so it is off there)"
    )
    target_modules: tuple[str, ...] = option(
        (),
        "module names to adapt, e.g. `lora.target_modules=q_proj,v_proj`; empty = every linear layer of "
        "attention and MLP (not the LM or scalar head)",
    )

    def __post_init__(self) -> None:
        one_of_choices(self)
        non_negative(self, "r")
        positive(self, "alpha")
        within(self, "dropout", 0, 1)

    @property
    def enabled(self) -> bool:
        return self.r > 0


COLUMN_HELP = "the column holding `{}` (empty = `{}`); several, comma-separated, are joined with a blank line"


@dataclass(frozen=True)
class ColumnsConfig:
    """Where each field of ours is in the user's rows: `columns.prompt=question`."""

    prompt: str = option("", COLUMN_HELP.format("prompt", "prompt"))
    completion: str = option("", COLUMN_HELP.format("completion", "completion"))
    chosen: str = option("", COLUMN_HELP.format("chosen", "chosen"))
    rejected: str = option("", COLUMN_HELP.format("rejected", "rejected"))
    messages: str = option("", COLUMN_HELP.format("messages", "messages"))
    text: str = option("", COLUMN_HELP.format("text", "text"))
    score_chosen: str = option("", COLUMN_HELP.format("score_chosen", "score_chosen"))
    score_rejected: str = option("", COLUMN_HELP.format("score_rejected", "score_rejected"))
    label: str = option(
        "", "a 0/1 column: 1 = the `chosen` column is preferred, 0 = the `rejected` one is (SHP's `labels`)"
    )


COLUMNS_HELP = (
    "where our fields are in your rows, e.g. `columns.prompt=question`, `columns.prompt=instruction,input` "
    "(joined with a blank line), `columns.label=labels` (0 swaps chosen and rejected)"
)
PADDING_FREE_HELP = (
    "pack each micro-batch's sequences into one row (position ids restart per sequence, attention kept "
    "within each sequence): no compute on padding; the same results to float rounding. Needs a model whose "
    "attention follows position ids (checked at start-up). Without flash attention (CPUs, sdpa) a packed "
    "row's attention grows with the square of its tokens: pack under `max_tokens_per_micro_batch`"
)
TOKEN_BUDGET_HELP = (
    "fill each micro-batch to at most this many tokens (real tokens with padding_free, rows x the longest "
    "row without; a pair's chosen and rejected stay together) instead of `grad_accum` equal parts; a longer "
    "example is a micro-batch of its own. Also sizes the no-grad passes (held-out; DPO's reference). "
    "None = `grad_accum`"
)
MODEL_DTYPE_HELP = (
    "dtype of the weights that are not trained (LoRA bases, PPO's frozen reference and reward model): "
    "float32, bfloat16, or auto = bfloat16 when the run computes in bf16 (`bf16`), float32 otherwise; "
    "trained weights, optimiser states, log-probs and losses stay float32"
)
BF16_HELP = (
    "bf16 autocast for forward passes (log-probs, scores and losses stay fp32): true, false, or auto = bf16 "
    "on a CUDA device that computes bf16 natively and on a CPU with native bf16 products (x86 avx512_bf16 "
    "or amx_bf16, arm bf16; elsewhere a short timing), where they are faster, fp32 otherwise (logged once; "
    "config.yaml records the choice). true on a CPU without them warns: it is slower there"
)


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
    padding_free: bool = option(False, PADDING_FREE_HELP)
    max_tokens_per_micro_batch: int | None = option(None, TOKEN_BUDGET_HELP)
    optim: OptimConfig = option(OptimConfig(), "optimiser settings, e.g. `optim.lr=1e-4`")
    eval_every: int = option(100, "evaluate on the held-out data every N steps (0 = only at the end)")
    save_every: int = option(
        0, "write a resumable checkpoint every N steps (0 = none; SIGINT/SIGTERM always write one)"
    )
    keep_checkpoints: int = option(2, "how many of the newest checkpoints to keep")
    resume: bool = option(False, "continue from the newest complete checkpoint in `out`")
    max_bad_steps: int = option(3, "stop after this many non-finite updates in a row (each is skipped)")
    seed: int = option(0, "random seed")
    bf16: bool | Literal["auto"] = option("auto", BF16_HELP)
    lora: LoraConfig = option(LoraConfig(), "LoRA adapters, e.g. `lora.r=16` (0 = full fine-tuning)")
    model_dtype: Literal["auto", "float32", "bfloat16"] = option("auto", MODEL_DTYPE_HELP)
    columns: ColumnsConfig = option(ColumnsConfig(), COLUMNS_HELP)
    overwrite: bool = option(False, "allow writing into a folder that holds a finished run")
    report_to: tuple[str, ...] = option((), REPORT_TO_HELP)

    def __post_init__(self) -> None:
        one_of_choices(self)
        positive(
            self, "max_length", "epochs", "batch_size", "grad_accum", "keep_checkpoints", "max_bad_steps"
        )
        known_trackers(self)
        if self.max_steps is not None:
            positive(self, "max_steps")
        budget = self.max_tokens_per_micro_batch
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise ConfigError(f"max_tokens_per_micro_batch must be a positive integer or none, got {budget}")
        non_negative(self, "eval_every", "save_every")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        settle_precision(self)


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
    stats_samples: int = option(
        2048, "chosen responses scored for the reward normalisation statistics PPO uses"
    )
    margin_from_scores: bool = option(
        False,
        "each pair's margin is `score_chosen - score_rejected` (UltraFeedback's columns; SHP's score_A/B "
        "through `columns.score_chosen`/`columns.score_rejected`) instead of a `margin` field",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "stats_samples")


@dataclass(frozen=True)
class LabelConfig:
    """`rlhfkit label`: sample two responses per prompt and let a gold function pick the preferred one; or,
    with `best_of`, keep the best of N samples per prompt as SFT data (rejection sampling)."""

    policy: str = option(help="model that samples the responses (usually the SFT model)")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    gold: str = option(
        help="gold reward: `module:function` (the forms `reward_functions` take), or a reward-model folder "
        "that reads each response with its own tokenizer"
    )
    out: str = option(help="output JSONL of {prompt, chosen, rejected} rows (SFT rows with `best_of`)")
    tau: float = option(0.1, "labeler noise: chosen with probability sigmoid((g1 - g2) / tau); 0 = perfect")
    pairs_per_prompt: int = option(1, "response pairs sampled for each prompt")
    batch_size: int = option(64, "prompts sampled at once")
    response_length: int = option(32, "maximum new tokens per response")
    temperature: float = option(1.0, "sampling temperature")
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "allow replacing an existing output file")
    columns: ColumnsConfig = option(ColumnsConfig(), COLUMNS_HELP + "; for prompts")
    max_prompt_length: int = option(1024, PROMPT_CUT)
    best_of: int = option(
        0,
        "0 = label pairs (the default); N >= 1 = rejection sampling: sample N responses per prompt, keep the "
        "one gold scores highest and write SFT rows ({prompt, completion}, or {messages} ending in the "
        "assistant's turn) for `rlhfkit sft`; `tau` and `pairs_per_prompt` do not apply",
    )

    def __post_init__(self) -> None:
        one_of_choices(self)
        non_negative(self, "tau", "best_of")
        positive(
            self, "pairs_per_prompt", "batch_size", "response_length", "temperature", "max_prompt_length"
        )
        if self.best_of and self.pairs_per_prompt != 1:
            raise ConfigError("pairs_per_prompt does not apply with best_of (one SFT row per prompt)")


@dataclass(frozen=True)
class EvalConfig:
    """`rlhfkit eval`: mean reward, KL to a reference, length and stop rate of a model on prompts; with
    `best_of`, of the best of N samples per prompt by the proxy reward (best-of-N sampling)."""

    model: str = option(help="model to evaluate")
    prompts: str = option(help="prompt data: {prompt} or {messages} rows")
    reward_model: str | None = option(None, "reward model folder to score with")
    reward_functions: tuple[str, ...] = option(
        (),
        "Python rewards to score with, `module:function` each, as `ppo` takes them (batched and async "
        "ones too); with the reward model they make the proxy reward `reward`",
    )
    reward_weights: tuple[float, ...] = option(
        (),
        "weight of each proxy component, the reward model first when given, then `reward_functions` in "
        "order; () = 1 each. `reward` is their weighted sum (the RM's raw score: no normalisation)",
    )
    reward_concurrency: int = option(16, "calls of an async reward function in flight at once")
    gold: str | None = option(
        None, "gold reward to measure with: `module:function`, or a reward-model folder (its raw score)"
    )
    best_of: int = option(
        1,
        "sample N responses per prompt and keep the one the proxy `reward` scores highest; every metric is "
        "of the kept responses. N > 1 needs a reward model or reward functions: gold only measures",
    )
    reference: str | None = option(None, "reference model for the KL (usually the SFT model)")
    environment: str | None = option(
        None,
        "multi-turn episodes, as `ppo`'s `environment` (`module:Class`): the model plays each prompt's "
        "episode; its rewards are reported as `env_reward` (docs/multiturn.md)",
    )
    max_turns: int = option(4, "policy turns per episode at most (with `environment`)")
    max_episode_length: int = option(2048, "tokens of a whole episode at most (with `environment`)")
    out: str | None = option(None, "write eval.json and samples.jsonl to this folder")
    response_length: int = option(32, "maximum new tokens per response")
    temperature: float = option(0.7, "sampling temperature (log-probs for the KL are taken at it too)")
    batch_size: int = option(64, "prompts sampled at once (best_of x batch_size responses)")
    seed: int = option(0, "random seed")
    columns: ColumnsConfig = option(ColumnsConfig(), COLUMNS_HELP + "; for prompts")
    max_prompt_length: int = option(1024, PROMPT_CUT)

    def __post_init__(self) -> None:
        one_of_choices(self)
        positive(
            self,
            "response_length",
            "batch_size",
            "temperature",
            "max_prompt_length",
            "best_of",
            "reward_concurrency",
        )
        components = reward_components(self)  # checks the functions and weights
        positive(self, "max_turns")
        if self.environment and self.best_of > 1:
            raise ConfigError("best_of > 1 picks among single responses; it does not apply to an environment")
        if self.environment and self.max_episode_length <= self.max_prompt_length:
            raise ConfigError(
                f"max_episode_length ({self.max_episode_length}) must be more than max_prompt_length "
                f"({self.max_prompt_length}): an episode needs room for the policy's turns"
            )
        if self.best_of > 1 and not components:
            # selecting by gold would optimise the measure itself: no over-optimisation left to see
            raise ConfigError(
                "best_of > 1 selects by a proxy: give --reward-model or --reward-function "
                "(gold only measures)"
            )

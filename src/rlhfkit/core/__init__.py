"""The RL math of rlhfkit: pure functions of tensors. Imports torch and nothing else of the package's
heavy dependencies (no transformers), so it can be used and tested on its own.

Shapes: B batch, T response positions, V vocabulary. A mask is True/1 at valid response tokens.
"""

from rlhfkit.core.advantages import (
    Estimator,
    RLOOBaseline,
    baselined_scores,
    discounted_returns,
    estimator_advantages,
    estimator_rewards,
    gae,
    group_normalised_scores,
    leave_one_out_scores,
    uniform_groups,
)
from rlhfkit.core.dpo import DPO_LOSSES, DPOLoss, best_and_worst, dpo_loss
from rlhfkit.core.kl import (
    AdaptiveKLController,
    FixedKLController,
    best_of_n_kl,
    kl_estimate,
    kl_shaped_rewards,
    last_valid_index,
    sequence_kl,
)
from rlhfkit.core.logprobs import (
    entropy_from_hidden,
    entropy_from_logits,
    logprobs_from_hidden,
    logprobs_from_logits,
)
from rlhfkit.core.losses import (
    Aggregation,
    RatioLevel,
    kl_penalty_loss,
    loss_count,
    masked_aggregate,
    pairwise_loss,
    ppo_policy_loss,
    ptx_loss,
    value_loss,
)
from rlhfkit.core.masked import explained_variance, masked_mean, masked_var, masked_whiten

__all__ = [
    "DPO_LOSSES",
    "DPOLoss",
    "AdaptiveKLController",
    "Aggregation",
    "Estimator",
    "FixedKLController",
    "RLOOBaseline",
    "RatioLevel",
    "baselined_scores",
    "best_and_worst",
    "best_of_n_kl",
    "discounted_returns",
    "dpo_loss",
    "entropy_from_hidden",
    "entropy_from_logits",
    "estimator_advantages",
    "estimator_rewards",
    "explained_variance",
    "gae",
    "group_normalised_scores",
    "kl_estimate",
    "kl_penalty_loss",
    "kl_shaped_rewards",
    "last_valid_index",
    "leave_one_out_scores",
    "logprobs_from_hidden",
    "logprobs_from_logits",
    "loss_count",
    "masked_aggregate",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pairwise_loss",
    "ppo_policy_loss",
    "ptx_loss",
    "sequence_kl",
    "uniform_groups",
    "value_loss",
]

"""PPO policy and value losses, the reward model's pairwise loss, and the pretraining (ptx) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.core.kl import kl_estimate
from rlhfkit.core.logprobs import logprobs_from_logits
from rlhfkit.core.masked import masked_mean, zero_masked


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: masked token mean of `max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip))`.

    All inputs (B, T). Returns (loss, stats); stats are detached 0-dim tensors: `clipfrac` (fraction of
    valid tokens where the clipped term is the larger, i.e. the gradient is cut), `approx_kl` (k3 estimate
    of KL(old || new) from the old policy's samples), `ratio_mean`, `ratio_var`, `ratio_sq_mean`.
    """
    # The log-ratio is zeroed at padding first: a NaN or inf there would otherwise reach logp's gradient
    # as 0 * inf = NaN; where() hands padding an exact 0 instead.
    log_ratio = zero_masked(logp - old_logp, mask)  # (B, T); ratio 1 at padding
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # ()
    with torch.no_grad():
        ratio_mean = masked_mean(ratio, mask)
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            # Samples come from the old policy, so KL(old || new) is the quantity k3 estimates without bias.
            "approx_kl": masked_mean(kl_estimate(old_logp, logp, "k3"), mask),
            "ratio_mean": ratio_mean,
            "ratio_var": masked_mean((ratio - ratio_mean) ** 2, mask),
            # a token mean like ratio_mean: summed over micro-batches by their token shares it gives the
            # whole batch's E[ratio^2], hence its variance E[ratio^2] - E[ratio]^2
            "ratio_sq_mean": masked_mean(ratio**2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`0.5 *` masked mean of `max((v - R)^2, (clip(v, v_old - clip, v_old + clip) - R)^2)`.

    All inputs (B, T). Returns (loss, stats) with `clipfrac`: fraction of valid tokens where the clipped
    error is the larger.
    """
    values = zero_masked(values, mask)  # (B, T); garbage at padding cannot reach the gradient
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)  # (B, T)
    unclipped_err = (values - returns) ** 2  # (B, T)
    clipped_err = (clipped_values - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)  # ()
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)}
    return loss, stats


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss for a reward model: mean of `-logsigmoid(chosen - rejected - margin)`.

    chosen, rejected, margin: (B,) scores. Returns (loss, accuracy), accuracy = fraction chosen > rejected.
    """
    diff = chosen - rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()  # ()
    accuracy = (chosen > rejected).to(chosen.dtype).mean().detach()  # ()
    return loss, accuracy


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token negative log-likelihood over `mask`.

    logits: (B, T, V) already aligned with labels: (B, T) (logits[:, t] predicts labels[:, t]).
    Labels at masked positions are ignored (they may hold -100).
    """
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))  # (B, T)
    return masked_mean(-logprobs_from_logits(logits, safe_labels), mask)  # ()

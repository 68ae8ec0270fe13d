"""PPO policy and value losses, the reward model's pairwise loss, and the pretraining (ptx) loss."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rlhfkit.core.kl import KLKind, kl_estimate
from rlhfkit.core.logprobs import logprobs_from_logits
from rlhfkit.core.masked import masked_mean, zero_masked

Aggregation = Literal["token_mean", "sequence_mean", "sequence_sum_norm"]
RatioLevel = Literal["token", "sequence"]


def _sequences(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) bool: rows with at least one valid token (an empty row is no sequence)."""
    return mask.bool().any(dim=-1)


def loss_count(mask: torch.Tensor, aggregation: Aggregation = "token_mean") -> torch.Tensor:
    """What a loss of `aggregation` divides by (0-dim): the valid tokens (`token_mean`) or the sequences with
    at least one valid token (`sequence_mean`, `sequence_sum_norm`). A micro-batch's loss weighted by its
    share of the whole batch's count, summed over micro-batches (and processes), is the whole batch's loss."""
    if aggregation == "token_mean":
        return mask.sum()
    if aggregation in ("sequence_mean", "sequence_sum_norm"):
        return _sequences(mask).sum()
    raise ValueError(
        f"unknown aggregation {aggregation!r}; expected 'token_mean', 'sequence_mean' or 'sequence_sum_norm'"
    )


def masked_aggregate(
    x: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation = "token_mean",
    normaliser: float | None = None,
) -> torch.Tensor:
    """A (B, T) per-token loss -> 0-dim, over valid positions:
    `token_mean`: the mean over every valid token of the batch (long sequences weigh more);
    `sequence_mean`: each sequence's token mean, then the mean over sequences (GRPO as published);
    `sequence_sum_norm`: each sequence's token sum / `normaliser` (default T, `mask`'s width), then the mean
    over sequences (Dr. GRPO: a constant, so no length bias).
    Sequences are the rows with at least one valid token; with none (or no valid token) the result is 0.
    """
    terms = zero_masked(x, mask)  # (B, T)
    count = loss_count(mask, aggregation).to(x.dtype).clamp(min=1)  # ()
    if aggregation == "token_mean":
        return terms.sum() / count
    if aggregation == "sequence_mean":
        per_sequence = masked_mean(x, mask, dim=-1)  # (B,), 0 for an empty row
    else:
        per_sequence = terms.sum(-1) / (mask.shape[-1] if normaliser is None else normaliser)  # (B,)
    return per_sequence.sum() / count


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
    aggregation: Aggregation = "token_mean",
    ratio_level: RatioLevel = "token",
    normaliser: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: `max(-A * r, -A * clip(r, 1 - clip, 1 + clip_high))` per token (`clip_high=None`
    = `clip`; larger is DAPO's clip-higher), aggregated by `masked_aggregate(aggregation, normaliser)`.
    `r = exp(logp - old_logp)` per token, or with `ratio_level="sequence"` (GSPO) one r per sequence,
    `exp(mean over its valid tokens of (logp - old_logp))`, differentiated as that expression.
    All inputs (B, T). Returns (loss, stats); stats are detached 0-dim token means over the valid tokens
    (whatever the aggregation): `clipfrac` (where the clipped term is the larger, i.e. the gradient is cut),
    `approx_kl` (k3 estimate of KL(old || new) per token, from the old policy's samples), and of the ratio
    the loss uses `ratio_mean`, `ratio_var`, `ratio_sq_mean`.
    """
    high = clip if clip_high is None else clip_high
    # The log-ratio is zeroed at padding first: a NaN or inf there would otherwise reach logp's gradient
    # as 0 * inf = NaN; where() hands padding an exact 0 instead.
    log_ratio = zero_masked(logp - old_logp, mask)  # (B, T); ratio 1 at padding
    if ratio_level == "sequence":
        # zeroed at padding again: garbage advantages there must not send a NaN back into the mean
        log_ratio = zero_masked(masked_mean(log_ratio, mask, dim=-1)[:, None].expand_as(log_ratio), mask)
    elif ratio_level != "token":
        raise ValueError(f"unknown ratio_level {ratio_level!r}; expected 'token' or 'sequence'")
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + high)  # (B, T)
    loss = masked_aggregate(torch.maximum(unclipped, clipped), mask, aggregation, normaliser)  # ()
    with torch.no_grad():
        ratio_mean = masked_aggregate(ratio, mask)
        stats = {
            "clipfrac": masked_aggregate((clipped > unclipped).to(ratio.dtype), mask),
            # Samples come from the old policy, so KL(old || new) is the quantity k3 estimates without bias.
            "approx_kl": masked_aggregate(kl_estimate(old_logp, logp, "k3"), mask),
            "ratio_mean": ratio_mean,
            "ratio_var": masked_aggregate((ratio - ratio_mean) ** 2, mask),
            # a token mean like ratio_mean: summed over micro-batches by their token shares it gives the
            # whole batch's E[ratio^2], hence its variance E[ratio^2] - E[ratio]^2
            "ratio_sq_mean": masked_aggregate(ratio**2, mask),
        }
    return loss, stats


def kl_penalty_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: KLKind = "k3",
    aggregation: Aggregation = "token_mean",
    normaliser: float | None = None,
) -> torch.Tensor:
    """The KL penalty placed in the loss (GRPO's placement): `kl_estimate(logp, ref_logp, kind)` per valid
    token, aggregated like the policy loss (`masked_aggregate`), with its gradient through `logp`.
    All inputs (B, T); returns 0-dim. Padded positions take `logp = ref_logp` (an estimate of 0) before the
    estimate: garbage there (d < -88) would make k3's exp(-d) inf, and the mask's where() would turn the
    backward's inf * 0 into a NaN gradient."""
    kl = kl_estimate(torch.where(mask.bool(), logp, ref_logp), ref_logp, kind)  # (B, T)
    return masked_aggregate(kl, mask, aggregation, normaliser)  # ()


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

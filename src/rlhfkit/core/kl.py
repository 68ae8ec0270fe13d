"""KL estimators, KL-shaped per-token rewards, and KL-coefficient controllers."""

from __future__ import annotations

import math
from typing import Literal

import torch

from rlhfkit.core.masked import zero_masked

KLKind = Literal["k1", "k2", "k3"]


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi; with d = logp - ref_logp:
    k1 = d (unbiased, can be negative), k2 = d^2 / 2, k3 = exp(-d) - 1 + d (unbiased and >= 0)."""
    d = logp - ref_logp  # (B, T)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")


def sequence_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: KLKind = "k1"
) -> torch.Tensor:
    """KL(pi || pi_ref) of each sampled sequence: the per-token estimate summed over valid tokens. -> (B,)"""
    return zero_masked(kl_estimate(logp, ref_logp, kind), mask).sum(-1)  # (B,)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base policy) per prompt, the analytic value `log n - (n - 1) / n` that Gao et al.
    (2022) use for best-of-n sampling (from Stiennon et al. 2020). Beirami et al. (2024) show it is an upper
    bound: exact when no two of the n samples can be the same response (so never tied), looser when the
    base policy puts much mass on a few responses. n = 1 gives 0 (the base policy itself)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of each row's last valid position; -1 for a row with none."""
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    return torch.where(mask.bool(), positions, -1).amax(dim=-1)  # (B,)


def kl_shaped_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards `-kl_coef * kl`, plus `scores[b]` at the last valid token of row b.

    scores: (B,); logp, ref_logp, mask: (B, T). Returns (rewards, kl), both (B, T) and 0 where masked.
    """
    kl = zero_masked(kl_estimate(logp, ref_logp, kind), mask)  # (B, T)
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    is_last = positions == last_valid_index(mask)[:, None]  # (B, T), all False for an empty row
    rewards = -kl_coef * kl + is_last.to(kl.dtype) * scores.to(kl.dtype)[:, None]  # (B, T)
    return rewards, kl


class FixedKLController:
    """A KL coefficient that never changes; the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""


class AdaptiveKLController:
    """Ziegler et al. (2019): steer the KL towards `target` with a proportional controller.

    `err = clip(current_kl / target - 1, -0.2, 0.2)`, then `value *= 1 + err * n_steps / horizon`, where
    `n_steps` is the number of episodes in the batch that produced `current_kl`.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

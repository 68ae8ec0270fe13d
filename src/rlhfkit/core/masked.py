"""Reductions over valid positions. A mask is True (or 1) at valid tokens, False (0) at padding."""

from __future__ import annotations

import torch


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where instead of x * mask: a NaN or inf at a padded position must not leak into the
    # result or into the gradient (0 * inf is NaN; where() sends the padded positions a zero gradient).
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is true.

    x, mask: same shape (e.g. (B, T)). With `dim=None` returns a 0-dim tensor; otherwise the mean along
    `dim` (a row with no valid position gives 0).
    """
    weights = mask.to(x.dtype)
    if dim is None:
        return zero_masked(x, mask).sum() / weights.sum()
    return zero_masked(x, mask).sum(dim) / weights.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over valid positions (0-dim). `unbiased` applies Bessel's correction n/(n-1)."""
    mean = masked_mean(x, mask)  # ()
    var = masked_mean((x - mean) ** 2, mask)  # ()
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 valid positions, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`(x - mean) * rsqrt(var + 1e-8)` with masked mean and unbiased masked variance.
    x, mask: same shape (e.g. (B, T)); returns that shape. With `shift_mean=False` the mean is added back, so
    only the scale changes. Padded positions are 0.

    Valid values without spread (fewer than 2 of them, or all equal) have no scale to divide by, and none is
    needed: each one's distance to the mean is 0, whatever the scale. So the result is exactly 0 at valid
    positions (the values themselves with `shift_mean=False`), and not the rounding residue of a float mean
    divided by sqrt(1e-8); a batch holding one response token (`batch_size=1`, `response_length=1`, or a
    response that is only its stop token) is well defined (docs/ppo-details.md #15).
    """
    if not _has_spread(x, mask):  # x - x rather than zeros: a NaN or inf stays visible (as NaN)
        return zero_masked(x - x if shift_mean else x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)  # (), ()
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # same shape as x
    if not shift_mean:
        whitened = whitened + mean
    return zero_masked(whitened, mask)


def _has_spread(x: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the valid values of `x` (any shape, `mask` alike) are at least 2 and not all equal."""
    valid = x[mask.bool()]  # (n,)
    return valid.numel() >= 2 and bool((valid != valid[0]).any())


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`1 - Var(returns - values) / Var(returns)` over valid positions (0-dim): 1 for a perfect critic, 0 for
    one no better than the mean return, negative for a worse one. NaN (undefined, logged as such) with fewer
    than 2 valid positions: one value has no variance to explain."""
    if mask.bool().sum() < 2:
        return torch.tensor(float("nan"), dtype=returns.dtype, device=returns.device)
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)

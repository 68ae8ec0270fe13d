"""Gao, Schulman & Hilton (2022)'s functional forms of gold reward against d = √KL(π ‖ π_init): pure
functions that fit them by least squares and find a curve's peak.

    best-of-N:  R(d) = d·(α − β·d)        (peaks at d* = α / (2β))
    RL:         R(d) = d·(α − β·ln d)     (peaks at d* = exp(α/β − 1))

R is the gold reward's gain over the initial policy's (Gao et al. fit rewards that are 0 at the initial
policy), so a point's gain is its gold minus the gold at d = 0. Both forms are linear in (α, β): least squares
on the features (d, −d²) or (d, −d·ln d), no intercept. Every point with d > 0 is used, those with d ≤ 1
included (d·ln d is defined there, and tends to 0 as d → 0, so the RL form passes through the origin as the
BoN form does); a point at d = 0 has both features 0 and adds nothing but the origin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Form = Literal["bon", "rl"]


def features(d: float, form: Form) -> tuple[float, float]:
    """The two features whose weights are α and β: R(d) = α·f1 + β·f2."""
    if form == "bon":
        return d, -d * d
    return d, (-d * math.log(d) if d > 0 else 0.0)


def gold_curve(d: float, alpha: float, beta: float, form: Form) -> float:
    """R(d) of the form with parameters α, β."""
    f1, f2 = features(d, form)
    return alpha * f1 + beta * f2


def fit(kl: Sequence[float], gain: Sequence[float], form: Form) -> tuple[float, float] | None:
    """(α, β) of the least-squares fit of `gain` (gold minus the initial policy's) against d = √kl; None
    when the points cannot fix two parameters (fewer than two with d > 0, or features that are collinear)."""
    rows = [(features(math.sqrt(max(k, 0.0)), form), g) for k, g in zip(kl, gain, strict=True) if k > 0]
    if len(rows) < 2:
        return None
    # normal equations of y ≈ α·f1 + β·f2: [[Σf1², Σf1f2], [Σf1f2, Σf2²]] (α, β) = (Σf1·y, Σf2·y)
    a = sum(f1 * f1 for (f1, _), _ in rows)
    b = sum(f1 * f2 for (f1, f2), _ in rows)
    c = sum(f2 * f2 for (_, f2), _ in rows)
    u = sum(f1 * y for (f1, _), y in rows)
    v = sum(f2 * y for (_, f2), y in rows)
    det = a * c - b * b
    if abs(det) <= 1e-12 * max(a * c, 1e-300):
        return None
    return (c * u - b * v) / det, (a * v - b * u) / det


def fitted_peak(alpha: float, beta: float, form: Form) -> float | None:
    """The d > 0 where the fitted curve is highest, or None when it never turns down (β <= 0) or only falls
    from the start (α <= 0 for the best-of-N form: its highest point is d = 0)."""
    if beta <= 0 or (form == "bon" and alpha <= 0):
        return None
    return alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)


def peak(kl: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """The measured point of highest gold: {"gold": g, "kl": k} (the first of equal ones)."""
    best = max(range(len(gold)), key=lambda i: (gold[i], -i))
    return {"gold": gold[best], "kl": kl[best]}

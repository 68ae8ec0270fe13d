"""The report's "Over-optimisation" section: gold and proxy reward against d = √KL for every method on one
pair of charts (Gao, Schulman & Hilton 2022), the fitted gold curves, each method's peak, and a table.

A study is {method: method_study(...)}: for each method, in training order (N order for best-of-N),

    {"kl": [...], "gold": [...], "proxy": [...], "n": [...] (best-of-N only),
     "fit": {"alpha": a, "beta": b, "form": "bon" | "rl"} or None, "peak": {"gold": g, "kl": k}}

`kl` is the KL to the initial (SFT) policy in nats per response, `gold` the gold reward (the task's scale),
`proxy` the proxy reward (the reward model's scale).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from rlhfkit.report import fits
from rlhfkit.report.page import STYLE, _figure, _svg

# A first point whose KL is at most this is the initial policy: the fit's origin. (Policy and reference are
# the same weights there, so its KL is 0 up to float error.)
INITIAL_KL = 1e-3
# a colour per method in the study's order, the same in both charts (tab10's: distinct for a handful of lines)
LEGEND_COLUMNS = 4
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
READING = (
    "Each line is one method, each marker one held-out measurement, from the initial policy (left, √KL = 0) "
    "to the most optimised (right). The x-axis is d = √KL to the initial policy, as in Gao et al. (2022), "
    "where both forms of the gold reward are simple: best-of-N d(α − βd), RL d(α − β ln d) (dashed, fitted "
    "to each method's gold gain). Over-optimisation is the gold reward peaking (★) and then falling while "
    "the proxy, the reward the method optimises, keeps rising: past the peak the policy buys proxy reward "
    "with what the reward model gets wrong. Compare methods at equal √KL: the higher gold curve gets more "
    "true reward per nat of drift."
)


def method_study(
    kl: Sequence[float],
    gold: Sequence[float],
    proxy: Sequence[float],
    form: str,
    n: Sequence[int] | None = None,
    initial_gold: float | None = None,
) -> dict[str, Any]:
    """One method's entry of a study from its P points (kl, gold, proxy: (P,) each; n: (P,) for best-of-N).

    The fit is of the gold gain over the initial policy (fits.py) against √kl: over the first point when it
    is the initial policy (kl <= INITIAL_KL), else over `initial_gold` (the initial policy's gold measured
    apart, kept as "initial_gold"); with neither, or with points that cannot fix α and β, "fit" is None.
    "peak" is the measured point of highest gold."""
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    if not kl or not len(kl) == len(gold) == len(proxy) or (n is not None and len(n) != len(kl)):
        raise ValueError(f"need as many kl, gold, proxy (and n) values, at least one: {len(kl)}, {len(gold)}")
    study: dict[str, Any] = {"kl": list(kl), "gold": list(gold), "proxy": list(proxy)}
    if n is not None:
        study["n"] = list(n)
    fitted, base = None, gold[0] if kl[0] <= INITIAL_KL else initial_gold
    if kl[0] > INITIAL_KL and initial_gold is not None:
        study["initial_gold"] = initial_gold
    if base is not None:
        fitted = fits.fit(kl, [g - base for g in gold], form)  # type: ignore[arg-type]
    study["fit"] = None if fitted is None else {"alpha": fitted[0], "beta": fitted[1], "form": form}
    study["peak"] = fits.peak(kl, gold)
    return study


def _roots(values: Sequence[float]) -> list[float]:
    """√ of each KL (a slightly negative estimate counts as 0)."""
    return [math.sqrt(max(v, 0.0)) for v in values]


def _fitted_line(method: dict[str, Any], points: int = 60) -> tuple[list[float], list[float]]:
    """The fitted gold curve over [0, the method's largest d]: the initial policy's gold plus the fitted
    gain."""
    fit, top = method["fit"], max(_roots(method["kl"]))
    base = method.get("initial_gold", method["gold"][0])
    ds = [top * i / (points - 1) for i in range(points)]
    return ds, [base + fits.gold_curve(d, fit["alpha"], fit["beta"], fit["form"]) for d in ds]


def _layout(fig: Any, ax: Any, entries: int) -> None:
    """Both charts the same size with their axes at the same place and the legend under the axes, never
    over the points: side by side, the two SVGs then scale alike (a tight bounding box would crop each to
    its own labels). `entries`: the longer legend's, so both reserve the same rows."""
    rows = math.ceil(entries / LEGEND_COLUMNS)
    width, height = 5.6, 3.3 + 0.2 * rows  # inches
    below = 0.62 + 0.2 * rows  # tick labels and the x label, then the legend's rows
    left, right = 0.8 / width, 1 - 0.15 / width
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=left, right=right, top=1 - 0.32 / height, bottom=below / height)
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="upper center",  # both legends' first rows level, under the x labels
        bbox_to_anchor=((left + right) / 2, (0.2 * rows + 0.1) / height),
        ncol=LEGEND_COLUMNS,
        fontsize=8,
        frameon=False,
    )


def charts(study: dict[str, dict[str, Any]]) -> list[str]:
    """Two SVGs: gold against √KL (points, fitted curves, peaks) and proxy against √KL (points, and the
    proxy where gold peaked)."""
    gold_fig, gold_ax = _figure("Gold reward vs √KL", "√KL to the initial policy (√nats)", "gold reward")
    proxy_fig, proxy_ax = _figure(
        "Proxy reward vs √KL", "√KL to the initial policy (√nats)", "proxy reward (RM)"
    )
    for i, (name, method) in enumerate(study.items()):
        colour, ds = COLOURS[i % len(COLOURS)], _roots(method["kl"])
        style = {"color": colour, "marker": "o", "markersize": 4, "linewidth": 0.9}
        gold_ax.plot(ds, method["gold"], label=name, **style)
        proxy_ax.plot(ds, method["proxy"], label=name, **style)
        if method["fit"] is not None:
            gold_ax.plot(*_fitted_line(method), color=colour, linestyle="--", linewidth=1.2, alpha=0.8)
        best = method["gold"].index(method["peak"]["gold"])  # the point fits.peak chose (its first)
        star = {"marker": "*", "s": 170, "color": colour, "edgecolors": "black", "linewidths": 0.6}
        gold_ax.scatter([ds[best]], [method["gold"][best]], zorder=3, **star)
        proxy_ax.scatter([ds[best]], [method["proxy"][best]], zorder=3, **star)
    # legend-only entries for the marks every method shares
    for ax, extra in ((gold_ax, ("fitted (Gao et al.)", "gold peak")), (proxy_ax, (None, "at gold peak"))):
        if extra[0]:
            ax.plot([], [], color="#555", linestyle="--", label=extra[0])
        ax.scatter([], [], marker="*", s=120, color="white", edgecolors="black", label=extra[1])
    _layout(gold_fig, gold_ax, len(study) + 2)
    _layout(proxy_fig, proxy_ax, len(study) + 2)
    return [_svg(gold_fig, tight=False), _svg(proxy_fig, tight=False)]


def _num(value: float | None, digits: int = 3) -> str:
    return '<td class="num">–</td>' if value is None else f'<td class="num">{value:.{digits}f}</td>'


def peak_row(name: str, method: dict[str, Any]) -> str:
    """One table row: method, peak gold, KL at peak, final gold / proxy / KL, α, β, fitted peak d*."""
    fit = method["fit"] or {}
    d_star = fits.fitted_peak(fit["alpha"], fit["beta"], fit["form"]) if fit else None
    best = method["gold"].index(method["peak"]["gold"])
    notes = [f"N = {method['n'][best]}"] if "n" in method else []
    if best == len(method["gold"]) - 1 and len(method["gold"]) > 1:
        notes.append("peak at the last point: not seen to fall")  # a lower bound on the true peak
    if "initial_gold" in method and fit:
        notes.append(f"fit over the initial policy's gold {method['initial_gold']:.3f}, measured apart")
    if d_star is not None and d_star > max(_roots(method["kl"])):
        notes.append("d* beyond the points: extrapolated")
    cells = [
        _num(method["peak"]["gold"]),
        _num(method["peak"]["kl"], 2),
        _num(method["gold"][-1]),
        _num(method["proxy"][-1]),
        _num(method["kl"][-1], 2),
        _num(fit.get("alpha")),
        _num(fit.get("beta")),
        _num(d_star, 2),
        _num(None if d_star is None else d_star * d_star, 2),
    ]
    form = f" [{fit['form']} form]" if fit else " [no fit]"
    note = f'<br><span class="note">{html.escape("; ".join(notes))}</span>' if notes else ""
    return f"<tr><td>{html.escape(name)}{form}{note}</td>{''.join(cells)}</tr>"


def peak_table(study: dict[str, dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "method",
            "peak gold",
            "KL at peak",
            "final gold",
            "final proxy",
            "final KL",
            "α",
            "β",
            "fitted d*",
            "fitted KL* = d*²",
        )
    )
    return f"<table><tr>{head}</tr>{''.join(peak_row(n, m) for n, m in study.items())}</table>"


def section(study: dict[str, dict[str, Any]]) -> str:
    """The "Over-optimisation" section: a paragraph, the two charts side by side, the table of peaks."""
    figures = "".join(f'<div class="plot">{svg}</div>' for svg in charts(study))
    note = (
        "KL in nats per response. α, β: the fit of the gold gain over the initial policy; d* = √KL where the "
        "fitted curve peaks (– when it never turns down, or no fit: fewer than two points past the initial "
        "policy, or the initial policy's gold unknown)."
    )
    return (
        f'<h2 id="over-optimisation">Over-optimisation</h2><p>{html.escape(READING)}</p>'
        f'<div class="plots">{figures}</div>{peak_table(study)}<p class="sub">{html.escape(note)}</p>'
    )


def page(study: dict[str, dict[str, Any]], runs: Sequence[str]) -> str:
    """A whole page (`rlhfkit report`): a title, the folders read, and the section."""
    listed = "".join(f"<li><code>{html.escape(r)}</code></li>" for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rlhfkit report: over-optimisation</title>
<style>{STYLE}</style></head>
<body>
<h1>rlhfkit report: over-optimisation</h1>
<p class="sub">Gold and proxy reward against KL to the initial policy, from {len(runs)} folder(s):</p>
<ul>{listed}</ul>
{section(study)}
</body></html>
"""

"""report.html: one self-contained page (inline SVG, no scripts, no network) a person can read at a glance."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1180px; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
.cards { display: flex; gap: 0.8rem; flex-wrap: wrap; margin: 1.2rem 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 0.7rem 1rem; min-width: 150px; }
.card b { display: block; font-size: 1.5rem; } .card span { color: #666; font-size: 0.85rem; }
.good b { color: #1a7f37; } .bad b { color: #b42318; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.plot { border: 1px solid #eee; border-radius: 8px; padding: 0.5rem; }
.plot svg { width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; margin-top: 0.6rem; }
th, td { border-bottom: 1px solid #eee; padding: 0.4rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pos { color: #1a7f37; } .neg { color: #b42318; }
.note { color: #666; font-size: 0.8rem; }
"""


def _svg(fig: Any, tight: bool = True) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight" if tight else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG is inlined in HTML


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plots(curves: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    ppo, evaluations = curves["ppo"], curves["ppo_evaluations"]
    steps = [m["step"] for m in ppo]
    figures = []

    fig, ax = _figure("Reward during PPO (held-out evaluations)", "PPO iteration", "mean reward")
    eval_steps = list(evaluations)
    ax.plot(
        eval_steps, [e["gold"] for e in evaluations.values()], "o-", label="gold (VADER)", color="#1a7f37"
    )
    ax.plot(
        eval_steps,
        [e["proxy"] for e in evaluations.values()],
        "s--",
        label="proxy (learned RM, normalised)",
        color="#6e40c9",
    )
    ax.plot(
        steps,
        [m["objective/scores"] for m in ppo],
        color="#6e40c9",
        alpha=0.25,
        label="proxy, training batches",
    )
    ax.legend(fontsize=8)
    figures.append(_svg(fig))

    fig, ax = _figure("KL from the SFT model", "PPO iteration", "KL (nats per response)")
    ax.plot(steps, [m["objective/kl"] for m in ppo], color="#0969da", label="training batches")
    ax.plot(
        [m["step"] for m in ppo if "eval/kl" in m],
        [m["eval/kl"] for m in ppo if "eval/kl" in m],
        "o",
        color="#0969da",
        label="held-out evaluations",
    )
    ax.legend(fontsize=8)
    figures.append(_svg(fig))

    fig, ax = _figure("Reward-KL frontier (one point per evaluation)", "KL to SFT (nats)", "gold reward")
    kls = {m["step"]: m["eval/kl"] for m in ppo if "eval/kl" in m}
    points = [(step, kls[step], e["gold"]) for step, e in evaluations.items() if step in kls]
    dots = ax.scatter(
        [p[1] for p in points], [p[2] for p in points], c=[p[0] for p in points], cmap="viridis"
    )
    fig.colorbar(dots, ax=ax, label="PPO iteration")
    ax.scatter([0.0], [summary["gold_reward_sft"]], marker="*", s=160, color="#999", label="SFT (KL 0)")
    ax.legend(fontsize=8, loc="lower right")
    figures.append(_svg(fig))

    if len(curves.get("algorithms", {})) > 1:
        figures += algorithm_plots(curves["algorithms"], summary["gold_reward_sft"])

    fig, ax = _figure("Reward model", "RM step", "")
    rm = curves["rm"]
    ax.plot([m["step"] for m in rm], [m["loss"] for m in rm], color="#bf8700", label="training loss")
    evals = [m for m in rm if "eval/accuracy" in m]
    ax.plot(
        [m["step"] for m in evals],
        [m["eval/accuracy"] for m in evals],
        "o-",
        color="#1a7f37",
        label="held-out accuracy vs gold",
    )
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    figures.append(_svg(fig))

    fig, ax = _figure("SFT", "SFT step", "loss (nats per token)")
    sft = curves["sft"]
    ax.plot([m["step"] for m in sft], [m["loss"] for m in sft], color="#bf8700", label="training loss")
    evals = [m for m in sft if "eval/loss" in m]
    ax.plot(
        [m["step"] for m in evals], [m["eval/loss"] for m in evals], "o-", color="#0969da", label="held-out"
    )
    ax.legend(fontsize=8)
    figures.append(_svg(fig))

    fig, ax = _figure("Response length and stop rate", "PPO iteration", "tokens")
    ax.plot(steps, [m["response/length_mean"] for m in ppo], color="#57606a", label="mean length")
    ax2 = ax.twinx()
    ax2.plot(steps, [m["response/stop_rate"] for m in ppo], color="#cf222e", alpha=0.6, label="stop rate")
    ax2.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    figures.append(_svg(fig))
    return figures


def algorithm_plots(runs: dict[str, list[dict[str, float]]], sft_gold: float) -> list[str]:
    """Gold reward of each algorithm's held-out evaluations against KL to the SFT model and against training
    time: which buys more true reward per nat of drift, and per second."""
    figures = []
    for key, title, xlabel in (
        ("kl", "Algorithms: gold reward vs KL", "KL to SFT (nats)"),
        ("seconds", "Algorithms: gold reward vs training time", "training seconds"),
    ):
        fig, ax = _figure(title, xlabel, "gold reward (held-out)")
        for name, points in runs.items():
            ax.plot([p[key] for p in points], [p["gold"] for p in points], "o-", label=name, markersize=3)
        ax.axhline(sft_gold, color="#999", linestyle=":", label="SFT")
        ax.legend(fontsize=8)
        figures.append(_svg(fig))
    return figures


def algorithm_table(summary: dict[str, Any]) -> str:
    """The final held-out numbers of each algorithm (empty with one)."""
    runs = summary.get("algorithms", {})
    if len(runs) < 2:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>{_score(r['gold_reward'])}{_score(r['gold_gain'])}"
        f'<td class="num">{r["kl_to_sft"]:.2f}</td><td class="num">{r["length"]:.1f}</td>'
        f'<td class="num">{r["train_seconds"]:.0f}</td></tr>'
        for name, r in runs.items()
    )
    return (
        "<h2>Algorithms from the same SFT model and RM</h2><table><tr><th>algorithm</th><th>gold</th>"
        f"<th>gold gain</th><th>KL to SFT</th><th>length</th><th>training s</th></tr>{body}</table>"
    )


def _card(label: str, value: str, tone: str = "") -> str:
    return f'<div class="card {tone}"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _score(value: float) -> str:
    return f'<td class="num {"pos" if value > 0.05 else "neg" if value < -0.05 else ""}">{value:+.2f}</td>'


def sample_table(results: dict[str, Any], main: str = "ppo", rows: int = 24) -> str:
    sft, ppo = results["sft"]["samples"], results[main]["samples"]
    body = "".join(
        f"<tr><td>{html.escape(a['prompt'])}</td><td>{html.escape(a['response'])}</td>{_score(a['gold'])}"
        f"<td>{html.escape(b['response'])}</td>{_score(b['gold'])}</tr>"
        for a, b in zip(sft[:rows], ppo[:rows], strict=True)
    )
    return (
        "<table><tr><th>held-out prompt</th><th>SFT completion</th><th>gold</th>"
        f"<th>{html.escape(main.upper())} completion</th>"
        f"<th>gold</th></tr>{body}</table>"
    )


def overoptimisation_section(summary: dict[str, Any]) -> str:
    """The "Over-optimisation" section when the summary holds a study (empty otherwise)."""
    if not summary.get("overoptimisation"):
        return ""
    from rlhfkit.report.overoptimisation import section  # it draws with this module's helpers

    return section(summary["overoptimisation"])


def write_report(
    path: Path, summary: dict[str, Any], curves: dict[str, Any], results: dict[str, Any], main: str = "ppo"
) -> None:
    # the first algorithm's results sit at the top level under its own name (jobs/demo.py `summarise`)
    gold, proxy, name = summary[f"gold_reward_{main}"], summary[f"proxy_reward_{main}"], main.upper()
    gain = gold - summary["gold_reward_sft"]
    cards = "".join(
        [
            _card(
                f"gold reward, SFT → {name}",
                f"{summary['gold_reward_sft']:+.2f} → {gold:+.2f}",
                "good" if gain > 0 else "bad",
            ),
            _card(f"proxy (RM) reward, SFT → {name}", f"{summary['proxy_reward_sft']:+.2f} → {proxy:+.2f}"),
            _card(f"KL of {name} from SFT (nats / response)", f"{summary['kl_to_sft']:.2f}"),
            _card("RM held-out accuracy vs gold", f"{summary['rm_accuracy']:.1%}"),
            _card("labeler agreement with gold", f"{summary['label_agreement']:.1%}"),
            _card("wall time", f"{summary['wall_seconds'] / 60:.1f} min"),
        ]
    )
    figures = "".join(f'<div class="plot">{svg}</div>' for svg in plots(curves, summary))
    study = overoptimisation_section(summary)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rlhfkit demo report</title><style>{STYLE}</style></head>
<body>
<h1>rlhfkit demo: RLHF on a simulated human</h1>
<p class="sub">Task: continue short reviews. A programmatic gold reward (VADER sentiment) plays the human
labeler;
PPO only ever sees the reward model learned from its noisy labels. Seed {summary["seed"]}.</p>
<div class="cards">{cards}</div>
{study}<div class="plots">{figures}</div>
{algorithm_table(summary)}
<h2>Held-out prompts: SFT and {html.escape(main.upper())} side by side</h2>
{sample_table(results, main)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")

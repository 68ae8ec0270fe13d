"""The config of `rlhfkit report`: which finished runs to read, which of their metrics are gold and proxy."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config.options import option
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class ReportConfig:
    """`rlhfkit report RUN [RUN ...]`: the over-optimisation charts (gold and proxy reward against √KL to the
    initial policy, Gao et al. 2022's fits, each method's peak) of finished runs, as one HTML page."""

    runs: tuple[str, ...] = option(
        (),
        "the folders to read (positional): finished `ppo` and `dpo` runs (their held-out evaluations: "
        "`eval/kl` and the monitors) and `eval --best-of N` output folders (one eval.json each; together "
        "they make one best-of-N curve, in N order)",
    )
    gold: str | None = option(
        None,
        "the monitor that is the gold reward, as logged without its `monitor/` prefix (None = the monitor "
        "named `gold`, else a run's only monitor); eval folders always use their `gold`",
    )
    proxy: str = option(
        "eval/score",
        "the metric of a ppo/dpo run's held-out evaluations that is the proxy reward: `eval/score` (what "
        "PPO optimises) or a monitor's name; eval folders always use their `reward`",
    )
    out: str = option("report.html", "the HTML file to write (replaced if it exists)")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError("give the run folders to read: rlhfkit report RUN [RUN ...]")
        if not self.out.endswith((".html", ".htm")):
            raise ConfigError(f"out must name an .html file, got {self.out!r}")
        if self.gold is not None and not self.gold:
            raise ConfigError("gold must name a monitor")

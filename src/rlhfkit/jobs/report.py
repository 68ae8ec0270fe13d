"""`rlhfkit report`: the over-optimisation study of the user's own finished runs, as one HTML page.

A `ppo` or `dpo` run folder gives one method: a point per held-out evaluation (records of metrics.jsonl with
`eval/kl`), gold from a monitor (`monitor/<gold>`), proxy from `eval/score` or a monitor. `eval` output
folders (eval.json) together give one best-of-N method, a point per folder in N order, at the analytic KL of
best-of-N (`kl_best_of_n`; a folder without `best_of` is N = 1, KL 0: the initial policy itself).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlhfkit.config.report import ReportConfig
from rlhfkit.errors import UsageError
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import RUN_FILE, read_run_file

MONITOR = "monitor/"
TRAIN = "monitor/train/"  # the monitors of the training batches (`monitor_training`): not held-out values


def pick_gold(monitors: list[str], wanted: str | None, folder: Path) -> str:
    """The monitor that is the gold: `wanted`, else one named `gold`, else the only one."""
    if wanted is not None:
        if wanted not in monitors:
            raise UsageError(f"{folder}: no monitor {wanted!r} (it logs {', '.join(monitors) or 'none'})")
        return wanted
    if "gold" in monitors or len(monitors) == 1:
        return "gold" if "gold" in monitors else monitors[0]
    if not monitors:
        raise UsageError(
            f"{folder}: no monitor to use as the gold reward; train with one (monitor_functions=MODULE:FN "
            "or monitor_models=RM_FOLDER)"
        )
    raise UsageError(f"{folder}: several monitors ({', '.join(monitors)}); choose the gold with gold=NAME")


def number(value: Any, what: str, folder: Path) -> float:
    """`value` as a finite float, or a UsageError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{folder}: {what} is {value!r}, not a finite number")
    return float(value)


def training_points(folder: Path, config: ReportConfig) -> dict[str, list[float]]:
    """{kl, gold, proxy}: one value per held-out evaluation of a finished ppo/dpo run, in step order."""
    metrics = folder / "metrics.jsonl"
    try:
        records = [r for r in read_metrics(metrics) if "eval/kl" in r] if metrics.is_file() else []
    except json.JSONDecodeError as exc:
        raise UsageError(f"{metrics}: not JSON lines ({exc})") from None
    if not records:
        raise UsageError(f"{folder}: no held-out evaluations (records with eval/kl) in {metrics.name}")
    monitors = sorted(
        {
            k.removeprefix(MONITOR)
            for r in records
            for k in r
            if k.startswith(MONITOR) and not k.startswith(TRAIN)
        }
    )
    gold = MONITOR + pick_gold(monitors, config.gold, folder)
    proxy = config.proxy if config.proxy in records[0] else MONITOR + config.proxy
    for key in (gold, proxy):
        missing = next((r["step"] for r in records if key not in r), None)
        if missing is not None:
            raise UsageError(f"{folder}: the evaluation at step {missing} has no {key} (see proxy=, gold=)")
    return {
        key: [number(r[metric], metric, folder) for r in records]
        for key, metric in (("kl", "eval/kl"), ("gold", gold), ("proxy", proxy))
    }


def best_of_point(folder: Path) -> dict[str, float]:
    """{n, kl, gold, proxy} of one `eval` output folder."""
    try:
        result = json.loads((folder / "eval.json").read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{folder}: eval.json is not JSON ({exc})") from None
    if "gold" not in result:
        raise UsageError(f"{folder}: eval.json has no gold reward (evaluate with --gold)")
    n = int(result.get("best_of", 1))
    # best-of-1 is the sampling policy itself: it is the initial policy only when its measured KL to the
    # reference (with --reference) is 0; an evaluation of a trained policy is not a point of this study
    if n == 1 and abs(result.get("kl", 0.0)) > 1e-6:
        raise UsageError(
            f"{folder}: an eval of a policy at KL {result['kl']:.3g} from its reference, not the initial "
            "policy's (best-of-1) nor a best-of-N; leave it out"
        )
    kl = result.get("kl_best_of_n", 0.0) if n > 1 else 0.0
    return {
        "n": n,
        "kl": number(kl, "kl_best_of_n", folder),
        "gold": number(result["gold"], "gold", folder),
        "proxy": number(result.get("reward"), "reward (the proxy)", folder),
    }


def method_name(folder: Path, taken: dict[str, Any]) -> str:
    """The folder's name, or parent/name when another run already has it (a UsageError when that is taken
    too, or is `bon`, the name of the best-of-N curve)."""
    name = folder.resolve().name
    name = name if name not in taken else f"{folder.resolve().parent.name}/{name}"
    if name in taken or name == "bon":
        raise UsageError(f"{folder}: two runs would both be named {name!r} in the report; rename a folder")
    return name


def read_study(config: ReportConfig) -> dict[str, dict[str, Any]]:
    """{method: method_study(...)}: each ppo/dpo run in the order given, then `bon` from the eval folders."""
    from rlhfkit.report.overoptimisation import method_study

    trained: dict[str, dict[str, list[float]]] = {}
    best_of: list[dict[str, float]] = []
    for run in config.runs:
        folder = Path(run)
        record = read_run_file(folder) if (folder / RUN_FILE).is_file() else {}
        if record.get("command") in ("ppo", "dpo") and record.get("finished"):
            trained[method_name(folder, trained)] = training_points(folder, config)
        elif (folder / "eval.json").is_file():
            best_of.append(best_of_point(folder))
        else:
            raise UsageError(
                f"{folder} is not a finished ppo or dpo run (rlhfkit.json) nor an eval output folder "
                "(eval.json)"
            )
    # best-of-1 is the initial policy: its gold is the origin of the fits of runs that never evaluated it
    initial = next((p["gold"] for p in best_of if p["n"] == 1), None)
    study = {
        name: method_study(**points, form="rl", initial_gold=initial) for name, points in trained.items()
    }
    if best_of:
        best_of.sort(key=lambda p: p["n"])
        ns = [int(p["n"]) for p in best_of]
        if len(set(ns)) < len(ns):
            raise UsageError(f"two eval folders with the same best_of N (N = {ns}): one per N")
        points = {k: [p[k] for p in best_of] for k in ("kl", "gold", "proxy")}
        study["bon"] = method_study(**points, form="bon", n=ns)
    return study


def report(config: ReportConfig) -> Path:
    """Read every folder (any bad one: UsageError, nothing written), then write the page to `config.out`."""
    out = Path(config.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name an .html file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}")
    study = read_study(config)
    from rlhfkit.report.overoptimisation import page

    out.write_text(page(study, list(config.runs)), encoding="utf-8")
    return out

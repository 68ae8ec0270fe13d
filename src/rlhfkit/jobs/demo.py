"""`rlhfkit demo`: the whole pipeline on the bundled simulated-human task, measured with the gold reward.

1. tokenizer + tiny model (or SmolLM2)  2. SFT  3. label pairs sampled from the SFT model with the noisy gold
labeler  4. reward model (held-out accuracy against gold preferences)  5. each algorithm asked for: PPO
(and GRPO, RLOO, REINFORCE++) and online DPO against the learned RM, offline DPO on the labelled pairs,
best-of-N of the SFT model by the RM; the gold reward and the RM watch every held-out evaluation as monitors
(never part of a reward)  6. evaluate SFT and each trained policy on held-out prompts with the gold scorer
and the RM  7. the over-optimisation study (gold and proxy against KL, Gao et al.'s fits), summary.json,
report.html
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhfkit.config import DemoConfig, EvalConfig, to_dict
from rlhfkit.config.demo import ESTIMATORS
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import begin, check_output, read_run_file, write_run_file
from rlhfkit.tasks.sentiment import gold, sentiment_task

GOLD = "rlhfkit.tasks.sentiment:gold"
STAGES = 7
SAMPLED = (*ESTIMATORS, "online_dpo")  # the algorithms that train on their own samples (PPO's curves apply)


def say(step: int, text: str) -> None:
    print(f"[{step}/{STAGES}] {text}", flush=True)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def base_model(config: DemoConfig, texts: list[str], folder: Path) -> str:
    """Step 1: a tokenizer trained on the task's text and a tiny Llama, or the SmolLM2 folder."""
    from rlhfkit.models import smollm2, tiny_llama, train_tokenizer

    if config.preset == "smollm2":
        return str(smollm2())
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
    model = tiny_llama(tokenizer, config.hidden_size, config.num_layers, config.num_heads, seed=config.seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def gold_by_evaluation(samples_file: Path) -> dict[int, dict[str, float]]:
    """Mean gold and proxy score of PPO's evaluation samples, per evaluation step."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for line in samples_file.read_text().splitlines():
        sample = json.loads(line)
        groups[sample["step"]].append(sample)
    return {
        step: {
            "gold": sum(gold(s["prompt"], s["response"]) for s in rows) / len(rows),
            "proxy": sum(s["score"] for s in rows) / len(rows),
        }
        for step, rows in sorted(groups.items())
    }


def demo_folders(out: str, overwrite: bool) -> tuple[Path, Path]:
    """(the output folder, its `data` folder) of a demo, checked and begun (a finished run is replaced only
    with `overwrite`): every demo writes its stages into one folder."""
    folder = Path(out)
    check_output(folder, overwrite)
    begin(folder, None)
    (folder / "data").mkdir(exist_ok=True)
    return folder, folder / "data"


def demo(config: DemoConfig) -> Path:
    """Run every stage into `config.out`; returns the folder holding summary.json and report.html."""
    from rlhfkit.algorithms.dpo import dpo
    from rlhfkit.algorithms.ppo import ppo
    from rlhfkit.algorithms.reward import train_reward_model
    from rlhfkit.algorithms.sft import sft
    from rlhfkit.jobs.evaluate import evaluate
    from rlhfkit.jobs.label import label
    from rlhfkit.report import write_report

    out, data = demo_folders(config.out, config.overwrite)
    started = time.perf_counter()
    task = sentiment_task(config.demonstrations, config.eval_prompts, config.seed)
    sft_data = write_jsonl(data / "sft.jsonl", task.demonstrations)
    prompts = write_jsonl(data / "prompts.jsonl", [{"prompt": p} for p in task.train_prompts])
    eval_prompts = write_jsonl(data / "eval_prompts.jsonl", [{"prompt": p} for p in task.eval_prompts])
    common: dict[str, Any] = dict(seed=config.seed, overwrite=True)

    say(1, f"base model ({config.preset})")
    texts = [d["prompt"] + d["completion"] for d in task.demonstrations] + task.eval_prompts
    base = base_model(config, texts, out / "base")

    say(2, "SFT on the demonstrations")
    # each stage is its section of the demo config with the demo's wiring filled in (the placeholders)
    sft_config = replace(
        config.sft, model=base, data=sft_data, out=str(out / "sft"), bf16=config.bf16, **common
    )
    sft_dir = str(sft(sft_config))

    say(3, "the simulated human labels pairs sampled from the SFT model")
    label_config = replace(
        config.label,
        policy=sft_dir,
        prompts=prompts,
        gold=GOLD,
        out=str(data / "preferences.jsonl"),
        **common,
    )
    labeling = label(label_config)
    # held-out pairs labeled by the gold ordering itself (tau 0): the RM's accuracy is measured against them
    gold_pairs_config = replace(
        label_config,
        prompts=eval_prompts,
        out=str(data / "gold_preferences.jsonl"),
        tau=0.0,
        pairs_per_prompt=2,
        seed=config.seed + 1,
    )
    label(gold_pairs_config)

    say(4, "reward model on the labeled pairs")
    rm_config = replace(
        config.rm,
        model=sft_dir,
        data=label_config.out,
        eval_data=gold_pairs_config.out,
        out=str(out / "rm"),
        bf16=config.bf16,
        **common,
    )
    rm_dir = str(train_reward_model(rm_config))
    rm_accuracy = read_run_file(rm_dir)["final"]["eval/accuracy"]

    runs: dict[str, dict[str, Any]] = {}
    watch = {"monitor_functions": (GOLD,), "monitor_models": (rm_dir,)}  # gold and the RM, at evaluations
    for algorithm in config.algorithms:
        say(5, f"{algorithm.upper()}" + (" of the SFT model" if algorithm == "bon" else ""))
        tick = time.perf_counter()
        if algorithm == "bon":
            runs[algorithm] = {"points": best_of_n(config, sft_dir, rm_dir, eval_prompts, out / "bon")}
        else:
            stage = stage_config(config, algorithm, sft_dir, rm_dir, label_config.out, prompts, eval_prompts)
            stage = replace(stage, out=str(out / algorithm), bf16=config.bf16, **watch, **common)
            folder = ppo(stage) if algorithm in ESTIMATORS else dpo(stage)
            model = folder / "actor" if algorithm in ESTIMATORS else folder
            runs[algorithm] = {"folder": folder, "config": stage, "model": str(model)}
        runs[algorithm]["seconds"] = time.perf_counter() - tick
    main = next((a for a in config.algorithms if a in SAMPLED), config.algorithms[0])
    sampling = runs[main]["config"] if main in SAMPLED else config.ppo

    say(6, "evaluation of SFT and each trained policy on held-out prompts (gold and learned reward)")
    results = {}
    models = [("sft", sft_dir)] + [(a, run["model"]) for a, run in runs.items() if "model" in run]
    for name, model in models:
        eval_config = EvalConfig(
            model=model,
            prompts=eval_prompts,
            reward_model=rm_dir,
            reference=sft_dir,
            response_length=sampling.response_length,  # evaluated as PPO samples
            temperature=sampling.temperature,
            seed=config.seed,
            out=str(out / f"eval_{name}"),
        )
        results[name] = evaluate(eval_config, gold=gold)
    if "bon" in runs:  # its largest N stands for it: the kept samples, the KL bound as its KL
        results["bon"] = runs["bon"]["points"][-1]["result"]

    say(7, "the over-optimisation study, summary.json and report.html")
    stats = read_run_file(rm_dir)["reward_stats"]
    summary = {
        **summarise(results, {n: run["seconds"] for n, run in runs.items()}, rm_accuracy, labeling, main),
        "overoptimisation": study(runs, results["sft"]["metrics"], stats, rm_dir),
        "wall_seconds": time.perf_counter() - started,
        "seed": config.seed,
        "config": {
            "demo": to_dict(config),
            "sft": to_dict(sft_config),
            "label": to_dict(label_config),
            "rm": to_dict(rm_config),
            **{name: to_dict(run["config"]) for name, run in runs.items() if "config" in run},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    trained = [name for name in runs if name != "bon"]
    write_report(out / "report.html", summary, curves(out, trained, main), results, main)
    write_run_file(out, "demo", config, summary={k: v for k, v in summary.items() if k != "config"})
    return out


def kl_to_sft(metrics: dict[str, float]) -> float:
    """An evaluation's KL to the SFT model: measured, or best-of-N's analytic bound (0 for N = 1)."""
    return metrics["kl"] if "kl" in metrics else metrics.get("kl_best_of_n", 0.0)


def summarise(
    results: dict[str, dict],
    seconds: dict[str, float],
    rm_accuracy: float,
    labeling: dict[str, Any],
    main: str,
) -> dict[str, Any]:
    """summary.json's numbers from the evaluations `results` (of `sft` and of each algorithm, in the order
    asked) and each algorithm's training `seconds`. `algorithm` names `main`; its results are also at the top
    level, named after it (`gold_reward_ppo`, or `gold_reward_grpo` when GRPO is the main one), as are
    `kl_to_sft` and `gold_gain`, which are its own; `algorithms` holds every algorithm's (best-of-N's: its
    largest N, with the analytic KL bound as its KL)."""
    sft = results["sft"]["metrics"]
    first = results[main]["metrics"]
    return {
        "algorithm": main,
        "gold_reward_sft": sft["gold"],
        f"gold_reward_{main}": first["gold"],
        "proxy_reward_sft": sft["reward"],
        f"proxy_reward_{main}": first["reward"],
        "rm_accuracy": rm_accuracy,
        "kl_to_sft": kl_to_sft(first),
        "label_agreement": labeling["label_agreement"],
        "labeled_pairs": labeling["pairs"],
        "length_sft": sft["length"],
        f"length_{main}": first["length"],
        "algorithms": {
            name: {
                "gold_reward": results[name]["metrics"]["gold"],
                "gold_gain": results[name]["metrics"]["gold"] - sft["gold"],
                "proxy_reward": results[name]["metrics"]["reward"],
                "kl_to_sft": kl_to_sft(results[name]["metrics"]),
                "length": results[name]["metrics"]["length"],
                "train_seconds": took,
            }
            for name, took in seconds.items()
        },
        "gold_gain": first["gold"] - sft["gold"],
    }


def stage_config(
    config: DemoConfig, algorithm: str, sft_dir: str, rm_dir: str, pairs: str, prompts: str, eval_prompts: str
) -> Any:
    """The section of `algorithm` with the demo's wiring: PPO's family against the RM on the prompts, offline
    DPO on the labelled pairs, online DPO against the RM on the prompts; each evaluated on the held-out
    prompts."""
    if algorithm in ESTIMATORS:
        section = config.stage3(algorithm)
        return replace(
            section, policy=sft_dir, reward_model=rm_dir, prompts=prompts, eval_prompts=eval_prompts
        )
    if algorithm == "dpo":
        return replace(config.dpo, model=sft_dir, data=pairs, eval_prompts=eval_prompts)
    return replace(
        config.online_dpo, model=sft_dir, prompts=prompts, reward_model=rm_dir, eval_prompts=eval_prompts
    )


def best_of_n(config: DemoConfig, sft_dir: str, rm_dir: str, eval_prompts: str, out: Path) -> list[dict]:
    """Best-of-N of the SFT model by the RM on the held-out prompts, N = 1, 2, 4, ... `bon_max`: one
    evaluation each, sampled as PPO samples."""
    from rlhfkit.jobs.evaluate import evaluate

    ns = [2**i for i in range(config.bon_max.bit_length()) if 2**i <= config.bon_max]
    points = []
    for n in ns:
        eval_config = EvalConfig(
            model=sft_dir,
            prompts=eval_prompts,
            reward_model=rm_dir,
            best_of=n,
            response_length=config.ppo.response_length,
            temperature=config.ppo.temperature,
            seed=config.seed,
            out=str(out / f"n{n}"),
        )
        points.append({"n": n, "result": evaluate(eval_config, gold=gold)})
    return points


def study(
    runs: dict[str, dict], sft: dict[str, float], stats: dict[str, float], rm_dir: str
) -> dict[str, dict]:
    """summary.json's `overoptimisation`: for each algorithm, held-out gold, proxy (the RM's score,
    normalised by its saved statistics) and KL to the SFT model, from the SFT model (KL 0) on: at every
    evaluation along training (the monitors' means), or per N for best-of-N (its analytic KL bound); with
    Gao et al.'s fit (`rlhfkit.report.fits`) and the peak."""
    from rlhfkit.algorithms.ppo.rewards.scale import saved_scale
    from rlhfkit.report.overoptimisation import method_study

    proxy = saved_scale(stats)  # as PPO normalises the RM's scores

    rm = f"monitor/{Path(rm_dir).name}"
    found = {}
    for name, run in runs.items():
        kl, gold_, proxies, ns = [0.0], [sft["gold"]], [proxy(sft["reward"])], None
        if name == "bon":
            metrics = [p["result"]["metrics"] for p in run["points"]]  # N = 1 first: the SFT model's own
            kl = [m.get("kl_best_of_n", 0.0) for m in metrics]  # log N − (N − 1)/N; 0 for N = 1
            gold_, proxies = [m["gold"] for m in metrics], [proxy(m["reward"]) for m in metrics]
            ns = [p["n"] for p in run["points"]]
        else:
            for record in read_metrics(Path(run["folder"]) / "metrics.jsonl"):
                if "eval/kl" in record:
                    kl.append(record["eval/kl"])
                    gold_.append(record["monitor/gold"])
                    proxies.append(proxy(record[rm]))
        found[name] = method_study(kl, gold_, proxies, "bon" if name == "bon" else "rl", ns)
    return found


def curves(out: Path, algorithms: list[str], main: str) -> dict[str, Any]:
    """Everything the report plots, read back from the stages' files: the main algorithm's run in detail
    (when it trains on its own samples), and each trained algorithm's held-out gold reward by KL and by
    training time."""
    runs = {name: read_metrics(out / name / "metrics.jsonl") for name in algorithms}
    detailed = main in SAMPLED
    return {
        "sft": read_metrics(out / "sft" / "metrics.jsonl"),
        "rm": read_metrics(out / "rm" / "metrics.jsonl"),
        "ppo": runs[main] if detailed else None,
        "ppo_evaluations": gold_by_evaluation(out / main / "samples.jsonl") if detailed else {},
        "algorithms": {name: frontier(metrics) for name, metrics in runs.items()},
    }


def frontier(metrics: list[dict]) -> list[dict[str, float]]:
    """One point per held-out evaluation of a run: its gold reward (the gold monitor), KL to the SFT model,
    and the training seconds spent up to it (evaluations left out: the step's own timings, or one over its
    steps per second where it logs none)."""
    seconds, points = 0.0, []
    for m in metrics:
        seconds += sum(v for k, v in m.items() if k.startswith("time/")) or 1 / m["steps_per_s"]
        if "eval/kl" in m:
            points.append({"kl": m["eval/kl"], "gold": m["monitor/gold"], "seconds": seconds})
    return points

"""`rlhfkit demo`: the whole pipeline on the bundled simulated-human task, measured with the gold reward.

1. tokenizer + tiny model (or SmolLM2)  2. SFT  3. label pairs sampled from the SFT model with the noisy gold
labeler  4. reward model (held-out accuracy against gold preferences)  5. PPO (and each other algorithm asked
for: GRPO, RLOO, REINFORCE++) against the learned RM  6. evaluate SFT and each trained policy on held-out
prompts with the gold scorer and the RM  7. summary.json + report.html
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhfkit.config import DemoConfig, EvalConfig, to_dict
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import begin, check_output, read_run_file, write_run_file
from rlhfkit.tasks.sentiment import gold, sentiment_task

GOLD = "rlhfkit.tasks.sentiment:gold"
STAGES = 7


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


def demo(config: DemoConfig) -> Path:
    """Run every stage into `config.out`; returns the folder holding summary.json and report.html."""
    from rlhfkit.algorithms.ppo import ppo
    from rlhfkit.algorithms.reward import train_reward_model
    from rlhfkit.algorithms.sft import sft
    from rlhfkit.jobs.evaluate import evaluate
    from rlhfkit.jobs.label import label
    from rlhfkit.report import write_report

    out = Path(config.out)
    check_output(out, config.overwrite)
    started = time.perf_counter()
    begin(out, None)
    data = out / "data"
    data.mkdir(exist_ok=True)
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
    for algorithm in config.algorithms:
        say(5, f"{algorithm.upper()} against the learned reward model")
        ppo_config = replace(
            config.stage3(algorithm),
            policy=sft_dir,
            reward_model=rm_dir,
            prompts=prompts,
            eval_prompts=eval_prompts,
            out=str(out / algorithm),
            bf16=config.bf16,
            **common,
        )
        tick = time.perf_counter()
        folder = ppo(ppo_config)
        runs[algorithm] = {"folder": folder, "config": ppo_config, "seconds": time.perf_counter() - tick}
    main = config.algorithms[0]
    ppo_config = runs[main]["config"]

    say(6, "evaluation of SFT and each trained policy on held-out prompts (gold and learned reward)")
    results = {}
    models = [("sft", sft_dir)] + [(a, str(run["folder"] / "actor")) for a, run in runs.items()]
    for name, model in models:
        eval_config = EvalConfig(
            model=model,
            prompts=eval_prompts,
            reward_model=rm_dir,
            reference=sft_dir,
            response_length=ppo_config.response_length,  # evaluated as PPO samples
            temperature=ppo_config.temperature,
            seed=config.seed,
            out=str(out / f"eval_{name}"),
        )
        results[name] = evaluate(eval_config, gold=gold)

    say(7, "summary.json and report.html")
    summary = {
        **summarise(results, {name: run["seconds"] for name, run in runs.items()}, rm_accuracy, labeling),
        "wall_seconds": time.perf_counter() - started,
        "seed": config.seed,
        "config": {
            "demo": to_dict(config),
            "sft": to_dict(sft_config),
            "label": to_dict(label_config),
            "rm": to_dict(rm_config),
            **{name: to_dict(run["config"]) for name, run in runs.items()},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out / "report.html", summary, curves(out, list(runs)), results, main)
    write_run_file(out, "demo", config, summary={k: v for k, v in summary.items() if k != "config"})
    return out


def summarise(
    results: dict[str, dict], seconds: dict[str, float], rm_accuracy: float, labeling: dict[str, Any]
) -> dict[str, Any]:
    """summary.json's numbers from the evaluations `results` (of `sft` and of each algorithm, in the order
    asked) and each algorithm's training `seconds`. `algorithm` names the first algorithm; its results are
    also at the top level, named after it (`gold_reward_ppo`, or `gold_reward_grpo` when GRPO came first),
    as are `kl_to_sft` and `gold_gain`, which are its own; `algorithms` holds every algorithm's."""
    main, sft = next(iter(seconds)), results["sft"]["metrics"]
    first = results[main]["metrics"]
    return {
        "algorithm": main,
        "gold_reward_sft": sft["gold"],
        f"gold_reward_{main}": first["gold"],
        "proxy_reward_sft": sft["reward"],
        f"proxy_reward_{main}": first["reward"],
        "rm_accuracy": rm_accuracy,
        "kl_to_sft": first["kl"],
        "label_agreement": labeling["label_agreement"],
        "labeled_pairs": labeling["pairs"],
        "length_sft": sft["length"],
        f"length_{main}": first["length"],
        "algorithms": {
            name: {
                "gold_reward": results[name]["metrics"]["gold"],
                "gold_gain": results[name]["metrics"]["gold"] - sft["gold"],
                "proxy_reward": results[name]["metrics"]["reward"],
                "kl_to_sft": results[name]["metrics"]["kl"],
                "length": results[name]["metrics"]["length"],
                "train_seconds": took,
            }
            for name, took in seconds.items()
        },
        "gold_gain": first["gold"] - sft["gold"],
    }


def curves(out: Path, algorithms: list[str]) -> dict[str, Any]:
    """Everything the report plots, read back from the stages' files: the first algorithm's run in detail,
    and each algorithm's held-out gold reward by KL and by training time."""
    runs = {name: read_metrics(out / name / "metrics.jsonl") for name in algorithms}
    return {
        "sft": read_metrics(out / "sft" / "metrics.jsonl"),
        "rm": read_metrics(out / "rm" / "metrics.jsonl"),
        "ppo": runs[algorithms[0]],
        "ppo_evaluations": gold_by_evaluation(out / algorithms[0] / "samples.jsonl"),
        "algorithms": {
            name: frontier(metrics, out / name / "samples.jsonl") for name, metrics in runs.items()
        },
    }


def frontier(metrics: list[dict], samples_file: Path) -> list[dict[str, float]]:
    """One point per held-out evaluation of a run: its gold reward, KL to the SFT model, and the training
    seconds spent up to it (rollout, scoring and updates; evaluations left out)."""
    golds, seconds, points = gold_by_evaluation(samples_file), 0.0, []
    for m in metrics:
        seconds += m["time/rollout"] + m["time/score"] + m["time/train"]
        if "eval/kl" in m and m["step"] in golds:
            points.append({"kl": m["eval/kl"], "gold": golds[m["step"]]["gold"], "seconds": seconds})
    return points

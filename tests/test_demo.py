"""A reduced demo (a few steps of every stage): the files, the summary keys, finite numbers."""

import json
import math

from helpers import SMALL_DEMO
from rlhfkit.cli import main
from rlhfkit.config import SET_BY_DEMO, DemoConfig, load_config

SMALL = SMALL_DEMO
# SMALL with the demo's section names (the flat ones above are their old aliases)
SMALL_DOTTED = [
    *SMALL[:5],
    "sft.epochs=2",
    "label.pairs_per_prompt=1",
    "rm.epochs=1",
    "ppo.max_steps=4",
    "ppo.batch_size=8",
    "ppo.mini_batch_size=4",
    "ppo.ppo_epochs=1",
    "label.response_length=8",
    "ppo.response_length=8",
    "ppo.eval_every=2",
]
KEYS = [
    "gold_reward_sft",
    "gold_reward_ppo",
    "proxy_reward_sft",
    "proxy_reward_ppo",
    "rm_accuracy",
    "kl_to_sft",
    "label_agreement",
    "wall_seconds",
    "seed",
]


def test_reduced_demo_writes_summary_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--algorithms", "ppo", *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in KEYS:
        assert math.isfinite(summary[key]), key
    assert summary["seed"] == 0
    assert set(summary["config"]) == {"demo", "sft", "label", "rm", "ppo"}
    assert summary["config"]["ppo"]["max_steps"] == 4
    stages = {k: v for k, v in summary["config"].items() if k != "demo"}
    assert SET_BY_DEMO not in json.dumps(stages)  # the demo filled in every field it wires
    assert summary["config"]["sft"]["seed"] == 0 and summary["config"]["rm"]["bf16"] is False
    report = (out / "report.html").read_text()
    # six plots, and the over-optimisation section's two charts
    assert report.count("<svg") == 8 and "SFT completion" in report and "PPO completion" in report
    for folder in ("sft", "rm", "ppo/actor", "ppo/critic"):
        assert (out / folder / "config.json").is_file(), folder
    assert "report.html" in capsys.readouterr().out
    # a finished demo folder is refused without --overwrite
    assert main(["demo", "--out", str(out), *SMALL]) == 2


def test_dotted_names_configure_the_same_reduced_demo():
    assert SMALL[:5] == [
        "demonstrations=800",
        "eval_prompts=16",
        "vocab_size=400",
        "hidden_size=64",
        "num_layers=2",
    ]
    dotted = load_config(DemoConfig, overrides=SMALL_DOTTED)
    assert dotted == load_config(DemoConfig, overrides=SMALL)
    assert (dotted.ppo.max_steps, dotted.label.response_length, dotted.ppo.response_length) == (4, 8, 8)


def test_the_demo_compares_algorithms_from_the_same_sft_and_rm(tmp_path, capsys):
    """`--algorithms ppo,grpo,rloo`: stage 3 once per algorithm, each evaluated, the report compares them."""
    out = tmp_path / "three"
    assert main(["demo", "--out", str(out), "--algorithms", "grpo,ppo,rloo", "group_size=2", *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["algorithms"]) == ["grpo", "ppo", "rloo"]
    for name, run in summary["algorithms"].items():
        assert math.isfinite(run["gold_reward"]) and run["train_seconds"] > 0, name
        assert summary["config"][name]["policy"] == summary["config"]["ppo"]["policy"]  # the same SFT model
    assert summary["config"]["grpo"]["advantage_estimator"] == "grpo"
    assert summary["config"]["rloo"]["samples_per_prompt"] == 2
    # the first algorithm's results at the top level are named after it (GRPO's here, not PPO's)
    assert summary["algorithm"] == "grpo" and "gold_reward_ppo" not in summary
    assert summary["gold_reward_grpo"] == summary["algorithms"]["grpo"]["gold_reward"]
    assert summary["kl_to_sft"] == summary["algorithms"]["grpo"]["kl_to_sft"]
    assert (out / "grpo" / "actor").is_dir() and not (out / "grpo" / "critic").exists()
    report = (out / "report.html").read_text()
    # eight plots (two comparing the algorithms), and the over-optimisation section's two charts
    assert report.count("<svg") == 10 and "Algorithms from the same SFT model and RM" in report
    assert "gold reward, SFT → GRPO" in report and "GRPO completion" in report
    printed = capsys.readouterr().out
    assert "(GRPO) at KL" in printed and "PPO: gold reward" in printed and "RLOO: gold reward" in printed


def test_unknown_or_repeated_algorithms_are_refused(tmp_path, capsys):
    for bad in ("ppo,dqn", "grpo,grpo"):
        assert main(["demo", "--out", str(tmp_path / "x"), "--algorithms", bad]) == 2
        assert "algorithms must be distinct names among" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_summary_names_the_first_algorithms_results_after_it():
    """GRPO first: its numbers at the top level are `*_grpo` (not `*_ppo`), and `kl_to_sft`/`gold_gain` are
    its own. Values exact in binary: gain 0.25 - (-0.5) = 0.75."""
    from rlhfkit.jobs.demo import summarise

    def metrics(gold, reward, kl, length):
        return {"metrics": {"gold": gold, "reward": reward, "kl": kl, "length": length}}

    results = {
        "sft": metrics(-0.5, 0.0, 0.0, 10.0),
        "grpo": metrics(0.25, 1.5, 2.0, 12.0),
        "ppo": metrics(0.5, 3.0, 4.0, 14.0),
    }
    labeling = {"label_agreement": 0.875, "pairs": 64}
    summary = summarise(results, {"grpo": 30.0, "ppo": 50.0}, 0.75, labeling, "grpo")
    assert summary["algorithm"] == "grpo"
    assert (summary["gold_reward_grpo"], summary["proxy_reward_grpo"], summary["length_grpo"]) == (
        0.25,
        1.5,
        12.0,
    )
    assert not [key for key in summary if key.endswith("_ppo")]
    assert (summary["kl_to_sft"], summary["gold_gain"]) == (2.0, 0.75)
    assert summary["algorithms"]["ppo"] == {
        "gold_reward": 0.5, "gold_gain": 1.0, "proxy_reward": 3.0, "kl_to_sft": 4.0, "length": 14.0,
        "train_seconds": 50.0,
    }  # fmt: skip
    assert (summary["rm_accuracy"], summary["label_agreement"], summary["labeled_pairs"]) == (0.75, 0.875, 64)


def test_the_study_follows_every_method_along_training(tmp_path):
    """`--algorithms ppo,dpo,online_dpo,bon`: held-out gold, proxy and KL from the SFT model (KL 0) on, at
    every evaluation of each trained method and per N of best-of-N, with Gao et al.'s fit and the peak; the
    report draws them."""
    out = tmp_path / "study"
    settings = [
        *("dpo.epochs=2", "dpo.batch_size=4", "dpo.eval_every=2", "dpo.response_length=8"),
        *("online_dpo.max_steps=4", "online_dpo.eval_every=2", "online_dpo.batch_size=8"),
        *("online_dpo.response_length=8", "bon_max=4"),
    ]
    assert main(["demo", "--out", str(out), "--algorithms", "ppo,dpo,online_dpo,bon", *settings, *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    study = summary["overoptimisation"]
    assert list(study) == ["ppo", "dpo", "online_dpo", "bon"]
    sft_gold = summary["gold_reward_sft"]
    for name, curve in study.items():
        assert len(curve["kl"]) == len(curve["gold"]) == len(curve["proxy"]) >= 3, name
        assert curve["kl"][0] == 0.0 and curve["gold"][0] == sft_gold, name  # every curve starts at SFT
        assert curve["fit"]["form"] == ("bon" if name == "bon" else "rl"), name
        assert curve["peak"]["gold"] == max(curve["gold"]), name
    assert study["bon"]["n"] == [1, 2, 4]
    assert study["bon"]["kl"][1:] == [math.log(n) - (n - 1) / n for n in (2, 4)]
    # the ppo curve's points are its evaluations: KL from the metrics, gold from the gold monitor
    evaluations = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in evaluations if "eval/kl" in r]
    assert study["ppo"]["kl"][1:] == [r["eval/kl"] for r in evaluations]
    assert study["ppo"]["gold"][1:] == [r["monitor/gold"] for r in evaluations]
    assert (
        summary["algorithm"] == "ppo" and summary["algorithms"]["bon"]["kl_to_sft"] == study["bon"]["kl"][-1]
    )
    assert "Over-optimisation" in (out / "report.html").read_text()

"""A reduced demo (a few steps of every stage): the files, the summary keys, finite numbers."""

import json
import math

from rlhfkit.cli import main

SMALL = [
    "demonstrations=800",
    "eval_prompts=16",
    "vocab_size=400",
    "hidden_size=64",
    "num_layers=2",
    "sft_epochs=2",
    "pairs_per_prompt=1",
    "rm_epochs=1",
    "ppo_steps=4",
    "ppo_batch_size=8",
    "ppo_mini_batch_size=4",
    "ppo_epochs=1",
    "response_length=8",
    "ppo_eval_every=2",
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
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in KEYS:
        assert math.isfinite(summary[key]), key
    assert summary["seed"] == 0
    assert set(summary["config"]) == {"demo", "sft", "label", "rm", "ppo"}
    assert summary["config"]["ppo"]["max_steps"] == 4
    report = (out / "report.html").read_text()
    assert report.count("<svg") == 6 and "SFT completion" in report and "PPO completion" in report
    for folder in ("sft", "rm", "ppo/actor", "ppo/critic"):
        assert (out / folder / "config.json").is_file(), folder
    assert "report.html" in capsys.readouterr().out
    # a finished demo folder is refused without --overwrite
    assert main(["demo", "--out", str(out), *SMALL]) == 2

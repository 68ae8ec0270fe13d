"""`rlhfkit demo-multiturn` reduced to a few steps of every stage: the files, summary.json's numbers read
back from the episodes it played, and its config's checks."""

import json

import pytest

from rlhfkit.cli import main
from rlhfkit.config import SET_BY_DEMO, MultiturnConfig, load_config
from rlhfkit.errors import ConfigError

SMALL = [
    "episodes=150",
    "prompts=16",
    "eval_episodes=12",
    "vocab_size=300",
    "hidden_size=32",
    "num_layers=1",
    "num_heads=2",
    "sft.epochs=1",
    "ppo.max_steps=2",
    "ppo.batch_size=8",
    "ppo.mini_batch_size=8",
    "ppo.ppo_epochs=1",
    "ppo.eval_every=1",
]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reduced_demo_measures_both_policies_on_the_same_held_out_games(tmp_path, capsys):
    out = tmp_path / "guess"
    assert main(["demo-multiturn", "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("sft", "ppo"):
        games = _rows(out / f"eval_{name}.jsonl")
        # the same 12 held-out games (secrets in the same order) for both policies
        assert [g["secret"] for g in games] == [r["secret"] for r in _rows(out / "data/eval_prompts.jsonl")]
        # summary.json's numbers are the means over the games each policy played
        assert summary[f"success_{name}"] == pytest.approx(sum(g["found"] for g in games) / 12)
        assert summary[f"turns_{name}"] == pytest.approx(sum(g["turns"] for g in games) / 12)
        assert summary[f"env_reward_{name}"] == pytest.approx(sum(sum(g["rewards"]) for g in games) / 12)
        assert all(g["episode"].startswith("<s>I am thinking of a number from 1 to 8.\nGuess:") for g in games)
    assert summary["sft"]["kl_to_sft"] == 0.0  # the SFT model is its own reference
    assert summary["kl_to_sft"] == summary["ppo"]["kl_to_sft"]
    assert summary["success_gain"] == pytest.approx(summary["success_ppo"] - summary["success_sft"])
    # PPO's own held-out evaluations, one per step (eval_every=1), as its metrics.jsonl logged them
    assert [e["step"] for e in summary["ppo_evaluations"]] == [1, 2]
    assert summary["config"]["ppo"]["environment"] == "rlhfkit.tasks.guess:GuessingGame"
    assert summary["config"]["ppo"]["reward_model"] is None
    assert SET_BY_DEMO not in json.dumps({k: v for k, v in summary["config"].items() if k != "demo"})
    for folder in ("base", "sft", "ppo/actor"):
        assert (out / folder / "config.json").is_file(), folder
    printed = capsys.readouterr().out
    assert "[6/6]" in printed and "rlhfkit demo-multiturn: success" in printed
    # a finished folder is refused without --overwrite
    assert main(["demo-multiturn", "--out", str(out), *SMALL]) == 2


def test_the_demo_refuses_stage_fields_it_wires_and_bad_values_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="'ppo.environment' is set by the demo itself"):
        load_config(MultiturnConfig, None, ["ppo.environment=my.envs:Env"])
    with pytest.raises(ConfigError, match=r"skill must be in \[0, 1\], got 1.5"):
        load_config(MultiturnConfig, None, ["skill=1.5"])
    with pytest.raises(ConfigError, match="high must be at least 2, got 1"):
        load_config(MultiturnConfig, None, ["high=1"])
    out = tmp_path / "never"
    assert main(["demo-multiturn", "--out", str(out), "episodes=0"]) == 2
    assert not out.exists()


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo-multiturn", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("skill", "eval_episodes", "high", "sft.epochs", "ppo.max_turns"):
        assert name in text, name

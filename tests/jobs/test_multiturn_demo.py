"""`rlhfkit demo-multiturn` reduced to a few steps of every stage: the files, summary.json's numbers read
back from the episodes it played, and its config's checks."""

import contextlib
import io
import json

import pytest

from rlhfkit.cli import main
from rlhfkit.config import SET_BY_DEMO, MultiturnConfig, load_config
from rlhfkit.errors import ConfigError

SMALL = [
    "episodes=300",
    "prompts=16",
    "eval_episodes=12",
    "vocab_size=300",
    "hidden_size=32",
    "num_layers=1",
    "num_heads=2",
    "sft.epochs=3",
    "ppo.max_steps=2",
    "ppo.batch_size=8",
    "ppo.mini_batch_size=8",
    "ppo.ppo_epochs=1",
    "ppo.eval_every=1",
]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """(folder, what it printed) of one reduced demo run."""
    out, printed = tmp_path_factory.mktemp("multiturn") / "guess", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo-multiturn", "--out", str(out), *SMALL]) == 0
    return out, printed.getvalue()


def test_reduced_demo_measures_both_policies_on_the_same_held_out_games(reduced):
    out, printed = reduced
    summary = json.loads((out / "summary.json").read_text())
    for name in ("sft", "ppo"):
        games = _rows(out / f"eval_{name}.jsonl")
        # the same 12 held-out games (secrets in the same order) for both policies
        assert [g["secret"] for g in games] == [r["secret"] for r in _rows(out / "data/eval_prompts.jsonl")]
        # summary.json's numbers are the means over the games each policy played
        assert summary[f"success_{name}"] == pytest.approx(sum(g["found"] for g in games) / 12)
        assert summary[f"turns_{name}"] == pytest.approx(sum(g["turns"] for g in games) / 12)
        assert summary[f"env_reward_{name}"] == pytest.approx(sum(sum(g["rewards"]) for g in games) / 12)
        assert all(
            g["episode"].startswith("<s>I am thinking of a number from 1 to 8.\nGuess:") for g in games
        )
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
    # 64 episodes an iteration, 4 per prompt: 16 games needed
    with pytest.raises(ConfigError, match=r"prompts \(15\) must be at least the 16 games"):
        load_config(MultiturnConfig, None, ["prompts=15", "ppo.samples_per_prompt=4"])
    assert load_config(MultiturnConfig, None, ["prompts=16", "ppo.samples_per_prompt=4"]).prompts == 16
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


def test_the_kl_reads_each_episodes_policy_tokens_where_the_sampler_drew_them(reduced):
    """The evaluation's KL re-scores whole episodes right-padded; the sampler drew them left-padded, turn by
    turn, and kept each token's log-prob. Summed over the policy's tokens the two must agree (the same model,
    the same temperature): a position off by one, or an environment token counted, would show."""
    import torch

    from rlhfkit.jobs.multiturn import play, policy_logprobs, sequences
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.tasks.guess import game_rows

    folder = str(reduced[0] / "ppo" / "actor")
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder, tokenizer).eval()
    settings = MultiturnConfig().ppo
    games, rollout = play(model, tokenizer, game_rows(16, seed=0), settings, seed=0)
    ids, policy = sequences(rollout)
    assert all(g.turns == int(t) for g, t in zip(games, rollout.turns, strict=True))
    assert max(g.turns for g in games) > 1  # episodes of several turns: answers sit between the turns
    sampled = (rollout.logprobs * rollout.policy_mask).sum(dim=1)  # (16,) as the sampler drew them
    rescored = policy_logprobs(model, ids, policy, tokenizer.pad_token_id, settings.temperature)  # (16,)
    torch.testing.assert_close(rescored, sampled, atol=1e-4, rtol=1e-5)

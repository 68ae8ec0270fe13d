"""Multi-turn PPO: the experience of episodes with an environment (losses on the policy's tokens only, each
turn's reward at its position), every advantage estimator, LoRA, the CLI's rules for a bad environment."""

import pytest
import torch

import envs
from helpers import ppo_args, ppo_config
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.cli import main
from rlhfkit.config import LoraConfig
from rlhfkit.runtime.metrics import read_metrics


def config(stack, out, **overrides):
    fields = {
        "environment": "envs:Scripted",
        "reward_model": None,
        "max_turns": 3,
        "max_steps": 1,
        "response_length": 6,
        "kl_coef": 0.0,
        "eval_holdout": 4,
        **overrides,
    }
    return ppo_config(stack, out, **fields)


def experience(stack, out, **overrides):
    trainer = PPOTrainer.create(config(stack, out, **overrides))
    rollout = trainer.rollout(trainer.prompt_batch(1))
    exp, stats = trainer.experience(rollout)
    return trainer, rollout, exp, stats


def test_the_experience_trains_on_the_policys_tokens_with_each_turns_reward_at_its_end(rlhf_stack, tmp_path):
    _, rollout, exp, stats = experience(rlhf_stack, tmp_path / "gae")
    env = rollout.response_mask & ~rollout.policy_mask  # (B, T) the environment's tokens
    assert env.any() and torch.equal(exp.mask, rollout.policy_mask)
    # no reward model, no KL: the rewards are the environment's, on each turn's last token
    assert torch.equal(exp.rewards, rollout.turn_rewards)
    ends = rollout.policy_mask & ~torch.nn.functional.pad(rollout.policy_mask[:, 1:], (0, 1), value=False)
    assert torch.equal(exp.rewards != 0, ends)  # Scripted rewards turn t with t > 0
    for tensor in (exp.advantages, exp.returns):
        assert torch.all(tensor[env] == 0) and torch.all(tensor[~rollout.response_mask] == 0)
    assert stats["episode/env_reward"].item() == pytest.approx(rollout.turn_rewards.sum(1).mean().item())
    assert stats["objective/scores"].item() == pytest.approx(stats["episode/env_reward"].item())


def test_a_reward_model_scores_the_whole_conversation_at_its_end(rlhf_stack, tmp_path):
    _, rollout, exp, _ = experience(rlhf_stack, tmp_path / "rm", reward_model=rlhf_stack[1])
    last = rollout.policy_mask.cumsum(1) == rollout.policy_mask.sum(1, keepdim=True)  # (B, T)
    last &= rollout.policy_mask
    score = exp.rewards - rollout.turn_rewards  # the RM's score alone, on the last policy token
    assert torch.all(score[~last] == 0) and torch.all(score[last] != 0)


@pytest.mark.parametrize("estimator", ["gae", "grpo", "rloo", "reinforce_pp"])
def test_every_estimator_trains_on_episodes(rlhf_stack, tmp_path, estimator):
    group = {"samples_per_prompt": 2} if estimator in ("grpo", "rloo") else {}
    out = ppo(config(rlhf_stack, tmp_path / estimator, advantage_estimator=estimator, kl_coef=0.05, **group))
    (record,) = read_metrics(out / "metrics.jsonl")
    assert record["episode/turns"] >= 1 and record["loss/policy"] == record["loss/policy"]  # not NaN
    assert abs(record["policy/first_ratio_deviation"]) < 1e-4


def test_lora_trains_on_episodes(rlhf_stack, tmp_path):
    out = ppo(config(rlhf_stack, tmp_path / "lora", lora=LoraConfig(r=4, alpha=8.0), eval_every=1))
    (record,) = read_metrics(out / "metrics.jsonl")
    assert record["eval/turns"] >= 1 and abs(record["policy/first_ratio_deviation"]) < 1e-4


def test_held_out_samples_show_whole_episodes(rlhf_stack, tmp_path):
    import json

    out = ppo(config(rlhf_stack, tmp_path / "samples", eval_every=1))
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    roles = [turn["role"] for turn in sample["turns"]]
    assert roles[0] == "policy" and set(roles) <= {"policy", "environment"}
    assert sample["ended"] in ("environment", "max_turns", "length")
    assert "".join(t["text"] for t in sample["turns"]).startswith(sample["response"][:5])
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert {"eval/turns", "eval/length", "eval/env_reward", "eval/ended_environment"} <= set(record)


# --- a bad environment: one line, status 2, nothing written; failing mid-run: status 1, then --resume ---


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("envs_missing:Game", "environment 'envs_missing:Game': cannot import envs_missing"),
        ("helpers:great_reward", "environment 'helpers:great_reward' has no step(response) method"),
        ("envs:Raises", "environment envs:Raises: step() raised RuntimeError (the game server is down)"),
        ("envs:WrongType", "environment envs:WrongType: step('') returned 'higher'; it must return"),
    ],
)
def test_a_bad_environment_is_one_line_and_status_2(rlhf_stack, tmp_path, capsys, spec, message):
    out = tmp_path / "bad"
    sft, _, prompts = rlhf_stack
    args = ["ppo", "--policy", sft, "--prompts", prompts, "--out", str(out), "--environment", spec]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_an_environment_failing_mid_run_checkpoints_and_resumes(rlhf_stack, tmp_path, capsys, monkeypatch):
    out = tmp_path / "flaky"
    args = ppo_args(
        rlhf_stack, out, "--max-steps", "4", "batch_size=8", "mini_batch_size=4", "response_length=6",
        "--environment", "envs:FailsLater", "max_turns=2",
    )  # fmt: skip
    monkeypatch.setitem(envs.FailsLater.MADE, "n", 0)
    monkeypatch.setattr(envs.FailsLater, "FAIL_AFTER", 1 + 2 * 8)  # the start-up check, two iterations
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "environment envs:FailsLater: step() raised ConnectionError" in error and "step-00000002" in error
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(envs.FailsLater, "FAIL_AFTER", 1_000_000)
    assert main([*args, "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


# --- rlhfkit eval --environment ------------------------------------------------------------------------


def test_eval_plays_episodes_against_the_environment(rlhf_stack, tmp_path):
    import json

    sft, _, prompts = rlhf_stack
    out = tmp_path / "eval"
    args = ["eval", "--model", sft, "--prompts", prompts, "--environment", "envs:Scripted",
            "--reference", sft, "--out", str(out), "max_turns=3", "response_length=8",
            "batch_size=16"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "eval.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 200
    for s in samples:  # Scripted rewards turn t with t: an episode of n turns earns 1 + ... + n
        n = s["policy_turns"]
        assert s["env_reward"] == n * (n + 1) / 2 and [t["role"] for t in s["turns"]].count("policy") == n
    assert metrics["env_reward"] == pytest.approx(sum(s["env_reward"] for s in samples) / 200)
    assert metrics["turns"] == pytest.approx(sum(s["policy_turns"] for s in samples) / 200)
    assert metrics["kl"] == 0.0  # the model is its own reference
    shares = [metrics[f"ended_{how}"] for how in ("environment", "max_turns", "length")]
    assert sum(shares) == pytest.approx(1.0) and metrics["ended_environment"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--best-of", "2", "--reward-function", "helpers:great_reward"], "does not apply to an environment"),
     (["--environment", "envs:Raises"], "step() raised RuntimeError")],
)  # fmt: skip
def test_eval_refuses_a_bad_environment_in_one_line(rlhf_stack, tmp_path, capsys, extra, message):
    sft, _, prompts = rlhf_stack
    args = ["eval", "--model", sft, "--prompts", prompts, "--out", str(tmp_path / "e"), "--environment",
            "envs:Scripted", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "e").exists()

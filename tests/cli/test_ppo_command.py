"""`rlhfkit ppo` from the command line: a real run with every documented metric, and bad input."""

import json
import subprocess
import sys

import pytest

from helpers import ppo_args
from rlhfkit.cli import main

METRICS = [
    "objective/scores",
    "objective/kl",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/entropy",
    "kl_coef",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/ratio_mean",
    "loss/policy",
    "loss/value",
    "loss/ptx",
    "val/clipfrac",
    "val/explained_variance",
    "response/length_mean",
    "response/stop_rate",
    "time/rollout",
    "time/score",
    "time/train",
    "episodes_per_s",
]


def test_ppo_command_writes_actor_critic_metrics_and_samples(rlhf_stack, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "ppo"
    args = ppo_args(
        rlhf_stack,
        out,
        "--max-steps",
        "2",
        "batch_size=8",
        "mini_batch_size=4",
        "response_length=8",
        "eval_every=1",
        "kl_target=6",
    )
    done = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        missing = [k for k in METRICS if k not in record]
        assert not missing, missing
    assert records[0]["kl_coef"] == 0.05 and records[1]["kl_coef"] != 0.05  # adaptive beta moved
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    assert all(set(s) == {"step", "prompt", "response", "score"} for s in samples)
    AutoModelForCausalLM.from_pretrained(out / "actor")
    AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert json.loads((out / "rlhfkit.json").read_text())["finished"]


@pytest.fixture(scope="module")
def other_tokenizer_rm(tmp_path_factory, rlhf_stack):
    """A reward model whose tokenizer differs from the policy's."""
    from helpers import great_rows
    from rlhfkit.models import tiny_llama, train_tokenizer

    folder = tmp_path_factory.mktemp("other")
    tokenizer = train_tokenizer([r["chosen"] for r in great_rows(50)], vocab_size=300)
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


BAD = {
    "mini batch not dividing": (["mini_batch_size=3"], "mini_batch_size (3) must divide batch_size (8)"),
    "response length 0": (["response_length=0"], "response_length must be > 0"),
    "multi-token stop": (["stop_tokens=the movie was"], "stop token 'the movie was' is"),
    "ptx without data": (["ptx_coef=1"], "ptx_coef > 0 needs ptx_data"),
    "too few prompts": (["batch_size=400", "mini_batch_size=8"], "fewer than the 400 an iteration samples"),
    "too few with eval prompts": (
        ["batch_size=400", "mini_batch_size=8", "eval_prompts={prompts}"],
        "fewer than the 400 an iteration samples",
    ),
    "reward function not found": (["--reward-function", "helpers:nope"], "has no callable 'nope'"),
    "reward function with the wrong signature": (
        ["--reward-function", "helpers:prompt_rows"],
        "reward function helpers:prompt_rows raised TypeError",
    ),
    "weights of the wrong length": (["reward_weights=1,2"], "reward_weights has 2 values for 1 reward"),
    "grpo with one sample": (["advantage_estimator=grpo"], "samples_per_prompt >= 2"),
    "missing prompts": (["prompts=nowhere/prompts.jsonl"], "nowhere/prompts.jsonl: file does not exist"),
}


@pytest.mark.parametrize("case", BAD)
def test_ppo_bad_input(case, rlhf_stack, tmp_path, capsys):
    extra, message = BAD[case]
    extra = [e.format(prompts=rlhf_stack[2]) for e in extra]
    out = tmp_path / "out"
    code = main(ppo_args(rlhf_stack, out, "batch_size=8", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_critic_with_another_tokenizer_is_refused(rlhf_stack, other_tokenizer_rm, tmp_path, capsys):
    """An RM may read its own tokens (it scores text); the critic reads the policy's."""
    code = main(ppo_args(rlhf_stack, tmp_path / "out", f"critic_model={other_tokenizer_rm}"))
    assert code == 2
    assert "critic_model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reward_functions_from_the_command_line_without_a_reward_model(rlhf_stack, tmp_path):
    sft_dir, _, prompts = rlhf_stack
    out = tmp_path / "fn"
    args = [
        "ppo", "--policy", sft_dir, "--prompts", prompts, "--out", str(out), "--max-steps", "1",
        "--reward-function", "helpers:great_reward", "--reward-function", "helpers:length_reward",
        "reward_weights=1,0.5", "batch_size=8", "mini_batch_size=4", "response_length=6",
        "advantage_estimator=rloo", "samples_per_prompt=2",
    ]  # fmt: skip
    assert main(args) == 0
    run = json.loads((out / "rlhfkit.json").read_text())
    assert run["rewards"] == {"great_reward": 1.0, "length_reward": 0.5}
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["objective/scores_raw"] == pytest.approx(
        record["reward/great_reward"] + 0.5 * record["reward/length_reward"], rel=1e-5
    )


def test_a_reward_function_failing_mid_run_checkpoints_and_resumes(rlhf_stack, tmp_path):
    """The verifier goes down in iteration 3: status 1, one line naming it, a checkpoint of the state after
    iteration 2, metrics of 2 iterations; `--resume` once it is back finishes the run."""
    import os
    from pathlib import Path

    out = tmp_path / "flaky"
    args = ppo_args(
        rlhf_stack, out, "--max-steps", "4", "batch_size=8", "mini_batch_size=4", "response_length=6",
        "--reward-function", "helpers:fails_after_two_batches",
    )  # fmt: skip
    tests = str(Path(__file__).parents[1])
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RLHFKIT_TEST_FAIL_AFTER": "17"}  # 1 start-up check + 2 x 8
    done = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "reward function helpers:fails_after_two_batches raised ConnectionError" in error
    assert "step-00000002" in error
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    env["RLHFKIT_TEST_FAIL_AFTER"] = "1000"
    done = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args, "--resume"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

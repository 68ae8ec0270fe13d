"""Reward functions and a critic-free estimator on two gloo processes (`torchrun --nproc_per_node 2`): the
metrics of one process with the same global batch; a function that fails on one process stops both."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import GOOD, NOUNS, metric_records, ppo_args, write_jsonl

PORTS = iter(range(29611, 29640))
TESTS = Path(__file__).parents[1]
# CPU processes (gloo) even where a GPU is visible; the reward functions below and helpers' importable
ENV = dict(
    os.environ,
    CUDA_VISIBLE_DEVICES="",
    PYTHONPATH=os.pathsep.join(
        p for p in (str(TESTS), str(TESTS / "cli"), os.environ.get("PYTHONPATH")) if p
    ),
)
CALLS = {"n": 0}


def answer_reward(prompt: str, response: str, answer: str) -> float:
    """1 when the response says the row's `answer` (a verifier reading its reference)."""
    return float(answer in response)


def fails_on_the_second_process(prompt: str, response: str) -> float:
    """Scores at the start-up check everywhere, then raises on the process of rank 1 only."""
    CALLS["n"] += 1
    if os.environ.get("RANK") == "1" and CALLS["n"] > 1:
        raise ConnectionError("the verifier is down")
    return 0.0


def command(args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "rlhfkit.cli", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(next(PORTS)), "-m", "rlhfkit.cli", *args,
    ]  # fmt: skip


def run(args: list[str], processes: int) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, processes), capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def answer_prompts(tmp_path_factory):
    # the 4 copies of each prompt carry 4 different answers: a row found again by its prompt's ids (not by
    # the index its episode carries) would read another copy's answer
    rows = [
        {"prompt": f"the {noun} was", "answer": GOOD[i // len(NOUNS) % len(GOOD)]}
        for i, noun in enumerate(NOUNS * 4)
    ]
    return write_jsonl(tmp_path_factory.mktemp("answers") / "prompts.jsonl", rows)


GRPO = ["advantage_estimator=grpo", "samples_per_prompt=2", "batch_size=8", "mini_batch_size=4",
        "response_length=6", "eval_every=2", "--max-steps", "2", "--reward-function",
        "test_multiprocess_rewards:answer_reward", "--reward-function", "helpers:great_reward",
        "reward_weights=1,2,0.5"]  # fmt: skip


def test_reward_functions_and_grpo_on_two_processes_match_one(rlhf_stack, answer_prompts, tmp_path):
    """The RM, a function reading its row's column and a plain one, GRPO's group baseline: each process
    scores its rows, they gather the batch, and every statistic is the one-process one."""
    stack = (rlhf_stack[0], rlhf_stack[1], answer_prompts)
    one = one_and_two_processes_agree(lambda out: ppo_args(stack, out, *GRPO), tmp_path)
    assert all("reward/answer_reward" in r and "reward/great_reward" in r for r in one)


def one_and_two_processes_agree(args: Callable[[Path], list[str]], tmp_path: Path) -> list[dict]:
    """Run the `rlhfkit` command `args(out)` on one process into `tmp_path / "one"` and on two into
    `tmp_path / "two"`; assert their 2 iterations' metrics agree and their samples are equal; return the
    one-process metrics."""
    for name, processes in (("one", 1), ("two", 2)):
        done = run(args(tmp_path / name), processes)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (metric_records(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b)
        for key in a:
            rel = 1e-5 if a["step"] == 1 else 1e-3  # later iterations: float-summation noise only
            assert b[key] == pytest.approx(a[key], rel=rel, abs=rel), (a["step"], key)
    samples = [metric_records(tmp_path / name / "samples.jsonl") for name in ("one", "two")]
    assert samples[0] == samples[1]
    return one


def test_a_function_failing_on_one_process_stops_both(rlhf_stack, tmp_path):
    out = tmp_path / "fails"
    args = ppo_args(rlhf_stack, out, "batch_size=8", "mini_batch_size=4", "response_length=4",
                    "--max-steps", "2", "--reward-function",
                    "test_multiprocess_rewards:fails_on_the_second_process")  # fmt: skip
    done = run(args, 2)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "raised ConnectionError (the verifier is down)" in done.stderr  # the failing process
    assert "a reward function failed on another process" in done.stderr  # the other one, told at once
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()

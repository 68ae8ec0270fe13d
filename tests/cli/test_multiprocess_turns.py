"""Multi-turn episodes on two gloo processes (`torchrun --nproc_per_node 2`): each process runs the
environments of its rows, episodes of different lengths and turn counts; the metrics and samples are those of
one process with the same global batch."""

import pytest
from test_multiprocess_rewards import run

from helpers import metric_records, ppo_args

# rows of 1 to 3 turns (Scripted ends after `turns`, 3 by default), cut by max_episode_length now and then
TURNS = ["--environment", "envs:Scripted", "max_turns=3", "response_length=6", "max_episode_length=30",
         "max_prompt_length=16", "batch_size=8", "mini_batch_size=4", "eval_every=2", "eval_holdout=4",
         "--max-steps", "2"]  # fmt: skip


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_episodes_on_two_processes_match_one(rlhf_stack, tmp_path, estimator):
    extra = [f"advantage_estimator={estimator}", *(["samples_per_prompt=2"] if estimator == "grpo" else [])]
    for name, processes in (("one", 1), ("two", 2)):
        done = run(ppo_args(rlhf_stack, tmp_path / name, *TURNS, *extra), processes)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (metric_records(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert len(one) == len(two) == 2
    assert one[0]["episode/ended_length"] > 0 or one[1]["episode/ended_length"] > 0  # lengths differ
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b)
        for key in a:
            rel = 1e-5 if a["step"] == 1 else 1e-3  # later iterations: float-summation noise only
            assert b[key] == pytest.approx(a[key], rel=rel, abs=rel), (a["step"], key)
    samples = [metric_records(tmp_path / name / "samples.jsonl") for name in ("one", "two")]
    assert samples[0] == samples[1]

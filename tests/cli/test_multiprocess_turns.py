"""Multi-turn episodes on two gloo processes (`torchrun --nproc_per_node 2`): each process runs the
environments of its rows, episodes of different lengths and turn counts; the metrics and samples are those of
one process with the same global batch."""

import pytest
from test_multiprocess_rewards import one_and_two_processes_agree

from helpers import ppo_args

# rows of 1 to 3 turns (Scripted ends after `turns`, 3 by default), cut by max_episode_length now and then
TURNS = ["--environment", "envs:Scripted", "max_turns=3", "response_length=6", "max_episode_length=30",
         "max_prompt_length=16", "batch_size=8", "mini_batch_size=4", "eval_every=2", "eval_holdout=4",
         "--max-steps", "2"]  # fmt: skip


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_episodes_on_two_processes_match_one(rlhf_stack, tmp_path, estimator):
    extra = [f"advantage_estimator={estimator}", *(["samples_per_prompt=2"] if estimator == "grpo" else [])]
    one = one_and_two_processes_agree(lambda out: ppo_args(rlhf_stack, out, *TURNS, *extra), tmp_path)
    assert one[0]["episode/ended_length"] > 0 or one[1]["episode/ended_length"] > 0  # lengths differ

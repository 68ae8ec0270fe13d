"""The policy-loss aggregations under two gloo processes (`torchrun --nproc_per_node 2`): each gives the
metrics and weights of one process with the same global batch, because the counts every micro-batch is
weighed by (tokens, or responses) are those of the global minibatch. Each run also uses a critic-free
estimator, a reward function beside the RM, and another loss option, so those agree across processes too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import metric_records, ppo_args

PORTS = iter(range(29641, 29670))  # test_multiprocess*.py: 29541-29599, 29611-29639
TESTS = str(Path(__file__).parents[1])  # where `helpers:great_reward` is found
# gloo processes even where a GPU is visible
CPU = dict(
    os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
)


def launch(runs: list[list[str]], processes: int) -> None:
    """The `rlhfkit` runs `runs` in one launch (ppo_runs.py: the start-up paid once), as one plain process
    or as `processes` processes started by torchrun."""
    driver = [str(Path(__file__).with_name("ppo_runs.py")), json.dumps(runs)]
    command = [sys.executable, *driver]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(next(PORTS)), *driver]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=CPU)
    assert done.returncode == 0, done.stderr[-3000:]


# Adam's first step is ~lr * sign(g) whatever the gradient's scale: with adam_eps=1 it is ~lr * g / (|g| + 1),
# and without clipping (max_grad_norm=0) a gradient scaled wrongly on some process moves the weights elsewhere
COMMON = ["batch_size=8", "mini_batch_size=4", "ppo_epochs=2", "response_length=8",
          "samples_per_prompt=2", "eval_every=0", "eval_holdout=8", "reward_functions=helpers:great_reward",
          "adam_eps=1.0", "actor_lr=0.05", "max_grad_norm=0", "--max-steps", "1"]  # fmt: skip
VARIANTS = {
    # the RM weighed 0: the counts of `great` alone, so some groups are uniform and left out
    "token_mean": ["advantage_estimator=rloo", "drop_uniform_groups=true", "reward_weights=0,1"],
    "sequence_mean": [  # the responses counted over both processes, some groups dropped
        "advantage_estimator=grpo",
        "drop_uniform_groups=true",
        "reward_weights=0,1",
        "ratio_level=sequence",
        "kl_penalty=loss",
        "kl_estimator=k3",
    ],
    "sequence_sum_norm": [
        "reward_weights=1,0.5",
        "advantage_estimator=grpo",
        "scale_rewards=false",
        "clip_high=0.28",
    ],
}


@pytest.fixture(scope="module")
def runs(rlhf_stack, tmp_path_factory):
    """Each variant run on 1 and on 2 processes: {processes: {aggregation: output folder}}."""
    root = tmp_path_factory.mktemp("variants")
    folders = {n: {a: root / f"{a}-{n}" for a in VARIANTS} for n in (1, 2)}
    for processes, outs in folders.items():
        launch(
            [ppo_args(rlhf_stack, outs[a], *COMMON, f"loss_aggregation={a}", *VARIANTS[a]) for a in VARIANTS],
            processes,
        )
    return folders


@pytest.mark.parametrize("aggregation", list(VARIANTS))
def test_each_aggregation_on_two_processes_matches_one(runs, rlhf_stack, aggregation):
    one, two = (metric_records(runs[n][aggregation] / "metrics.jsonl") for n in (1, 2))
    assert len(one) == len(two) == 1
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key, a[key], b[key])
    assert "loss/policy" in one[0] and "reward/great_reward" in one[0]
    if aggregation in ("token_mean", "sequence_mean"):  # groups left out: the counts are of the kept rows
        assert 0 < one[0]["policy/uniform_groups"] < 1
    first, second = (load_file(runs[n][aggregation] / "actor" / "model.safetensors") for n in (1, 2))
    # the displacements from the SFT weights, compared relative to their own size (a gradient half or twice
    # as large moves a weight half or twice as far; weights ~0.1 would hide that in their rounding)
    start = load_file(Path(rlhf_stack[0]) / "model.safetensors")
    assert max((first[k] - start[k]).abs().max().item() for k in first) > 1e-2
    for name, tensor in first.items():
        torch.testing.assert_close(second[name] - start[name], tensor - start[name], rtol=1e-3, atol=1e-6)

"""Trackers through accelerate: a PPO run with report_to=tensorboard writes event files TensorBoard reads back
with the run's metrics; a tracker that is not installed or not known is refused before anything runs."""

import importlib.util

import pytest

from helpers import ppo_args
from rlhfkit.cli import main
from rlhfkit.runtime.metrics import read_metrics


def test_tensorboard_event_files_hold_the_ppo_metrics(rlhf_stack, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "ppo"
    extra = ("batch_size=8", "mini_batch_size=4", "response_length=6", "report_to=tensorboard")
    assert main(ppo_args(rlhf_stack, out, *extra, "--max-steps", "2")) == 0
    # the metrics in OUT/rlhfkit-ppo, the run's config as hyperparameters in a folder below it
    assert list((out / "rlhfkit-ppo").glob("*/events.out.tfevents.*"))
    board = EventAccumulator(str(out / "rlhfkit-ppo"))
    board.Reload()
    scalars = board.Tags()["scalars"]
    assert {"objective/kl", "objective/scores", "loss/policy", "loss/value"} <= set(scalars)
    metrics = read_metrics(out / "metrics.jsonl")
    logged = board.Scalars("objective/scores")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([m["objective/scores"] for m in metrics], rel=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(rlhf_stack, tmp_path, capsys):
    out = tmp_path / "ppo"
    assert main([*ppo_args(rlhf_stack, out), "report_to=wandb"]) == 2
    assert "report_to wandb needs the package wandb" in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_tracker_is_a_config_error(rlhf_stack, tmp_path, capsys):
    assert main([*ppo_args(rlhf_stack, tmp_path / "ppo"), "report_to=tensorbored"]) == 2
    assert "unknown tracker 'tensorbored'" in capsys.readouterr().err

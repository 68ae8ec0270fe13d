"""Monitors (`monitor_functions`, `monitor_models`, `monitor_training`) on `ppo` and online `dpo`: measured on
every held-out evaluation (and the training batches), never part of the reward or a loss; a run with them
gives every other number of a run without them, to the last digit."""

from pathlib import Path

import pytest
import torch

from helpers import great_reward, metric_records, ppo_args, ppo_config
from rlhfkit.algorithms.dpo import dpo
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.algorithms.ppo.rewards.episodes import episode_texts
from rlhfkit.cli import main
from rlhfkit.config import DPOConfig, OptimConfig
from rlhfkit.data.encode import scored_sequence
from rlhfkit.models import sequence_scores
from rlhfkit.runtime.outputs import read_run_file

GREAT = "helpers:great_reward"


def without_monitors(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("monitor/")} for r in records]


@pytest.fixture(scope="module")
def runs(rlhf_stack, tmp_path_factory):
    """Two 2-iteration PPO runs evaluated after each iteration, the second watched by a function, the RM
    folder and, with `monitor_training`, on its training batches too."""
    folder = tmp_path_factory.mktemp("monitors")
    _, rm_dir, _ = rlhf_stack
    common = dict(max_steps=2, eval_every=1, eval_holdout=8)
    plain = ppo(ppo_config(rlhf_stack, folder / "plain", **common))
    watched = ppo(
        ppo_config(
            rlhf_stack,
            folder / "watched",
            monitor_functions=(GREAT,),
            monitor_models=(rm_dir,),
            monitor_training=True,
            **common,
        )
    )
    return plain, watched


def test_monitors_change_no_other_number(runs):
    plain, watched = runs
    for name in ("metrics.jsonl", "samples.jsonl"):
        a, b = metric_records(plain / name), metric_records(watched / name)
        assert a == without_monitors(b)  # exactly: floats compared to the last digit
        assert a != b  # the watched run did log its monitors


def test_evaluation_samples_and_means_carry_the_monitors(runs):
    _, watched = runs
    samples = metric_records(watched / "samples.jsonl")
    evaluations = [r for r in metric_records(watched / "metrics.jsonl") if "eval/score" in r]
    assert len(evaluations) == 2 and len(samples) == 2 * 8  # 8 held-out prompts at each of 2 evaluations
    for sample in samples:
        assert sample["monitor/great_reward"] == great_reward(sample["prompt"], sample["response"])
    # the RM monitor re-reads the text with its own tokenizer (here the policy's): PPO's own RM score on the
    # ids, where the text re-encodes to them (a response holding half a character, "\ufffd", does not)
    whole = [s for s in samples if "\ufffd" not in s["response"]]
    assert len(whole) >= 12
    assert [s["monitor/rm"] for s in whole] == pytest.approx([s["score"] for s in whole], abs=1e-4)
    for i, record in enumerate(evaluations):
        mine = samples[8 * i : 8 * i + 8]
        for name in ("monitor/great_reward", "monitor/rm"):
            assert record[name] == pytest.approx(sum(s[name] for s in mine) / 8, abs=1e-9)


def test_monitor_training_logs_the_training_batch(runs):
    plain, watched = runs
    names = {"monitor/train/great_reward", "monitor/train/rm"}
    assert all(names <= set(r) for r in metric_records(watched / "metrics.jsonl"))
    assert not any(names & set(r) for r in metric_records(plain / "metrics.jsonl"))
    assert {"monitor/rm", "monitor/great_reward"} <= set(read_run_file(watched)["final"])


def test_training_monitors_are_the_batchs_means_by_hand(rlhf_stack, tmp_path):
    """On iteration 1's batch: great_reward's mean over the episodes' text, and the RM folder's mean of
    each episode scored alone (`scored_sequence` in its tokens, read at EOS when the response stopped)."""
    _, rm_dir, _ = rlhf_stack
    config = ppo_config(
        rlhf_stack, tmp_path, monitor_functions=(GREAT,), monitor_models=(rm_dir,), monitor_training=True
    )
    trainer = PPOTrainer.create(config)
    rollout = trainer.rollout(trainer.prompt_batch(1))
    stats = trainer.training_monitors(rollout)
    texts = episode_texts(rollout, range(8), trainer.prompts, trainer.roles.tokenizer)
    great = [great_reward(p, r) for p, r in zip(texts.prompts, texts.responses, strict=True)]
    assert stats["monitor/train/great_reward"].item() == pytest.approx(sum(great) / 8, abs=1e-12)
    tok, model = trainer.roles.tokenizer, trainer.roles.reward_model  # the RM folder reads these tokens
    by_hand = []
    with torch.no_grad():
        for prompt, response, done in zip(texts.prompts, texts.responses, texts.finished, strict=True):
            ids = torch.tensor([scored_sequence(prompt, response, tok, finished=done)])
            by_hand.append(sequence_scores(model, ids, torch.ones_like(ids)).item())
    assert stats["monitor/train/rm"].item() == pytest.approx(sum(by_hand) / 8, abs=1e-5)
    assert set(stats) == {"monitor/train/great_reward", "monitor/train/rm"}


@pytest.mark.parametrize(
    "field, spec, message",
    [
        ("monitor_models", "no/such/folder", "monitor_models 'no/such/folder': not a reward-model folder"),
        ("monitor_functions", "helpers:missing", "monitor_functions 'helpers:missing': helpers has no"),
        ("monitor_functions", "nonsense", "monitor_functions 'nonsense' is not of the form module:function"),
    ],
)
def test_a_bad_monitor_is_one_line_status_2_and_nothing_written(
    rlhf_stack, tmp_path, capsys, field, spec, message
):
    out = tmp_path / "never"
    assert main([*ppo_args(rlhf_stack, out), f"{field}=[{spec}]", "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not Path(out).exists()


def test_online_dpo_gets_the_monitors(rlhf_stack, tmp_path):
    sft, rm, prompts = rlhf_stack
    config = DPOConfig(
        model=sft,
        prompts=prompts,
        out=str(tmp_path / "dpo"),
        reward_model=rm,
        max_steps=2,
        batch_size=8,
        samples_per_prompt=2,
        optim=OptimConfig(lr=1e-3, warmup_ratio=0),
        eval_every=1,
        eval_holdout=8,
        response_length=8,
        monitor_functions=(GREAT,),
        monitor_training=True,
    )
    records = metric_records(dpo(config) / "metrics.jsonl")
    assert all("monitor/train/great_reward" in r for r in records if "step" in r)
    assert sum("monitor/great_reward" in r for r in records) == 2  # at each evaluation
    samples = metric_records(tmp_path / "dpo" / "samples.jsonl")
    assert all(s["monitor/great_reward"] == great_reward(s["prompt"], s["response"]) for s in samples)

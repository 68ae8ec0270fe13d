"""Padding-free passes and token-budget micro-batches in PPO (`padding_free`, `max_tokens_per_micro_batch`):
the experience (old and reference log-probs, values, scores), the first minibatch's loss and gradients and
whole runs (GAE, GRPO, LoRA, multi-turn episodes) equal the padded, fixed-count ones to float rounding."""

import dataclasses

import pytest
import torch

from helpers import metric_records, ppo_args, ppo_config, sentiment_rows, write_jsonl
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.algorithms.ppo.update import Shares, micro_batch_loss, micro_batch_rows
from rlhfkit.cli import main
from rlhfkit.config import LoraConfig
from rlhfkit.core import loss_count


def config(stack, out, **overrides):
    """`ppo_config` computing in fp32 (the equalities are checked to fp32 rounding)."""
    return ppo_config(stack, out, **{"bf16": False, **overrides})


EXPERIENCE = ("old_logp", "ref_logp", "old_values", "scores", "rewards", "advantages", "returns")


def first_batch(stack, out, **overrides):
    trainer = PPOTrainer.create(config(stack, out, **overrides))
    return trainer, trainer.rollout(trainer.prompt_batch(1))


def experience_as(trainer, rollout, **fields):
    """The experience of `rollout` under the trainer's config with `fields` changed (same models)."""
    trainer.config = dataclasses.replace(trainer.config, **fields)
    return trainer.experience(rollout)[0]


def assert_same_experience(padded, packed):
    """Equal at the response's real tokens (a padded pass also reads the padding; a packed one gives 0
    there, and nothing downstream reads it)."""
    assert torch.equal(packed.mask, padded.mask)
    real = padded.attention_mask[:, padded.context :].bool()  # (B, T)
    for name in EXPERIENCE:
        ours, theirs = getattr(packed, name), getattr(padded, name)
        if ours.dim() == 2:
            ours, theirs = ours[real], theirs[real]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"lora": LoraConfig(r=4)}, {"advantage_estimator": "grpo", "samples_per_prompt": 2}],
    ids=["gae", "lora", "grpo"],
)
def test_the_experience_packed_is_the_padded_one(rlhf_stack, tmp_path, overrides):
    trainer, rollout = first_batch(rlhf_stack, tmp_path / "ppo", **overrides)
    lengths = rollout.attention_mask.sum(1)
    assert lengths.min() < lengths.max(), "rows of one length would leave nothing to pack"
    padded = experience_as(trainer, rollout)
    # one packed pass over the batch, then passes of at most 20 real tokens (several rows, one row alone)
    for budget in (None, 20):
        packed = experience_as(trainer, rollout, padding_free=True, max_tokens_per_micro_batch=budget)
        assert_same_experience(padded, packed)
    # a padded pass under a token budget: rows x the batch's width
    width = rollout.input_ids.shape[1]
    assert_same_experience(padded, experience_as(trainer, rollout, max_tokens_per_micro_batch=2 * width))


def test_the_reward_models_packed_scores_are_its_padded_ones(rlhf_stack, tmp_path):
    for overrides in ({}, {"lora": LoraConfig(r=4)}):
        trainer, rollout = first_batch(rlhf_stack, tmp_path / "ppo", **overrides)
        ids, mask = rollout.input_ids, rollout.attention_mask
        with torch.no_grad():
            padded, packed = (trainer.roles.scores(ids, mask, packed=p) for p in (False, True))
        torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)


def test_a_multi_turn_episodes_experience_packed_is_the_padded_one(rlhf_stack, tmp_path):
    """Environment tokens inside the response: the attention mask is still one run of real tokens."""
    episodes = dict(environment="envs:Scripted", reward_model=None, max_turns=3, response_length=6)
    trainer, rollout = first_batch(rlhf_stack, tmp_path / "turns", kl_coef=0.0, eval_holdout=4, **episodes)
    assert (rollout.loss_mask != rollout.attention_mask[:, rollout.prompt_ids.shape[1] :].bool()).any()
    padded = experience_as(trainer, rollout)
    assert_same_experience(padded, experience_as(trainer, rollout, padding_free=True))
    assert_same_experience(
        padded, experience_as(trainer, rollout, padding_free=True, max_tokens_per_micro_batch=30)
    )


def minibatch_loss_and_gradients(trainer, exp, rows, **fields):
    """The minibatch's loss (summed over this config's micro-batches, each weighted by its `Shares`) and the
    trained parameters' gradients."""
    changed = dataclasses.replace(trainer.config, **fields)
    module = trainer.roles.trainable
    module.zero_grad()
    mask = exp.mask[rows]
    tokens, units = mask.sum(), loss_count(mask, changed.loss_aggregation)
    parts = micro_batch_rows(exp, rows, changed)
    total = torch.zeros(())
    for part in parts:
        part_mask = exp.mask[part]
        shares = Shares(part_mask.sum() / tokens, loss_count(part_mask, changed.loss_aggregation) / units)
        loss, _ = micro_batch_loss(trainer.opt, exp, part, trainer.kl_ctl.value, changed, shares)
        loss.backward()
        total = total + loss.detach()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return total, grads, len(parts)


@pytest.mark.parametrize("kl_penalty", ["reward", "loss"])
def test_the_first_minibatchs_loss_and_gradients_packed_are_the_padded_ones(rlhf_stack, tmp_path, kl_penalty):
    extra = {"kl_penalty": "loss", "kl_estimator": "k3"} if kl_penalty == "loss" else {}
    trainer, rollout = first_batch(rlhf_stack, tmp_path / "ppo", **extra)
    exp, _ = trainer.experience(rollout)
    rows = torch.arange(trainer.config.mini_batch_size)
    loss, grads, passes = minibatch_loss_and_gradients(trainer, exp, rows)
    assert passes == 1 and len(grads) > 0
    for fields, expected_passes in (
        ({"padding_free": True}, 1),
        ({"padding_free": True, "max_tokens_per_micro_batch": 16}, None),
        ({"max_tokens_per_micro_batch": exp.input_ids.shape[1]}, len(rows)),  # padded: a row per pass
    ):
        other_loss, other_grads, other_passes = minibatch_loss_and_gradients(trainer, exp, rows, **fields)
        assert expected_passes in (None, other_passes)
        torch.testing.assert_close(other_loss, loss, rtol=1e-5, atol=1e-6)
        assert sorted(other_grads) == sorted(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(other_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    _, _, budget_passes = minibatch_loss_and_gradients(
        trainer, exp, rows, padding_free=True, max_tokens_per_micro_batch=16
    )
    assert 1 < budget_passes <= len(rows)


def assert_same_runs(one, two):
    """Metrics equal within 1e-5 at the first iteration, 1e-3 after (float-summation noise through Adam)."""
    assert len(one) == len(two) > 1
    for index, (a, b) in enumerate(zip(one, two, strict=True)):
        assert set(a) == set(b)
        rel = 1e-5 if index == 0 else 1e-3
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=rel, abs=rel), (a["step"], key, a[key], b[key])


@pytest.mark.parametrize(
    "overrides",
    [
        {"ptx_coef": 0.5},  # the ptx term's pass packed too
        {"advantage_estimator": "grpo", "samples_per_prompt": 2},
        {"lora": LoraConfig(r=4), "actor_lr": 1e-3, "critic_lr": 1e-3},
    ],
    ids=["gae", "grpo", "lora"],
)
def test_a_padding_free_run_with_a_token_budget_is_the_padded_run(rlhf_stack, tmp_path, overrides):
    if "ptx_coef" in overrides:
        overrides = {**overrides, "ptx_data": write_jsonl(tmp_path / "ptx.jsonl", sentiment_rows(32))}
    common = dict(max_steps=2, micro_batch_size=2, **overrides)
    padded = ppo(config(rlhf_stack, tmp_path / "padded", **common))
    packed = ppo(
        config(rlhf_stack, tmp_path / "packed", padding_free=True, max_tokens_per_micro_batch=24, **common)
    )
    one, two = metric_records(padded / "metrics.jsonl"), metric_records(packed / "metrics.jsonl")
    assert one[-1]["objective/kl"] != 0.0  # the updates moved the actor
    assert "ptx_coef" not in overrides or one[0]["loss/ptx"] > 0
    assert_same_runs(one, two)


@pytest.mark.parametrize("budget", ["0", "-1", "1.5"])
def test_a_bad_token_budget_is_one_line_and_status_2(rlhf_stack, tmp_path, capsys, budget):
    out = tmp_path / "bad"
    assert main(ppo_args(rlhf_stack, out, "bf16=false", f"max_tokens_per_micro_batch={budget}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_tokens_per_micro_batch" in err, err
    assert not out.exists()


def test_a_model_whose_attention_mixes_packed_sequences_is_refused(rlhf_stack, tmp_path, capsys, monkeypatch):
    """A body that drops the position ids builds one causal mask over the packed row: sequences mix."""
    from transformers.models.llama import modeling_llama

    forward = modeling_llama.LlamaModel.forward

    def leaky(self, *args, position_ids=None, **kwargs):
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", leaky)
    out = tmp_path / "leaky"
    assert main(ppo_args(rlhf_stack, out, "bf16=false", "padding_free=true")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lets packed sequences attend to each other" in err, err
    assert not out.exists()

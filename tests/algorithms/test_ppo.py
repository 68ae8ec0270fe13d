"""PPO on tiny models: the conventions of PPO-DETAILS.md, each as a test."""

import copy

import torch
from safetensors.torch import load_file

from helpers import sentiment_rows, write_jsonl
from rlhfkit.config import PPOConfig
from rlhfkit.core import last_valid_index, ppo_policy_loss
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.models import scalar_values, sequence_scores
from rlhfkit.models.forward import response_logprobs
from rlhfkit.algorithms.ppo.trainer import (
    load_roles,
    make_experience,
    ppo,
    ppo_update,
    sample,
    score,
    setup,
    split_prompts,
    train_iteration,
)


def make_config(stack, out, **overrides):
    sft_dir, rm_dir, prompts = stack
    fields = dict(
        policy=sft_dir,
        reward_model=rm_dir,
        prompts=prompts,
        out=str(out),
        max_steps=3,
        batch_size=8,
        mini_batch_size=4,
        response_length=10,
        normalize_reward=False,
        actor_lr=1e-4,
        critic_lr=1e-4,
        eval_every=0,
    )
    return PPOConfig(**{**fields, **overrides})


def start(stack, tmp_path, **overrides):
    """A set-up run and its first batch of prompts."""
    config = make_config(stack, tmp_path / "ppo", **overrides)
    run = setup(config, load_roles(config))
    prompts, _ = split_prompts(config, run.roles.tokenizer)
    return run, prompts[: config.batch_size]


def test_first_minibatch_is_the_old_policy(rlhf_stack, tmp_path):
    run, prompts = start(rlhf_stack, tmp_path)
    experience, _ = make_experience(run.roles, sample(run, prompts), 0.05, run.normalise, run.config)
    rows = slice(0, run.config.mini_batch_size)
    with torch.no_grad():
        logp, _ = response_logprobs(
            run.roles.actor,
            experience.input_ids[rows],
            experience.attention_mask[rows],
            experience.context,
            run.config.temperature,
        )
    mask = experience.mask[rows]
    ratio = (logp - experience.old_logp[rows]).exp()[mask]
    assert (ratio - 1).abs().max().item() < 1e-4
    _, stats = ppo_policy_loss(logp, experience.old_logp[rows], experience.advantages[rows], mask)
    assert stats["approx_kl"].item() < 1e-6
    # the trainer measures the same on its own first minibatch
    assert ppo_update(run, experience)["policy/first_ratio_deviation"] < 1e-4


def test_kl_and_non_score_reward_are_exactly_zero_before_any_update(rlhf_stack, tmp_path):
    for estimator in ("k1", "k3"):
        run, prompts = start(rlhf_stack, tmp_path, kl_estimator=estimator)
        _, stats = make_experience(run.roles, sample(run, prompts), 0.05, run.normalise, run.config)
        assert stats["objective/kl"].item() == 0.0
        assert stats["objective/non_score_reward"].item() == 0.0


def test_critic_value_at_the_last_response_token_is_the_rm_score_at_iteration_0(rlhf_stack, tmp_path):
    run, prompts = start(rlhf_stack, tmp_path)
    rollout = sample(run, prompts)
    with torch.no_grad():
        values = scalar_values(run.roles.critic, rollout.input_ids, rollout.attention_mask)  # (B, P + T)
        at_last = values.gather(1, last_valid_index(rollout.attention_mask)[:, None]).squeeze(1)
        scores = sequence_scores(run.roles.reward_model, rollout.input_ids, rollout.attention_mask)
    assert torch.equal(at_last, scores)


def test_reference_and_rm_stay_bit_identical_while_actor_and_critic_move(rlhf_stack, tmp_path):
    run, prompts = start(rlhf_stack, tmp_path)
    before = {
        name: copy.deepcopy(getattr(run.roles, name).state_dict())
        for name in ("actor", "critic", "reference", "reward_model")
    }
    for _ in range(3):
        train_iteration(run, prompts)
    for name, state in before.items():
        after = getattr(run.roles, name).state_dict()
        same = all(torch.equal(state[key], after[key]) for key in state)
        assert same == (name in ("reference", "reward_model")), name
    assert not any(p.requires_grad for p in run.roles.reference.parameters())
    assert not run.roles.reward_model.training and not run.roles.actor.training


def test_micro_batches_give_the_same_update(rlhf_stack, tmp_path):
    """1, 2 or 4 micro-batches per minibatch: the same token-mean gradient, so the same parameters.
    adam_eps = 1 makes the first step ~ lr * gradient, so float noise in tiny gradients is not magnified."""
    overrides = dict(batch_size=8, mini_batch_size=8, ppo_epochs=1, adam_eps=1.0, actor_lr=1.0, critic_lr=1.0)
    run, prompts = start(rlhf_stack, tmp_path, **overrides)
    experience, _ = make_experience(run.roles, sample(run, prompts), 0.05, run.normalise, run.config)
    lengths = experience.mask.sum(1)
    assert lengths.min() < lengths.max(), "rows of one length would not tell token- from row-weighting"
    start_weights = copy.deepcopy(run.roles.actor.state_dict())
    results = []
    for micro in (8, 4, 2):
        run, _ = start(rlhf_stack, tmp_path, micro_batch_size=micro, **overrides)
        ppo_update(run, experience)
        results.append((run.roles.actor.state_dict(), run.roles.critic.state_dict()))
    moved = max((results[0][0][k] - start_weights[k]).abs().max().item() for k in start_weights)
    assert moved > 1e-4
    for actor, critic in results[1:]:
        for key, tensor in actor.items():
            torch.testing.assert_close(tensor, results[0][0][key], rtol=1e-5, atol=1e-7)
        for key, tensor in critic.items():
            torch.testing.assert_close(tensor, results[0][1][key], rtol=1e-5, atol=1e-7)


def test_ptx_coef_zero_is_exactly_plain_ppo(rlhf_stack, tmp_path):
    ptx_data = write_jsonl(tmp_path / "ptx.jsonl", sentiment_rows(32))
    weights = {}
    for name, extra in {
        "plain": {},
        "ptx0": {"ptx_data": ptx_data, "ptx_coef": 0.0},
        "ptx1": {"ptx_data": ptx_data, "ptx_coef": 1.0},
    }.items():
        out = ppo(make_config(rlhf_stack, tmp_path / name, max_steps=2, **extra))
        weights[name] = load_file(out / "actor" / "model.safetensors")
        if name == "ptx1":
            assert all(m["loss/ptx"] > 0 for m in read_metrics(out / "metrics.jsonl"))
    assert all(torch.equal(weights["plain"][k], weights["ptx0"][k]) for k in weights["plain"])
    assert not all(torch.equal(weights["plain"][k], weights["ptx1"][k]) for k in weights["plain"])


def test_score_read_at_eos_and_missing_eos_penalty(rlhf_stack, tmp_path):
    run, prompts = start(rlhf_stack, tmp_path, missing_eos_penalty=-7.0)
    rollout = sample(run, prompts)
    scores, raw = score(run.roles.reward_model, rollout, run.normalise, run.config, chunk=4)
    tok = run.roles.tokenizer
    for row in range(len(prompts)):
        if rollout.stopped[row]:
            # the EOS-truncated sequence scored alone (no padding at all) gives the same score
            keep = rollout.attention_mask[row].bool()
            alone = rollout.input_ids[row][keep]
            assert alone[-1] == tok.eos_token_id
            with torch.no_grad():
                direct = sequence_scores(run.roles.reward_model, alone[None], torch.ones_like(alone)[None])
            torch.testing.assert_close(raw[row], direct[0], rtol=0, atol=1e-5)
            assert scores[row] == raw[row]
    rollout.stopped[:] = False
    penalised, _ = score(run.roles.reward_model, rollout, run.normalise, run.config, chunk=4)
    assert (penalised == -7.0).all()


def test_ppo_raises_the_reward(rlhf_stack, tmp_path):
    config = make_config(
        rlhf_stack, tmp_path / "learn", max_steps=40, batch_size=16, mini_batch_size=8, eval_every=20, seed=0
    )
    out = ppo(config)
    metrics = read_metrics(out / "metrics.jsonl")
    scores = [m["objective/scores"] for m in metrics]
    early, late = sum(scores[:5]) / 5, sum(scores[-10:]) / 10
    assert late > early + 2.0, (early, late)  # seen: 0.94 -> 5.39
    assert all(m["objective/kl"] < 20 for m in metrics)
    evaluations = [m["eval/score"] for m in metrics if "eval/score" in m]
    assert len(evaluations) == 2

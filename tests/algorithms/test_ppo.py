"""PPO on tiny models: the conventions of docs/ppo-details.md, each as a test, through `ppo()` and the
trainer's public steps (prompt_batch, rollout, experience, update)."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from cards import check_card
from helpers import ppo_config, sentiment_rows, write_jsonl
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.core import masked_mean, masked_var
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, scalar_values, sequence_scores
from rlhfkit.runtime.loop import UpdateGuard
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file

make_config = ppo_config


def start(stack, tmp_path, **overrides):
    """A trainer ready for iteration 1, and the experience of its first batch."""
    trainer = PPOTrainer.create(make_config(stack, tmp_path / "ppo", **overrides))
    rollout = trainer.rollout(trainer.prompt_batch(1))
    experience, stats = trainer.experience(rollout)
    return trainer, rollout, experience, stats


def guard():
    return UpdateGuard("test", max_in_a_row=3)


def test_first_minibatch_is_the_old_policy(rlhf_stack, tmp_path):
    trainer, _, experience, _ = start(rlhf_stack, tmp_path)
    rows = slice(0, trainer.config.mini_batch_size)
    with torch.no_grad():
        logp, _, _ = trainer.opt.model(
            experience.input_ids[rows], experience.attention_mask[rows], experience.context, 0.7
        )
    ratio = (logp - experience.old_logp[rows]).exp()[experience.mask[rows]]
    assert (ratio - 1).abs().max().item() < 1e-4
    # the trainer measures the same on its own first minibatch
    assert trainer.update(experience, guard())["policy/first_ratio_deviation"] < 1e-4


def test_kl_and_non_score_reward_are_exactly_zero_before_any_update(rlhf_stack, tmp_path):
    for estimator in ("k1", "k3"):
        _, _, experience, stats = start(rlhf_stack, tmp_path, kl_estimator=estimator)
        assert stats["objective/kl"].item() == 0.0
        assert stats["objective/non_score_reward"].item() == 0.0
        assert torch.equal(experience.old_logp, experience.ref_logp)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32-compute", "bf16-autocast"])
def test_bf16_frozen_weights_still_give_zero_kl_and_the_rm_as_critic(rlhf_stack, tmp_path, bf16):
    """model_dtype=bfloat16 without LoRA: reference and RM are stored in bf16, actor and critic trained in
    fp32. Before any update the KL is 0 (it was -0.0046 per response when the reference computed in bf16 on
    rounded weights) and the critic's values are the RM's: the trained copies start from the rounded
    weights and the frozen ones compute like them (models/precision.py)."""
    trainer, rollout, experience, stats = start(rlhf_stack, tmp_path, model_dtype="bfloat16", bf16=bf16)
    assert {p.dtype for p in trainer.roles.reference.parameters()} == {torch.bfloat16}
    assert abs(stats["objective/kl"].item()) < 1e-4
    assert (experience.old_logp - experience.ref_logp).abs().max().item() < 1e-5
    values = trainer.roles.trainable.value  # the critic, the RM at iteration 0
    with torch.no_grad():
        critic = sequence_scores(values, rollout.input_ids, rollout.attention_mask)  # (B,)
        rm = trainer.roles.scores(rollout.input_ids, rollout.attention_mask)  # (B,)
    torch.testing.assert_close(critic, rm, rtol=0, atol=1e-5)
    assert {p.dtype for p in trainer.roles.reward_model.parameters() if p.ndim > 1} >= {torch.bfloat16}


def test_the_values_ppo_reads_are_the_rm_values_before_the_last_response_token(rlhf_stack, tmp_path):
    """At iteration 0 the critic is the RM: the value PPO uses for response token t is the RM's head read at
    position P - 1 + t (the state before the token), on the normalised scale of the scores."""
    trainer, rollout, experience, _ = start(rlhf_stack, tmp_path, normalize_reward=True)
    stats = read_run_file(rlhf_stack[1])["reward_stats"]
    rm = load_scalar_model(rlhf_stack[1], load_tokenizer(rlhf_stack[1])).eval().to(rollout.input_ids.device)
    with torch.no_grad():
        rm_values = scalar_values(rm, rollout.input_ids, rollout.attention_mask)  # (B, P + T)
    context, mask = experience.context, experience.mask
    expected = (rm_values[:, context - 1 : -1] - stats["mean"]) / max(stats["std"], 1e-6)  # (B, T)
    torch.testing.assert_close(experience.old_values[mask], expected[mask], rtol=0, atol=1e-5)
    shifted = (rm_values[:, context:] - stats["mean"]) / max(stats["std"], 1e-6)  # one position late
    assert (experience.old_values[mask] - shifted[mask]).abs().max() > 1e-3


def test_normalised_scores_use_the_rm_statistics(rlhf_stack, tmp_path):
    """normalize_reward (the default): score = (raw - mean) / std with the RM's saved statistics, so the
    logged means obey the same affine map."""
    out = ppo(make_config(rlhf_stack, tmp_path / "norm", max_steps=2, normalize_reward=True))
    stats = read_run_file(rlhf_stack[1])["reward_stats"]
    assert stats["std"] > 0
    for record in read_metrics(out / "metrics.jsonl"):
        expected = (record["objective/scores_raw"] - stats["mean"]) / stats["std"]
        assert record["objective/scores"] == pytest.approx(expected, abs=1e-5)
        assert record["objective/scores"] != pytest.approx(record["objective/scores_raw"], abs=1e-3)


def test_reference_and_rm_stay_bit_identical_while_actor_and_critic_move(rlhf_stack, tmp_path):
    trainer, _, _, _ = start(rlhf_stack, tmp_path)
    roles = {
        "actor": trainer.roles.trainable.policy,
        "critic": trainer.roles.trainable.value,
        "reference": trainer.roles.reference,
        "reward_model": trainer.roles.reward_model,
    }
    before = {name: copy.deepcopy(model.state_dict()) for name, model in roles.items()}
    for step in (1, 2, 3):
        trainer.step(step, guard())
    for name, state in before.items():
        after = roles[name].state_dict()
        same = all(torch.equal(state[key], after[key]) for key in state)
        assert same == (name in ("reference", "reward_model")), name
    assert not any(p.requires_grad for p in trainer.roles.reference.parameters())
    assert not trainer.roles.reward_model.training and not roles["actor"].training


def test_micro_batches_give_the_same_update(rlhf_stack, tmp_path):
    """1, 2 or 4 micro-batches per minibatch: the same token-mean gradient, so the same parameters.
    adam_eps = 1 makes the first step ~ lr * gradient, so float noise in tiny gradients is not magnified."""
    overrides = dict(batch_size=8, mini_batch_size=8, ppo_epochs=1, adam_eps=1.0, actor_lr=1.0, critic_lr=1.0)
    trainer, _, experience, _ = start(rlhf_stack, tmp_path, **overrides)
    lengths = experience.mask.sum(1)
    assert lengths.min() < lengths.max(), "rows of one length would not tell token- from row-weighting"
    start_weights = copy.deepcopy(trainer.roles.trainable.state_dict())
    results = []
    for micro in (8, 4, 2):
        trainer = PPOTrainer.create(
            make_config(rlhf_stack, tmp_path / "m", micro_batch_size=micro, **overrides)
        )
        trainer.update(experience, guard())
        results.append(trainer.roles.trainable.state_dict())
    moved = max((results[0][k] - start_weights[k]).abs().max().item() for k in start_weights)
    assert moved > 1e-4
    for weights in results[1:]:
        for key, tensor in weights.items():
            torch.testing.assert_close(tensor, results[0][key], rtol=1e-5, atol=1e-7)


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
    trainer, rollout, experience, _ = start(rlhf_stack, tmp_path, missing_eos_penalty=-7.0)
    tok, rm = trainer.roles.tokenizer, trainer.roles.reward_model
    assert rollout.stopped.any()
    for row in range(rollout.input_ids.shape[0]):
        if rollout.stopped[row]:
            # the EOS-truncated sequence scored alone (no padding at all) gives the score PPO used
            alone = rollout.input_ids[row][rollout.attention_mask[row].bool()]
            assert alone[-1] == tok.eos_token_id
            with torch.no_grad():
                direct = sequence_scores(rm, alone[None], torch.ones_like(alone)[None])
            torch.testing.assert_close(experience.scores[row], direct[0], rtol=0, atol=1e-5)
    # two-token responses cannot reach the EOS of this task: every row gets the penalty
    _, short, experience, _ = start(rlhf_stack, tmp_path, missing_eos_penalty=-7.0, response_length=2)
    assert not short.stopped.any()
    assert (experience.scores == -7.0).all()


def test_top_k_one_samples_the_most_likely_token(rlhf_stack, tmp_path):
    """top_k=1 reaches the engine: every sampled token is the argmax of the policy at its position."""
    trainer, rollout, experience, _ = start(rlhf_stack, tmp_path, top_k=1, temperature=1.5)
    policy = load_causal_lm(rlhf_stack[0], trainer.roles.tokenizer).eval().to(rollout.input_ids.device)
    with torch.no_grad():
        logits = policy(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            position_ids=(rollout.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits[:, experience.context - 1 : -1]  # (B, T, V)
    mask = experience.mask
    assert torch.equal(logits.argmax(-1)[mask], rollout.response_ids[mask])


def test_top_p_tiny_is_greedy_too(rlhf_stack, tmp_path):
    _, greedy, _, _ = start(rlhf_stack, tmp_path, top_k=1)
    _, nucleus, _, _ = start(rlhf_stack, tmp_path, top_p=1e-6)
    assert torch.equal(greedy.response_ids, nucleus.response_ids)


def test_whitened_rewards_have_unit_variance(rlhf_stack, tmp_path):
    _, _, plain, _ = start(rlhf_stack, tmp_path)
    _, _, whitened, _ = start(rlhf_stack, tmp_path, whiten_rewards=True)
    mask = whitened.mask
    assert masked_var(plain.rewards, mask).item() != pytest.approx(1.0, abs=0.05)
    assert masked_var(whitened.rewards, mask).item() == pytest.approx(1.0, abs=1e-4)
    # shift_mean=False: the spread is rescaled around the mean, which is kept
    assert masked_mean(whitened.rewards, mask).item() == pytest.approx(
        masked_mean(plain.rewards, mask).item(), abs=1e-5
    )


def test_reward_clip_bounds_the_scores(rlhf_stack, tmp_path):
    _, _, plain, _ = start(rlhf_stack, tmp_path)
    clip = plain.scores.abs().median().item()
    _, _, clipped, _ = start(rlhf_stack, tmp_path, reward_clip=clip)
    torch.testing.assert_close(clipped.scores, plain.scores.clamp(-clip, clip), rtol=0, atol=0)
    assert (plain.scores.abs() > clip).any()


def test_kl_penalty_in_the_loss_leaves_the_reward_alone(rlhf_stack, tmp_path):
    """kl_penalty=loss: the rewards hold the score only, beta * mean(k3) joins the policy loss: once the
    policy has moved off the reference, the same update with beta = 1 and beta = 0 gives other weights."""
    options = dict(kl_penalty="loss", kl_estimator="k3", kl_coef=1.0)
    trainer, _, _, _ = start(rlhf_stack, tmp_path, **options)
    trainer.step(1, guard())  # the policy moves: KL > 0 from here on
    experience, stats = trainer.experience(trainer.rollout(trainer.prompt_batch(2)))
    assert stats["objective/kl"].item() > 0
    # the objective's KL term is logged as in the reward placement: -beta * KL summed over tokens
    assert stats["objective/non_score_reward"].item() == pytest.approx(
        -stats["objective/kl"].item(), rel=1e-5
    )
    mask = experience.mask
    last = mask & (mask.cumsum(1) == mask.sum(1, keepdim=True))  # (B, T) the last valid token
    assert (experience.rewards[experience.mask & ~last] == 0).all()
    assert torch.equal(experience.rewards[last], experience.scores)
    state = copy.deepcopy(trainer.state())
    weights = {}
    for beta in (1.0, 0.0):
        trainer.restore(copy.deepcopy(state))
        trainer.kl_ctl.value = beta
        stats = trainer.update(experience, guard())
        assert stats["loss/kl"] > 0
        weights[beta] = copy.deepcopy(trainer.roles.trainable.policy.state_dict())
    moved = max((weights[1.0][k] - weights[0.0][k]).abs().max().item() for k in weights[1.0])
    assert moved > 1e-6


def test_ratio_variance_is_logged(rlhf_stack, tmp_path):
    records = read_metrics(ppo(make_config(rlhf_stack, tmp_path / "var", max_steps=2)) / "metrics.jsonl")
    assert all(r["policy/ratio_var"] >= 0 for r in records)
    assert any(r["policy/ratio_var"] > 0 for r in records)  # the policy moves within an iteration


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
    final = read_run_file(out)["final"]  # both model cards show the run's final numbers
    assert check_card(out / "actor", ["rlhfkit", "ppo"], final)["pipeline_tag"] == "text-generation"
    assert check_card(out / "critic", ["rlhfkit", "ppo"], final)["pipeline_tag"] == "text-classification"
    assert final["eval/score"] == evaluations[-1]

"""The policy-loss variants (clip-higher, GSPO's sequence ratio, the aggregations, DAPO's dynamic sampling),
the critic-free estimators' advantages, and the corners of whitening, on the tiny stack through the
trainer: each option reaches the loss, checked against values worked out from the experience."""

import copy
import dataclasses
import math

import pytest
import torch

from helpers import ppo_config
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.core import (
    discounted_returns,
    estimator_rewards,
    group_normalised_scores,
    masked_mean,
    masked_var,
)
from rlhfkit.runtime.loop import UpdateGuard
from rlhfkit.runtime.metrics import read_metrics


def constant_reward(prompt: str, response: str) -> float:
    """The same score for every response (a reward function for `test_loss_variants:constant_reward`)."""
    return 1000.1


def config(stack, out, **overrides):
    return ppo_config(stack, out, **{"max_steps": 2, "response_length": 8, "eval_holdout": 8, **overrides})


def start(stack, out, **overrides):
    """A trainer ready for iteration 1, and the experience of its first batch."""
    trainer = PPOTrainer.create(config(stack, out, **overrides))
    experience, stats = trainer.experience(trainer.rollout(trainer.prompt_batch(1)))
    return trainer, experience, stats


def guard():
    return UpdateGuard("test", max_in_a_row=3)


def test_a_constant_reward_with_grpo_leaves_the_policy_exactly_where_it_was(rlhf_stack, tmp_path):
    """Bug: 1000.1 three times had a float32 group mean 1000.09998, and GRPO divided the residue by
    std (0) + 1e-4, so every sample got advantage 0.35 and the policy moved (loss/policy -0.62). Equal
    scores carry no signal: advantages exactly 0, loss/policy exactly 0, the weights bit for bit the same."""
    trainer, experience, _ = start(
        rlhf_stack,
        tmp_path / "run",
        reward_model=None,
        reward_functions=("test_loss_variants:constant_reward",),
        advantage_estimator="grpo",
        samples_per_prompt=3,
        batch_size=6,
        mini_batch_size=6,
    )
    assert (experience.scores == 1000.1).all()
    assert (experience.advantages == 0).all()
    before = copy.deepcopy(trainer.roles.trainable.policy.state_dict())
    for step in (1, 2):
        assert trainer.step(step, guard())["loss/policy"] == 0.0
    after = trainer.roles.trainable.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_response_token_in_the_batch_trains_and_logs_nan_explained_variance(rlhf_stack, tmp_path):
    """Bug: batch_size=1 mini_batch_size=1 response_length=1 passed the config checks and then crashed in
    masked_var (whitening needs 2 values). One token has no spread: its whitened advantage is 0 (and
    whitened rewards keep their value), so the run finishes; the explained variance of one value is
    undefined (nan)."""
    out = ppo(
        config(
            rlhf_stack,
            tmp_path / "one",
            batch_size=1,
            mini_batch_size=1,
            response_length=1,
            whiten_rewards=True,
            eval_holdout=1,
        )
    )
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 2
    assert all(r["loss/policy"] == 0.0 and r["response/length_mean"] == 1.0 for r in records)
    assert all(math.isnan(float(r["val/explained_variance"])) for r in records)
    assert (out / "actor").is_dir()


# --- the estimators' advantages through the trainer ------------------------------------------------------


@pytest.mark.parametrize("scale", [True, False], ids=["grpo", "dr-grpo"])
def test_grpo_advantages_are_the_group_normalised_scores(rlhf_stack, tmp_path, scale):
    """Before any update the KL is 0, so every valid token's advantage is its sequence's baselined score:
    group_normalised_scores(scores, k, scale), which with and without the std differ (so swapping
    `scale_rewards` is caught)."""
    _, experience, _ = start(
        rlhf_stack, tmp_path / "grpo", advantage_estimator="grpo", samples_per_prompt=4, scale_rewards=scale
    )
    mask = experience.mask
    expected = group_normalised_scores(experience.scores, 4, scale)  # (B,)
    other = group_normalised_scores(experience.scores, 4, not scale)  # (B,)
    assert (expected - other).abs().max() > 1e-3, "a batch where scaling changes nothing tells nothing"
    torch.testing.assert_close(
        experience.advantages[mask], expected[:, None].expand_as(mask)[mask], rtol=0, atol=1e-6
    )
    assert (experience.advantages[~mask] == 0).all()


def test_reinforce_pp_advantages_are_the_whitened_returns(rlhf_stack, tmp_path):
    """REINFORCE++: the rewards-to-go whitened over the batch's valid tokens: mean 0 AND unit variance."""
    _, experience, _ = start(rlhf_stack, tmp_path / "rpp", advantage_estimator="reinforce_pp")
    mask = experience.mask
    returns = discounted_returns(experience.rewards, mask)  # (B, T)
    assert masked_var(returns, mask).item() != pytest.approx(1.0, abs=0.05)  # whitening has work to do
    assert masked_mean(experience.advantages, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_var(experience.advantages, mask).item() == pytest.approx(1.0, abs=1e-4)
    mean, std = masked_mean(returns, mask), masked_var(returns, mask).sqrt()
    expected = (returns - mean) / std  # (B, T)
    torch.testing.assert_close(experience.advantages[mask], expected[mask], rtol=0, atol=1e-4)


def test_rloo_baselines_the_sequence_reward_or_the_score(rlhf_stack, tmp_path):
    """After one update the KL is not 0. `sequence_reward` (the default, Ahmadian et al. 2024): every
    token's advantage is R_i - mean of the other R_j, R = score - beta * summed KL; `score`: the score less
    the others' mean score, minus beta times the KL still ahead of the token (rewards-to-go)."""
    trainer, _, _ = start(
        rlhf_stack, tmp_path / "rloo", advantage_estimator="rloo", samples_per_prompt=2, kl_coef=0.5
    )
    trainer.step(1, guard())
    rollout = trainer.rollout(trainer.prompt_batch(2))
    experience, stats = trainer.experience(rollout)
    assert stats["objective/kl"].item() != 0.0
    mask, beta = experience.mask, trainer.kl_ctl.value
    kl = torch.where(mask, experience.old_logp - experience.ref_logp, 0.0)  # (B, T) k1
    R = (experience.scores - beta * kl.sum(1)).view(-1, 2)  # (B / 2, 2)
    expected = (R - R.flip(1)).reshape(-1)  # (B,): the other sample of a pair is the baseline
    torch.testing.assert_close(
        experience.advantages[mask], expected[:, None].expand_as(mask)[mask], rtol=0, atol=1e-5
    )
    trainer.config = dataclasses.replace(trainer.config, rloo_baseline="score")
    experience, _ = trainer.experience(rollout)
    s = experience.scores.view(-1, 2)
    ahead = kl.flip(1).cumsum(1).flip(1)  # (B, T): KL of the token and of those after it
    expected = (s - s.flip(1)).reshape(-1)[:, None] - beta * ahead  # (B, T)
    torch.testing.assert_close(experience.advantages[mask], expected[mask], rtol=0, atol=1e-5)


# --- each loss variant reaches the loss: the first minibatch against a hand-computed value ---------------

ONE_MINIBATCH = dict(batch_size=8, mini_batch_size=8, ppo_epochs=1)


def first_minibatch(trainer, experience, shift):
    """The update's statistics on one minibatch whose old log-probs are the current ones minus `shift`
    (B, T): the ratio is exp(shift) (the policy has not moved yet: |ratio - 1| < 1e-4 otherwise)."""
    shifted = dataclasses.replace(experience, old_logp=experience.old_logp - shift)
    return trainer.update(shifted, guard())


def pessimistic(advantages, ratio, low, high):
    """The clipped surrogate's term, branch by branch: A > 0 gains at most min(r, 1 + high), A < 0 pays at
    least max(r, 1 - low)."""
    return torch.where(
        advantages > 0, -advantages * ratio.clamp(max=1 + high), -advantages * ratio.clamp(min=1 - low)
    )


@pytest.mark.parametrize("clip_high", [None, 0.4])
def test_clip_high_reaches_the_loss(rlhf_stack, tmp_path, clip_high):
    """Every ratio exp(0.3) = 1.35: with clip 0.2 the tokens with A > 0 are clipped at 1.2 (clipfrac = their
    share); with clip_high 0.4 none is."""
    trainer, experience, _ = start(rlhf_stack, tmp_path / "ch", clip_high=clip_high, **ONE_MINIBATCH)
    stats = first_minibatch(trainer, experience, torch.full_like(experience.old_logp, 0.3))
    mask, adv = experience.mask, experience.advantages
    high = 0.2 if clip_high is None else clip_high
    expected = pessimistic(adv, torch.full_like(adv, math.exp(0.3)), 0.2, high)[mask].mean()
    assert stats["loss/policy"] == pytest.approx(expected.item(), abs=1e-4)
    positive = (adv[mask] > 0).float().mean().item()
    assert stats["policy/clipfrac"] == pytest.approx(positive if clip_high is None else 0.0, abs=1e-6)


def test_the_sequence_ratio_reaches_the_loss(rlhf_stack, tmp_path):
    """Log-ratios +0.3, -0.3, +0.3, ... along each response: every token ratio is outside [0.8, 1.2], but a
    response's ratio is exp(its mean log-ratio): exp(0.3 / n) for odd n valid tokens, 1 for even n."""
    trainer, experience, _ = start(rlhf_stack, tmp_path / "gspo", ratio_level="sequence", **ONE_MINIBATCH)
    mask, adv = experience.mask, experience.advantages
    signs = torch.tensor([1.0, -1.0]).repeat(mask.shape[1])[: mask.shape[1]]  # (T,)
    shift = 0.3 * signs.expand_as(adv)  # (B, T)
    stats = first_minibatch(trainer, experience, shift)
    lengths = mask.sum(1)  # (B,)
    ratio = torch.where(lengths % 2 == 1, torch.exp(0.3 / lengths), torch.ones(()))  # (B,)
    assert (lengths % 2 == 1).any() and (lengths % 2 == 0).any()
    expected = pessimistic(adv, ratio[:, None].expand_as(adv), 0.2, 0.2)[mask].mean()
    assert stats["loss/policy"] == pytest.approx(expected.item(), abs=1e-4)
    token_level = pessimistic(adv, torch.exp(shift), 0.2, 0.2)[mask].mean()
    assert abs(token_level - expected) > 1e-3  # the token ratios would give another loss


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum_norm"])
def test_each_aggregation_reaches_the_loss(rlhf_stack, tmp_path, aggregation):
    """GRPO gives every token of response i its score's a_i; old log-probs shifted by +-0.1 by row make
    the ratios r_i = exp(+-0.1), inside the clip range, so each token's term is -a_i r_i. With n_i tokens:
    token_mean: -sum(a_i r_i n_i) / sum(n_i) (long responses weigh more); sequence_mean: -mean(a_i r_i);
    sequence_sum_norm: -mean(a_i r_i n_i / 24), Dr. GRPO's division by response_length, not the batch's
    width. (Unshifted, the centred a_i would make some of them 0 alike.)"""
    trainer, experience, _ = start(
        rlhf_stack,
        tmp_path / aggregation,
        loss_aggregation=aggregation,
        response_length=24,
        advantage_estimator="grpo",
        samples_per_prompt=2,
        **ONE_MINIBATCH,
    )
    mask, adv = experience.mask, torch.where(experience.mask, experience.advantages, 0.0)
    assert mask.shape[1] < 24, "a batch as wide as the budget would not tell T from response_length"
    shift = torch.tensor([0.1, -0.1]).repeat(4)[:, None].expand_as(adv)  # (B, T)
    terms = -adv * shift.exp()  # (B, T), 0 at padding
    values = {
        "token_mean": (terms.sum() / mask.sum()).item(),
        "sequence_mean": (terms.sum(1) / mask.sum(1)).mean().item(),
        "sequence_sum_norm": (terms.sum(1) / 24).mean().item(),
    }
    spread = sorted(values.values())
    assert min(b - a for a, b in zip(spread[:-1], spread[1:], strict=True)) > 1e-3, "must differ"
    stats = first_minibatch(trainer, experience, shift)
    assert stats["loss/policy"] == pytest.approx(values[aggregation], abs=1e-5)
    assert stats["policy/clipfrac"] == 0.0


def half_the_prompts(prompt: str, response: str) -> float:
    """Varies with the response for some nouns, constant for the others: groups of both kinds."""
    return float(len(response)) if prompt.split()[1] in ("movie", "pizza", "phone", "hotel", "book") else 1.0


DROPPING = dict(
    reward_model=None,
    reward_functions=("test_loss_variants:half_the_prompts",),
    advantage_estimator="grpo",
    samples_per_prompt=2,
    **ONE_MINIBATCH,
)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum_norm"])
def test_drop_uniform_groups_leaves_them_out_of_the_loss(rlhf_stack, tmp_path, aggregation):
    """GRPO gives a uniform group 0 advantage (before any update the KL is 0), so kept or dropped its rows
    add 0 to the loss's sum (whatever their ratio); dropped, they no longer count in what the loss divides
    by. On the first minibatch loss/policy is then the loss over every row scaled by all / kept: tokens
    for token_mean, responses (rows with a valid token, counted over the whole minibatch) for the two
    sequence aggregations (sequence_sum_norm's normaliser is response_length, the same either way)."""
    losses, experiences = {}, {}
    for drop in (False, True):
        trainer, experiences[drop], stats = start(
            rlhf_stack,
            tmp_path / str(drop),
            drop_uniform_groups=drop,
            loss_aggregation=aggregation,
            **DROPPING,
        )
        # ratios exp(+-0.16), exp(+-0.08), ... by pair (inside the clip range): unshifted (or with the same
        # ratios for each pair), a pair's centred advantages would cancel in the sequence means (loss 0 by
        # design); halving steps make no signed sum of the kept pairs 0
        steps = torch.tensor([0.16, 0.08, 0.04, 0.02]).repeat_interleave(2)  # (B,)
        signs = torch.tensor([1.0, -1.0]).repeat(4)  # (B,)
        shift = (steps * signs)[:, None].expand_as(experiences[drop].old_logp)  # (B, T)
        losses[drop] = first_minibatch(trainer, experiences[drop], shift)["loss/policy"]
    uniform = (experiences[True].scores.view(-1, 2) == experiences[True].scores.view(-1, 2)[:, :1]).all(1)
    assert 0 < uniform.float().mean() < 1, "the batch needs both kinds of group"
    assert stats["policy/uniform_groups"] == pytest.approx(uniform.float().mean().item())
    dropped = uniform.repeat_interleave(2)  # (B,)
    assert not experiences[True].mask[dropped].any()
    assert torch.equal(experiences[True].mask[~dropped], experiences[False].mask[~dropped])
    if aggregation == "token_mean":
        counts = [experiences[d].mask.sum().item() for d in (False, True)]  # all tokens, kept tokens
    else:
        counts = [experiences[d].mask.any(1).sum().item() for d in (False, True)]  # all rows, kept rows
    assert counts[0] > counts[1]
    assert losses[True] == pytest.approx(losses[False] * counts[0] / counts[1], abs=1e-5)
    assert abs(losses[False]) > 1e-3


def test_whiten_rewards_ignores_dropped_rows(rlhf_stack, tmp_path):
    """`whiten_rewards` scales the rewards by the statistics of the rows the update trains on: a dropped
    group's zeros would otherwise shrink the mean and the variance of the kept ones. Before any update the
    KL is 0, so the raw rewards are GRPO's baselined scores on each last token (core.estimator_rewards);
    whitened with shift_mean=False: (x - m) / sqrt(v + 1e-8) + m, m and v (unbiased) over the kept rows."""
    trainer = PPOTrainer.create(
        config(rlhf_stack, tmp_path / "w", drop_uniform_groups=True, whiten_rewards=True, **DROPPING)
    )
    rollout = trainer.rollout(trainer.prompt_batch(1))
    experience, _ = trainer.experience(rollout)
    full, kept = rollout.response_mask, experience.mask  # (B, T), (B, T)
    assert kept.sum() < full.sum() and kept.any(), "the batch needs dropped and kept rows"
    raw, _ = estimator_rewards(
        experience.scores, experience.old_logp, experience.ref_logp, full, trainer.kl_ctl.value, "grpo", 2
    )  # (B, T)
    x, everything = raw[kept], raw[full]
    expected = (x - x.mean()) / (x.var() + 1e-8).sqrt() + x.mean()
    over_all = (x - everything.mean()) / (everything.var() + 1e-8).sqrt() + everything.mean()
    assert (expected - over_all).abs().max() > 1e-3, "whitening over every row must give another value"
    torch.testing.assert_close(experience.rewards[kept], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(experience.advantages, discounted_returns(experience.rewards, kept))


def test_when_every_group_is_uniform_the_update_is_skipped(rlhf_stack, tmp_path):
    trainer, experience, stats = start(
        rlhf_stack,
        tmp_path / "all",
        reward_model=None,
        reward_functions=("test_loss_variants:constant_reward",),
        advantage_estimator="rloo",
        samples_per_prompt=2,
        drop_uniform_groups=True,
        kl_penalty="loss",
        kl_estimator="k3",
    )
    assert stats["policy/uniform_groups"].item() == 1.0 and not experience.mask.any()
    before = copy.deepcopy(trainer.roles.trainable.policy.state_dict())
    assert trainer.update(experience, guard()) == {}
    record = trainer.step(1, guard())
    assert record["policy/uniform_groups"] == 1.0 and "loss/policy" not in record
    after = trainer.roles.trainable.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.opt.scheduler.last_epoch == 0  # no optimiser step, so the schedule has not moved


@pytest.mark.parametrize("aggregation", ["sequence_mean", "sequence_sum_norm"])
def test_micro_batches_give_the_same_update_for_each_aggregation(rlhf_stack, tmp_path, aggregation):
    """1, 2 or 4 micro-batches: the same update, with the policy loss (and the KL in the loss) aggregated by
    response and the critic's value loss by token (each micro-batch weighted by its share of each count).
    Two minibatches, so the second sees a moved policy and a KL that is not 0."""
    overrides = dict(
        batch_size=8, mini_batch_size=4, ppo_epochs=1, adam_eps=1.0, actor_lr=1.0, critic_lr=1.0,
        loss_aggregation=aggregation, kl_penalty="loss", kl_estimator="k3", ratio_level="sequence",
    )  # fmt: skip
    trainer, experience, _ = start(rlhf_stack, tmp_path, **overrides)
    lengths = experience.mask.sum(1)
    assert lengths.min() < lengths.max(), "rows of one length would not tell the weightings apart"
    start_weights = copy.deepcopy(trainer.roles.trainable.state_dict())
    results = []
    for micro in (4, 2, 1):
        trainer = PPOTrainer.create(config(rlhf_stack, tmp_path / "m", micro_batch_size=micro, **overrides))
        stats = trainer.update(experience, guard())
        assert stats["loss/kl"] > 0
        results.append(trainer.roles.trainable.state_dict())
    moved = max((results[0][k] - start_weights[k]).abs().max().item() for k in start_weights)
    assert moved > 1e-4
    for weights in results[1:]:
        for key, tensor in weights.items():
            torch.testing.assert_close(tensor, results[0][key], rtol=1e-5, atol=1e-7)


def test_garbage_at_padding_leaves_the_kl_in_the_loss_finite(rlhf_stack, tmp_path):
    """Bug: k3 = exp(-d) - 1 + d was computed at every position before masking; a padded position with
    log pi - log pi_ref = -200 gives exp(200) = inf in float32, and the backward through the mask's
    where() turns inf * 0 into a NaN gradient (the guard then skips every step). Padding must not matter:
    garbage there gives the update of the clean experience, bit for bit."""
    options = dict(kl_penalty="loss", kl_estimator="k3", **ONE_MINIBATCH)
    trainer, experience, _ = start(rlhf_stack, tmp_path / "clean", **options)
    padding = ~experience.mask  # (B, T)
    assert padding.any(), "a batch without padding tells nothing"
    garbage = dataclasses.replace(experience, ref_logp=experience.ref_logp.masked_fill(padding, 200.0))
    before = copy.deepcopy(trainer.roles.trainable.policy.state_dict())
    weights = []
    for exp in (experience, garbage):
        trainer = (
            trainer if exp is experience else PPOTrainer.create(config(rlhf_stack, tmp_path / "g", **options))
        )
        stats = trainer.update(exp, guard())
        assert math.isfinite(stats["loss/kl"])
        weights.append(trainer.roles.trainable.policy.state_dict())
    assert max((weights[1][k] - before[k]).abs().max().item() for k in before) > 0  # a step was taken
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in before)


def test_the_config_checks_the_loss_options(rlhf_stack, tmp_path):
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"clip_high \(0.1\) must be >= clip \(0.2\)"):
        config(rlhf_stack, tmp_path, clip_high=0.1)
    with pytest.raises(ConfigError, match="drop_uniform_groups .* grpo or rloo \\(got gae\\)"):
        config(rlhf_stack, tmp_path, drop_uniform_groups=True)
    assert config(rlhf_stack, tmp_path, clip_high=0.2).clip_high == 0.2  # equal to clip: allowed

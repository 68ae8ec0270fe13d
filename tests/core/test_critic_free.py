"""The estimators' pieces, by hand: GRPO's and RLOO's group baselines, rewards-to-go, and per estimator the
rewards (step 6) and advantages (step 7) of a PPO iteration."""

import pytest
import torch

from rlhfkit.core import (
    baselined_scores,
    discounted_returns,
    estimator_advantages,
    estimator_rewards,
    group_normalised_scores,
    leave_one_out_scores,
    uniform_groups,
)


def test_grpo_subtracts_the_group_mean_and_divides_by_its_std():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0, 16.0])  # two groups of 3
    out = group_normalised_scores(scores, 3)
    # (1, 3, 10): mean 14/3, unbiased std sqrt((121/9 + 25/9 + 256/9) / 2) = sqrt(67/3)
    std = (67 / 3) ** 0.5
    expected_1 = [(1 - 14 / 3) / (std + 1e-4), (3 - 14 / 3) / (std + 1e-4), (10 - 14 / 3) / (std + 1e-4)]
    # (10, 10, 16): mean 12, std sqrt((4 + 4 + 16) / 2) = sqrt(12)
    expected_2 = [-2 / (12**0.5 + 1e-4), -2 / (12**0.5 + 1e-4), 4 / (12**0.5 + 1e-4)]
    assert out.tolist() == pytest.approx(expected_1 + expected_2, rel=1e-6)


def test_grpo_without_scaling_only_centres_dr_grpo():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0, 16.0])
    assert group_normalised_scores(scores, 3, scale=False).tolist() == pytest.approx(
        [1 - 14 / 3, 3 - 14 / 3, 10 - 14 / 3, -2.0, -2.0, 4.0], rel=1e-6
    )


def test_grpo_gives_zero_to_a_group_whose_scores_are_equal():
    """All samples equally good: nothing to learn from the group (std 0 is guarded, not a NaN)."""
    out = group_normalised_scores(torch.tensor([2.0, 2.0, 5.0, 7.0]), 2)
    assert out[:2].tolist() == [0.0, 0.0] and torch.isfinite(out).all()


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 4.0])  # groups (1, 2, 6) and (0, 4, 4)
    expected = [1 - 4.0, 2 - 3.5, 6 - 1.5, 0 - 4.0, 4 - 2.0, 4 - 2.0]
    assert leave_one_out_scores(scores, 3).tolist() == pytest.approx(expected)


def test_rloo_of_a_pair_is_the_difference():
    assert leave_one_out_scores(torch.tensor([3.0, 1.0]), 2).tolist() == [2.0, -2.0]


def test_rewards_to_go_sum_the_rewards_ahead_and_stop_at_the_mask():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)  # row 2 ends after its second token
    assert discounted_returns(rewards, mask).tolist() == [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]]
    # gamma 0.5: G_2 = 3, G_1 = 2 + 1.5, G_0 = 1 + 0.5 * 3.5
    assert discounted_returns(rewards, mask, 0.5)[0].tolist() == [2.75, 3.5, 3.0]


def test_no_function_changes_its_arguments():
    scores, rewards, mask = torch.tensor([1.0, 2.0]), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    copies = scores.clone(), rewards.clone()
    group_normalised_scores(scores, 2), leave_one_out_scores(scores, 2), discounted_returns(rewards, mask)
    assert torch.equal(scores, copies[0]) and torch.equal(rewards, copies[1])


# --- equal scores give exactly 0, for any group size ------------------------------------------------------


@pytest.mark.parametrize("group", [2, 3, 4, 5, 7])
@pytest.mark.parametrize("value", [1000.1, -3.3, 0.1, 123456.7])
def test_a_group_of_equal_scores_gives_exactly_zero(group, value):
    """A float32 mean of equal values can miss them by a rounding residue: (3 x 1000.1) / 3 is 1000.09998,
    and GRPO divided that residue by std (0) + 1e-4, giving 0.349 to every sample of the group (the old
    k=2 test happened to be exact). RLOO's mean of the others had the same residue (6.1e-5)."""
    scores = torch.cat([torch.full((group,), value), torch.arange(group, dtype=torch.float32)])  # 2 groups
    for out in (
        group_normalised_scores(scores, group),
        group_normalised_scores(scores, group, scale=False),
        leave_one_out_scores(scores, group),
    ):
        assert out[:group].tolist() == [0.0] * group
        assert out[group:].abs().min() > 0 or group % 2  # the other group keeps its spread
    assert group_normalised_scores(torch.full((3,), 1000.1), 3).tolist() == [0.0, 0.0, 0.0]


def test_the_shift_leaves_the_baselines_of_unequal_scores_as_they_were():
    """Both baselines are unchanged by adding a constant to a group: centred values by hand, far from 0."""
    scores = torch.tensor([1000.0, 1002.0, 1004.0], dtype=torch.float64)
    # mean 1002, unbiased std sqrt((4 + 0 + 4) / 2) = 2
    assert group_normalised_scores(scores, 3).tolist() == pytest.approx([-2 / 2.0001, 0.0, 2 / 2.0001])
    # others' means: 1003, 1002, 1001
    assert leave_one_out_scores(scores, 3).tolist() == pytest.approx([-3.0, 0.0, 3.0])


def test_uniform_groups_by_hand():
    scores = torch.tensor([2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 1000.1, 1000.1, 1000.1])
    assert uniform_groups(scores, 3).tolist() == [True, False, True]
    assert uniform_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [True, False]


# --- per estimator: the rewards (step 6) and the advantages (step 7) -------------------------------------

# Two prompts, two samples each (group 2); B = 4, T = 3. Row lengths 3, 2, 1, 3.
SCORES = torch.tensor([1.0, 3.0, 5.0, 5.0], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
# log pi - log pi_ref per token (k1); padding holds garbage that must not matter
DIFF = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0], [0.4, 9.0, 9.0], [0.0, 0.0, 0.2]], dtype=torch.float64)
BETA = 0.5


def rewards_for(estimator, **options):
    ref = torch.zeros_like(DIFF)
    return estimator_rewards(SCORES, DIFF, ref, MASK, BETA, estimator, 2, **options)


def test_gae_and_reinforce_pp_rewards_are_the_kl_shaped_scores():
    # -0.5 * diff on each valid token, the score added on the last one
    expected = [[-0.05, -0.1, 1 - 0.15], [-0.25, 3 - 0.25, 0.0], [5 - 0.2, 0.0, 0.0], [0.0, 0.0, 5 - 0.1]]
    for estimator in ("gae", "reinforce_pp"):
        rewards, kl = rewards_for(estimator)
        torch.testing.assert_close(rewards, torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(kl, torch.where(MASK, DIFF, 0.0))


def test_grpo_rewards_carry_the_group_normalised_score():
    # groups (1, 3): mean 2, std sqrt(2) -> -+1 / (sqrt(2) + 1e-4); group (5, 5): exactly 0
    a = 1 / (2**0.5 + 1e-4)
    expected = [[-0.05, -0.1, -a - 0.15], [-0.25, a - 0.25, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.0, -0.1]]
    torch.testing.assert_close(rewards_for("grpo")[0], torch.tensor(expected, dtype=torch.float64))
    # scale=False (Dr. GRPO): only centred, -1 and +1
    expected = [[-0.05, -0.1, -1.15], [-0.25, 0.75, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.0, -0.1]]
    torch.testing.assert_close(
        rewards_for("grpo", scale=False)[0], torch.tensor(expected, dtype=torch.float64)
    )


def test_rloo_rewards_by_baseline():
    # score: the score minus the other sample's (pairs: -2, +2, 0, 0), per-token KL kept
    expected = [[-0.05, -0.1, -2.15], [-0.25, 1.75, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.0, -0.1]]
    rewards, _ = rewards_for("rloo", rloo_baseline="score")
    torch.testing.assert_close(rewards, torch.tensor(expected, dtype=torch.float64))
    # sequence_reward (Ahmadian et al.): R = score - 0.5 * summed KL = 1 - 0.3, 3 - 0.5, 5 - 0.2, 5 - 0.1
    # = 0.7, 2.5, 4.8, 4.9; less the other sample's R: -1.8, 1.8, -0.1, 0.1, on the last token only
    expected = [[0.0, 0.0, -1.8], [0.0, 1.8, 0.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.1]]
    rewards, kl = rewards_for("rloo")  # the default
    torch.testing.assert_close(rewards, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(kl, torch.where(MASK, DIFF, 0.0))  # the KL itself is still reported


def test_estimator_advantages_by_hand():
    rewards = torch.tensor([[2.0, 0.0, 4.0], [0.0, 8.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    values = torch.zeros_like(rewards)
    # rewards-to-go: [6, 4, 4], [8, 8, 0]
    to_go = torch.tensor([[6.0, 4.0, 4.0], [8.0, 8.0, 0.0]], dtype=torch.float64)
    for estimator in ("grpo", "rloo"):  # the baseline is already in the rewards: no whitening
        advantages, returns = estimator_advantages(rewards, values, mask, estimator)
        torch.testing.assert_close(advantages, to_go)
        torch.testing.assert_close(returns, to_go)
    # REINFORCE++: whitened; valid returns 6, 4, 4, 8, 8: mean 6, unbiased var (0 + 4 + 4 + 4 + 4) / 4 = 4,
    # so (G - 6) / 2 (a variance other than 1: centring alone would not pass)
    advantages, returns = estimator_advantages(rewards, values, mask, "reinforce_pp")
    std = (4 + 1e-8) ** 0.5
    expected = torch.tensor([[0.0, -2 / std, -2 / std], [2 / std, 2 / std, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, to_go)
    # GAE with zero values, gamma = 1, lam = 0.5: A_t = r_t + 0.5 A_{t+1}, from the end: A_2 = 4,
    # A_1 = 0 + 0.5 * 4 = 2, A_0 = 2 + 0.5 * 2 = 3; row 2: A_1 = 8, A_0 = 0 + 0.5 * 8 = 4. Valid mean
    # 21 / 5 = 4.2, then whitened; returns = A + V = A (unwhitened)
    advantages, returns = estimator_advantages(rewards, values, mask, "gae", lam=0.5)
    raw = torch.tensor([[3.0, 2.0, 4.0], [4.0, 8.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(returns, raw)
    mean = 4.2
    var = sum((v - mean) ** 2 for v in (3.0, 2.0, 4.0, 4.0, 8.0)) / 4
    torch.testing.assert_close(advantages, torch.where(mask, (raw - mean) / (var + 1e-8) ** 0.5, 0.0))


def test_baselined_scores_by_estimator():
    scores = torch.tensor([1.0, 3.0])
    assert baselined_scores(scores, "gae", 2).tolist() == [1.0, 3.0]
    assert baselined_scores(scores, "reinforce_pp", 2).tolist() == [1.0, 3.0]
    assert baselined_scores(scores, "rloo", 2).tolist() == [-2.0, 2.0]
    assert baselined_scores(scores, "grpo", 2, scale=False).tolist() == [-1.0, 1.0]
    assert baselined_scores(scores, "grpo", 2).tolist() == pytest.approx(
        [-1 / (2**0.5 + 1e-4), 1 / (2**0.5 + 1e-4)]
    )


def test_unknown_estimator_or_baseline_is_an_error():
    """A misspelt estimator would fall through to the last branch (no baseline, no whitening), and an
    unknown rloo_baseline to `score`: each is a ValueError naming the value and the allowed ones."""
    scores, values = torch.tensor([1.0, 3.0]), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown estimator 'ppo'; expected one of 'gae', 'grpo'"):
        baselined_scores(scores, "ppo", 2)
    with pytest.raises(ValueError, match="unknown estimator 'GRPO'"):
        rewards_for("GRPO")
    with pytest.raises(ValueError, match="unknown rloo_baseline 'scores'; expected one of 'sequence_reward'"):
        rewards_for("rloo", rloo_baseline="scores")
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        estimator_advantages(values, values, MASK[:2], "reinforce")

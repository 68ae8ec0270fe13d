"""The critic-free estimators' pieces, by hand: GRPO's and RLOO's group baselines, rewards-to-go."""

import pytest
import torch

from rlhfkit.core import discounted_returns, group_normalised_scores, leave_one_out_scores


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

"""The RL math on multi-turn episodes: a mask with holes (the environment's tokens between two policy turns),
turn rewards inside the response. Values worked out by hand."""

import pytest
import torch

from rlhfkit.core import (
    discounted_returns,
    estimator_rewards,
    gae,
    group_normalised_scores,
    kl_penalty_loss,
    leave_one_out_scores,
    ppo_policy_loss,
    value_loss,
)

# policy, policy, environment, environment, policy, policy, padding
MASK = torch.tensor([[1, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
ENV = torch.tensor([[0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)


def test_gae_steps_over_the_environments_tokens():
    gamma, lam = 0.9, 0.8
    inf = float("inf")  # whatever sits at the environment's positions must not matter
    rewards = torch.tensor([[0.0, 1.0, inf, -inf, 0.0, 2.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, inf, 7.0, 0.4, 0.1, 9.0]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, MASK, gamma, lam)
    # the policy's trajectory is positions 0, 1, 4, 5: position 1 bootstraps from V(4), not from V(2)
    a5 = 2.0 + 0.0 - 0.1
    a4 = (0.0 + gamma * 0.1 - 0.4) + gamma * lam * a5
    a1 = (1.0 + gamma * 0.4 - 0.2) + gamma * lam * a4
    a0 = (0.0 + gamma * 0.2 - 0.5) + gamma * lam * a1
    expected = torch.tensor([[a0, a1, 0, 0, a4, a5, 0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, (expected + values).where(MASK, 0.0), rtol=0, atol=1e-12)
    # the same as GAE on the policy's tokens alone, side by side
    compact = gae(
        torch.tensor([[0.0, 1.0, 0.0, 2.0]]),
        torch.tensor([[0.5, 0.2, 0.4, 0.1]]),
        torch.ones(1, 4),
        gamma,
        lam,
    )[0]
    torch.testing.assert_close(advantages[MASK].float(), compact[0], rtol=0, atol=1e-6)


def test_rewards_to_go_are_not_discounted_over_the_environments_tokens():
    rewards = torch.tensor([[1.0, 0.0, 3.0, 3.0, 0.0, 2.0, 4.0]])
    returns = discounted_returns(rewards, MASK, gamma=0.5)
    # G5 = 2, G4 = 0 + 0.5 * 2 = 1, G1 = 0 + 0.5 * 1 = 0.5 (not 0.5^3), G0 = 1 + 0.5 * 0.5
    assert returns.tolist() == [[1.25, 0.5, 0.0, 0.0, 1.0, 2.0, 0.0]]


def episodes():
    """Two episodes of one prompt (a GRPO/RLOO group): scores, turn rewards on each turn's last token."""
    scores = torch.tensor([0.5, -1.0])
    turns = torch.zeros(2, 7)
    turns[0, 1], turns[0, 5] = 1.0, 2.0  # episode 0: turn 1 rewarded 1, turn 2 rewarded 2
    turns[1, 1] = 3.0  # episode 1: turn 1 rewarded 3
    mask = MASK.expand(2, -1)
    logp, ref = torch.zeros(2, 7), torch.zeros(2, 7)
    return scores, turns, mask, logp, ref


def test_gae_rewards_keep_each_turns_reward_at_its_position():
    scores, turns, mask, logp, ref = episodes()
    rewards, _ = estimator_rewards(scores, logp, ref, mask, 0.0, "gae", turn_rewards=turns)
    # the score on the last policy token (5), each turn's reward where it was given
    assert rewards.tolist() == [[0, 1, 0, 0, 0, 2.5, 0], [0, 3, 0, 0, 0, -1, 0]]


@pytest.mark.parametrize(
    ("estimator", "baseline"),
    [
        ("grpo", lambda totals: group_normalised_scores(totals, 2)),
        ("rloo", lambda totals: leave_one_out_scores(totals, 2)),
    ],
)
def test_a_group_baseline_compares_whole_episodes(estimator, baseline):
    scores, turns, mask, logp, ref = episodes()
    totals = scores + turns.sum(1)  # 3.5 and 2.0
    rewards, _ = estimator_rewards(
        scores, logp, ref, mask, 0.0, estimator, 2, rloo_baseline="score", turn_rewards=turns
    )
    # the episode's baselined total on its last policy token (5), as a single response's score; nothing else
    expected = torch.zeros(2, 7)
    expected[:, 5] = baseline(totals)
    torch.testing.assert_close(rewards, expected, rtol=0, atol=0)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("rloo_baseline", ["score", "sequence_reward"])
def test_a_group_of_equal_totals_gives_exactly_zero_everywhere(estimator, rloo_baseline):
    # a step cost of -0.1 a turn and the same score: no signal, whatever the turns' rewards
    turns = torch.zeros(2, 7)
    turns[:, 1] = turns[:, 5] = -0.1
    rewards, _ = estimator_rewards(
        torch.zeros(2), torch.zeros(2, 7), torch.zeros(2, 7), MASK.expand(2, -1), 0.1, estimator, 2,
        rloo_baseline=rloo_baseline, turn_rewards=turns,
    )  # fmt: skip
    assert torch.equal(discounted_returns(rewards, MASK.expand(2, -1)), torch.zeros(2, 7))


def test_rloo_sequence_reward_subtracts_the_kl_from_the_episodes_total():
    scores, turns, mask, _, _ = episodes()
    logp = torch.full((2, 7), -1.0)
    ref = torch.full((2, 7), -1.5)  # k1 = 0.5 per policy token, 4 policy tokens: 2 per episode
    rewards, _ = estimator_rewards(scores, logp, ref, mask, 0.1, "rloo", 2, turn_rewards=turns)
    sequence = scores + turns.sum(1) - 0.1 * 2.0  # 3.3 and 1.8
    first = discounted_returns(rewards, mask)[:, 0]
    torch.testing.assert_close(first, leave_one_out_scores(sequence, 2), rtol=0, atol=1e-6)


def test_no_turn_rewards_is_the_single_response_case_bit_for_bit():
    scores, _, mask, logp, ref = episodes()
    for estimator in ("gae", "grpo", "rloo", "reinforce_pp"):
        plain = estimator_rewards(scores, logp + 0.3, ref, mask, 0.05, estimator, 2)
        zeros = estimator_rewards(
            scores, logp + 0.3, ref, mask, 0.05, estimator, 2, turn_rewards=torch.zeros(2, 7)
        )
        assert torch.equal(plain[0], zeros[0]) and torch.equal(plain[1], zeros[1])


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum_norm"])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_the_environments_tokens_get_exactly_zero_gradient_in_every_loss(aggregation, ratio_level):
    torch.manual_seed(0)
    mask = MASK.expand(3, -1)
    logp = torch.randn(3, 7, requires_grad=True)
    values = torch.randn(3, 7, requires_grad=True)
    # the first minibatch (ratio 1, values unmoved): nothing is clipped, every policy token has a gradient
    old, ref, advantages = logp.detach(), torch.randn(3, 7), torch.randn(3, 7)
    policy, _ = ppo_policy_loss(logp, old, advantages, mask, 0.2, None, aggregation, ratio_level, 7)
    kl = kl_penalty_loss(logp, ref, mask, "k3", aggregation, 7)
    critic, _ = value_loss(values, values.detach(), torch.randn(3, 7), mask, 0.2)
    for loss, leaf in ((policy, logp), (kl, logp), (critic, values)):
        (grad,) = torch.autograd.grad(loss, leaf)
        assert torch.all(grad[ENV.expand(3, -1)] == 0)  # exactly
        assert torch.all(grad[mask] != 0)  # while every policy token moves

import pytest
import torch

from rlhfkit.core import gae


def naive_gae(rewards, values, mask, gamma, lam):
    """The twin: one row at a time, plain Python floats, only over the valid prefix."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages, (advantages + values) * mask


def test_gae_by_hand(dtype, tol):
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]], dtype=dtype)
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 5.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1's third token (reward 9, value 5) is padding
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0, gamma 1, lam 0.5: deltas t2 = 1 + 0 - 0.7 = 0.3, t1 = 0 + 0.7 - 0.6 = 0.1, t0 = 0.6 - 0.5 = 0.1;
    # A2 = 0.3, A1 = 0.1 + 0.5 * 0.3 = 0.25, A0 = 0.1 + 0.5 * 0.25 = 0.225; returns = A + V.
    torch.testing.assert_close(adv[0], torch.tensor([0.225, 0.25, 0.3], dtype=dtype), atol=tol, rtol=0)
    torch.testing.assert_close(ret[0], torch.tensor([0.725, 0.85, 1.0], dtype=dtype), atol=tol, rtol=0)
    # row 1 with gamma 0.9, lam 1: the episode ends at t1, so V after it is 0, not 5.
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # t1: delta = 2 + 0 - 1 = 1 -> A1 = 1; t0: delta = 0 + 0.9 * 1 - 1 = -0.1 -> A0 = -0.1 + 0.9 * 1 = 0.8.
    torch.testing.assert_close(adv[1], torch.tensor([0.8, 1.0, 0.0], dtype=dtype), atol=tol, rtol=0)
    torch.testing.assert_close(ret[1], torch.tensor([1.8, 2.0, 0.0], dtype=dtype), atol=tol, rtol=0)


def random_batch(seed, b=6, t=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return (
        torch.randn(b, t, generator=g, dtype=torch.float64),
        torch.randn(b, t, generator=g, dtype=torch.float64),
        mask,
    )


def test_gae_with_gamma_lambda_one_and_zero_values_is_reward_to_go():
    rewards, _, mask = random_batch(0)
    rewards = rewards * mask
    adv, ret = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(adv, reward_to_go)
    torch.testing.assert_close(ret, reward_to_go)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
def test_gae_equals_naive_loop(seed, gamma, lam):
    rewards, values, mask = random_batch(seed)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()

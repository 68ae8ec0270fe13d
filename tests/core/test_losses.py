import math

import pytest
import torch

from rlhfkit.core import masked_mean, pairwise_loss, ppo_policy_loss, ptx_loss, value_loss

# One valid token per case, clip 0.2. With r the ratio and A the advantage the loss is
# max(-A r, -A clip(r, 0.8, 1.2)); its derivative in logp is d/dlogp (-A r) = -A r on the unclipped branch
# and 0 on the clipped branch (the clipped term is constant in r outside the range).
POLICY_CASES = {
    # name: (A, ratio, loss, d loss / d logp, clipfrac)
    "A>0, inside": (1.0, 1.1, -1.1, -1.1, 0.0),
    "A>0, above": (1.0, 1.5, -1.2, 0.0, 1.0),  # max(-1.5, -1.2): clipped, no gradient
    "A>0, below": (1.0, 0.5, -0.5, -0.5, 0.0),  # max(-0.5, -0.8): the pessimistic unclipped term
    "A<0, inside": (-1.0, 0.9, 0.9, 0.9, 0.0),
    "A<0, above": (-1.0, 1.5, 1.5, 1.5, 0.0),  # max(1.5, 1.2): unclipped
    "A<0, below": (-1.0, 0.5, 0.8, 0.0, 1.0),  # max(0.5, 0.8): clipped, no gradient
}


@pytest.mark.parametrize("case", POLICY_CASES)
def test_ppo_policy_loss_by_hand(case, dtype, tol):
    adv, ratio, loss_expected, grad_expected, clipfrac = POLICY_CASES[case]
    old_logp = torch.tensor([[-1.0]], dtype=dtype)
    logp = (old_logp + math.log(ratio)).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, torch.tensor([[adv]], dtype=dtype), torch.ones(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(loss_expected, abs=tol)
    assert logp.grad.item() == pytest.approx(grad_expected, abs=tol)
    assert stats["clipfrac"].item() == clipfrac
    assert stats["ratio_mean"].item() == pytest.approx(ratio, abs=tol)
    # approx_kl: k3 of KL(old || new) = r - 1 - ln r.
    assert stats["approx_kl"].item() == pytest.approx(ratio - 1 - math.log(ratio), abs=tol)
    assert stats["ratio_sq_mean"].item() == pytest.approx(ratio**2, abs=10 * tol)


def test_ppo_policy_loss_token_mean_and_masking():
    # Two valid tokens (cases "A>0, inside" and "A<0, above") and one padding token holding garbage.
    old_logp = torch.tensor([[-1.0, -1.0, -1.0]])
    logp = (old_logp + torch.tensor([[math.log(1.1), math.log(1.5), float("inf")]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, float("nan")]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = ppo_policy_loss(logp, old_logp, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx((-1.1 + 1.5) / 2, abs=1e-6)
    # ratios 1.1 and 1.5: mean 1.3, E[r^2] = (1.21 + 2.25) / 2 = 1.73, variance 1.73 - 1.69 = 0.04
    assert stats["ratio_mean"].item() == pytest.approx(1.3, abs=1e-6)
    assert stats["ratio_sq_mean"].item() == pytest.approx(1.73, abs=1e-6)
    assert stats["ratio_var"].item() == pytest.approx(0.04, abs=1e-6)
    # each valid token gets its single-token derivative / 2 (token mean); padding gets exactly 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1 / 2, 1.5 / 2, 0.0]]), rtol=0, atol=1e-6)
    assert stats["clipfrac"].item() == 0.0


def test_ppo_policy_loss_at_old_policy(dtype):
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 7, generator=g, dtype=dtype)
    adv = torch.randn(4, 7, generator=g, dtype=dtype)
    mask = torch.arange(7)[None, :] < torch.tensor([[7], [3], [1], [5]])
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask)
    torch.testing.assert_close(loss, -masked_mean(adv, mask))
    assert stats["approx_kl"].item() == 0.0
    assert stats["clipfrac"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


# Value loss, clip 0.2, old value 0.5, return 1.0; loss = 0.5 max((v - R)^2, (v_clip - R)^2).
VALUE_CASES = {
    # name: (v, loss, d loss / d v, clipfrac)
    "inside": (0.6, 0.5 * 0.16, 0.6 - 1.0, 0.0),  # both terms (0.6 - 1)^2 = 0.16; derivative v - R
    "above, clipped wins": (1.0, 0.5 * 0.09, 0.0, 1.0),  # v_clip = 0.7: max(0, 0.09); constant in v
    "below, unclipped wins": (0.0, 0.5 * 1.0, -1.0, 0.0),  # v_clip = 0.3: max(1, 0.49)
    "above, unclipped wins": (2.0, 0.5 * 1.0, 1.0, 0.0),  # v_clip = 0.7: max(1, 0.09)
}


@pytest.mark.parametrize("case", VALUE_CASES)
def test_value_loss_by_hand(case, dtype, tol):
    v, loss_expected, grad_expected, clipfrac = VALUE_CASES[case]
    values = torch.tensor([[v]], dtype=dtype, requires_grad=True)
    old, ret = torch.tensor([[0.5]], dtype=dtype), torch.tensor([[1.0]], dtype=dtype)
    loss, stats = value_loss(values, old, ret, torch.ones(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(loss_expected, abs=tol)
    assert values.grad.item() == pytest.approx(grad_expected, abs=tol)
    assert stats["clipfrac"].item() == clipfrac


def test_value_loss_masked_positions_contribute_nothing():
    values = torch.tensor([[0.6, float("nan")]], requires_grad=True)
    old = torch.tensor([[0.5, float("inf")]])
    ret = torch.tensor([[1.0, float("nan")]])
    loss, _ = value_loss(values, old, ret, torch.tensor([[1, 0]]))
    loss.backward()
    assert loss.item() == pytest.approx(0.08, abs=1e-7)  # the "inside" case alone
    torch.testing.assert_close(values.grad, torch.tensor([[-0.4, 0.0]]), rtol=0, atol=1e-7)


def test_pairwise_loss_by_hand(dtype, tol):
    chosen, rejected = torch.tensor([2.0, 0.0], dtype=dtype), torch.tensor([1.0, 1.0], dtype=dtype)
    # diffs 1 and -1: -log sigmoid(1) = ln(1 + e^-1), -log sigmoid(-1) = ln(1 + e)
    loss, acc = pairwise_loss(chosen, rejected)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2, abs=tol)
    assert acc.item() == 0.5
    # margin 0.5 on the first pair: diff 1 - 0.5 = 0.5
    loss, _ = pairwise_loss(chosen, rejected, torch.tensor([0.5, 0.0], dtype=dtype))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.5)) + math.log(1 + math.e)) / 2, abs=tol)


def test_ptx_loss_by_hand(dtype, tol):
    # position 0: softmax([0, ln 2, ln 3]) gives label 2 probability 1/2 -> NLL ln 2;
    # position 1: uniform over 3 -> NLL ln 3; position 2 is masked (label -100 must not break the gather).
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]], dtype=dtype)
    labels = torch.tensor([[2, 0, -100]])
    loss = ptx_loss(logits, labels, torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(3)) / 2, abs=tol)

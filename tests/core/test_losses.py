import math

import pytest
import torch

from rlhfkit.core import (
    loss_count,
    masked_aggregate,
    masked_mean,
    pairwise_loss,
    ppo_policy_loss,
    ptx_loss,
    value_loss,
)

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


# --- clip-higher (DAPO): the ratio is clipped to [1 - clip, 1 + clip_high] ---------------------------------

# One valid token, clip 0.2, clip_high 0.28: only the upper bound moves, so only A > 0 cases above 1.2 change.
CLIP_HIGH_CASES = {
    # name: (A, ratio, loss, d loss / d logp, clipfrac)
    "A>0, between 1.2 and 1.28": (1.0, 1.25, -1.25, -1.25, 0.0),  # clipped at 1.2 without clip_high
    "A>0, above 1.28": (1.0, 1.5, -1.28, 0.0, 1.0),  # max(-1.5, -1.28): clipped, no gradient
    "A<0, above": (-1.0, 1.5, 1.5, 1.5, 0.0),  # max(1.5, 1.28): unclipped, as before
    "A<0, below": (-1.0, 0.5, 0.8, 0.0, 1.0),  # the lower bound is still 1 - clip
}


@pytest.mark.parametrize("case", CLIP_HIGH_CASES)
def test_clip_high_by_hand(case, dtype, tol):
    adv, ratio, loss_expected, grad_expected, clipfrac = CLIP_HIGH_CASES[case]
    old_logp = torch.tensor([[-1.0]], dtype=dtype)
    logp = (old_logp + math.log(ratio)).requires_grad_()
    advantages = torch.tensor([[adv]], dtype=dtype)
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, torch.ones(1, 1), clip=0.2, clip_high=0.28)
    loss.backward()
    assert loss.item() == pytest.approx(loss_expected, abs=tol)
    assert logp.grad.item() == pytest.approx(grad_expected, abs=tol)
    assert stats["clipfrac"].item() == clipfrac


def test_clip_high_none_is_clip():
    old_logp = torch.tensor([[-1.0]])
    logp = old_logp + math.log(1.25)
    loss, stats = ppo_policy_loss(logp, old_logp, torch.ones(1, 1), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"].item() == 1.0


# --- aggregations -----------------------------------------------------------------------------------------

# At the old policy (ratio 1) every token's term is -A and its derivative in logp is -A (the clipped term
# ties, with the same derivative). Row 0 has 3 valid tokens, row 1 one, row 2 none (garbage everywhere).
AGG_ADV = [[1.0, 2.0, 3.0], [6.0, float("nan"), float("nan")], [float("nan")] * 3]
AGG_MASK = [[True, True, True], [True, False, False], [False, False, False]]
AGGREGATIONS = {
    # token_mean: -(1 + 2 + 3 + 6) / 4 tokens; each token's derivative -A / 4
    "token_mean": (None, -3.0, [[-1 / 4, -2 / 4, -3 / 4], [-6 / 4, 0, 0], [0, 0, 0]]),
    # sequence_mean: row means -2 and -6 over the 2 non-empty rows: -4; derivative -A / length / 2
    "sequence_mean": (None, -4.0, [[-1 / 6, -2 / 6, -3 / 6], [-3.0, 0, 0], [0, 0, 0]]),
    # sequence_sum_norm, normaliser T = 3: row sums -6 and -6, / 3, over 2 rows: -2; derivative -A / 3 / 2
    "sequence_sum_norm": (None, -2.0, [[-1 / 6, -2 / 6, -3 / 6], [-1.0, 0, 0], [0, 0, 0]]),
    # normaliser 4 (e.g. response_length): -6/4 twice, mean -1.5; derivative -A / 4 / 2
    "sequence_sum_norm/4": (4, -1.5, [[-1 / 8, -2 / 8, -3 / 8], [-6 / 8, 0, 0], [0, 0, 0]]),
}


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_aggregations_by_hand(name, dtype, tol):
    normaliser, loss_expected, grad_expected = AGGREGATIONS[name]
    old_logp = torch.full((3, 3), -1.0, dtype=dtype)
    old_logp[2] = float("nan")  # the empty row: nothing of it may reach the loss or the gradient
    logp = old_logp.clone().requires_grad_()
    mask = torch.tensor(AGG_MASK)
    advantages = torch.tensor(AGG_ADV, dtype=dtype)
    aggregation = name.split("/")[0]
    loss, stats = ppo_policy_loss(
        logp, old_logp, advantages, mask, aggregation=aggregation, normaliser=normaliser
    )
    loss.backward()
    assert loss.item() == pytest.approx(loss_expected, abs=tol)
    torch.testing.assert_close(logp.grad, torch.tensor(grad_expected, dtype=dtype), rtol=0, atol=tol)
    # the statistics are token means whatever the aggregation
    assert stats["ratio_mean"].item() == 1.0 and stats["clipfrac"].item() == 0.0


def test_loss_count_by_hand():
    mask = torch.tensor(AGG_MASK)
    assert loss_count(mask, "token_mean").item() == 4
    assert loss_count(mask, "sequence_mean").item() == 2  # the empty row is no sequence
    assert loss_count(mask, "sequence_sum_norm").item() == 2
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        loss_count(mask, "mean")


def test_an_empty_batch_aggregates_to_zero_without_a_nan_gradient():
    x = torch.tensor([[float("nan"), 1.0]], requires_grad=True)
    for aggregation in ("token_mean", "sequence_mean", "sequence_sum_norm"):
        out = masked_aggregate(x, torch.zeros(1, 2, dtype=torch.bool), aggregation)
        out.backward()
        assert out.item() == 0.0 and x.grad.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum_norm"])
def test_micro_batches_weighted_by_their_count_share_sum_to_the_whole(aggregation):
    """The identity update.py relies on: a part's loss times count(part) / count(whole), summed over the
    parts, is the whole batch's loss, in value and gradient, for rows of different lengths."""
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.1
    old_logp, advantages = (
        torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.1,
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [1], [3], [0], [2], [4]])
    options = dict(aggregation=aggregation, normaliser=8, clip_high=0.3, ratio_level="sequence")
    whole_logp = logp.clone().requires_grad_()
    whole, _ = ppo_policy_loss(whole_logp, old_logp, advantages, mask, **options)
    whole.backward()
    split_logp = logp.clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        part, _ = ppo_policy_loss(split_logp[rows], old_logp[rows], advantages[rows], mask[rows], **options)
        total = total + part * loss_count(mask[rows], aggregation) / loss_count(mask, aggregation)
    total.backward()
    torch.testing.assert_close(total, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(split_logp.grad, whole_logp.grad, rtol=0, atol=1e-12)


# --- the sequence-level ratio (GSPO) ------------------------------------------------------------------------


def test_sequence_ratio_inside_the_range_by_hand(dtype, tol):
    """Log-ratios 0.2 and 0 on the two valid tokens: r = exp(0.1) for both (token ratios would be e^0.2 and
    1). A = 1: each term -r, loss -r; d r / d logp_t = r / 2 (a mean over 2 tokens), so each valid token's
    derivative is -r / 2, and the padded one's 0."""
    old_logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=dtype)
    logp = (old_logp + torch.tensor([[0.2, 0.0, float("inf")]], dtype=dtype)).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    advantages = torch.tensor([[1.0, 1.0, float("nan")]], dtype=dtype)
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, ratio_level="sequence")
    loss.backward()
    r = math.exp(0.1)
    assert loss.item() == pytest.approx(-r, abs=tol)
    torch.testing.assert_close(
        logp.grad, torch.tensor([[-r / 2, -r / 2, 0.0]], dtype=dtype), rtol=0, atol=tol
    )
    assert stats["ratio_mean"].item() == pytest.approx(r, abs=tol)  # the ratio the loss used
    # approx_kl stays per token: k3 of KL(old || new) = e^d - 1 - d for d = 0.2 and 0
    assert stats["approx_kl"].item() == pytest.approx((math.exp(0.2) - 1.2) / 2, abs=tol)


def test_sequence_ratio_clipped_where_the_token_ratios_are_not(dtype, tol):
    """Log-ratios 0.6 and -0.2: r = exp(0.2) = 1.221 > 1.2, so with A = 1 both terms are clipped: loss
    -1.2, no gradient, clipfrac 1. Token ratios (e^0.6 clipped, e^-0.2 = 0.819 not) give another loss."""
    old_logp = torch.tensor([[-1.0, -1.0]], dtype=dtype)
    logp = (old_logp + torch.tensor([[0.6, -0.2]], dtype=dtype)).requires_grad_()
    mask, advantages = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=dtype)
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, ratio_level="sequence")
    loss.backward()
    assert loss.item() == pytest.approx(-1.2, abs=tol)
    assert logp.grad.tolist() == [[0.0, 0.0]] and stats["clipfrac"].item() == 1.0
    token, _ = ppo_policy_loss(logp, old_logp, advantages, mask)
    assert token.item() == pytest.approx((-1.2 - math.exp(-0.2)) / 2, abs=tol)


def test_sequence_ratio_with_per_token_advantages_and_two_rows(dtype, tol):
    """Row 0: log-ratios 0.1, 0.1, 0.1 (r = e^0.1), A = 1, -1, 2 (all inside the clip range): the terms are
    -A r, mean -2r/3; d r / d logp_t = r/3, so each token's derivative is -2r/9. Row 1: one token,
    log-ratio -0.1, A = -1: term r1 = e^-0.1, derivative r1. sequence_mean: (-2r/3 + r1) / 2, and the
    derivatives halved: -r/9 and r1/2."""
    old_logp = torch.zeros(2, 3, dtype=dtype)
    logp = torch.tensor([[0.1, 0.1, 0.1], [-0.1, 5.0, 5.0]], dtype=dtype, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    advantages = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 0.0, 0.0]], dtype=dtype)
    loss, _ = ppo_policy_loss(
        logp, old_logp, advantages, mask, aggregation="sequence_mean", ratio_level="sequence"
    )
    loss.backward()
    r, r1 = math.exp(0.1), math.exp(-0.1)
    assert loss.item() == pytest.approx((-2 * r / 3 + r1) / 2, abs=tol)
    expected = torch.tensor([[-r / 9] * 3, [r1 / 2, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=tol)


def test_unknown_ratio_level_is_an_error():
    with pytest.raises(ValueError, match="unknown ratio_level 'row'"):
        ppo_policy_loss(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), ratio_level="row"
        )


def test_kl_penalty_loss_by_hand():
    """k3 in the loss. Row: d = logp - ref = [0.5, -1.0] at the valid tokens, then padding whose logp is
    garbage (-200: k3's exp(200) is inf in fp32).
    k3 = exp(-d) - 1 + d: exp(-0.5) - 0.5 = 0.10653066, exp(1) - 2 = 0.71828183.
    token_mean = (0.10653066 + 0.71828183) / 2 = 0.41240625; sequence_sum_norm (normaliser 4): 0.82481249 / 4.
    d k3 / d logp = 1 - exp(-d) = [0.39346934, -1.71828183], halved by the token mean; padding: exactly 0."""
    from rlhfkit.core import kl_penalty_loss

    logp = torch.tensor([[-1.0, -2.0, -200.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    loss = kl_penalty_loss(logp, ref, mask, "k3")
    assert loss.item() == pytest.approx(0.41240625, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.19673467, -0.85914091, 0.0]]), rtol=0, atol=1e-6)
    summed = kl_penalty_loss(logp, ref, mask, "k3", "sequence_sum_norm", normaliser=4)
    assert summed.item() == pytest.approx(0.82481249 / 4, abs=1e-6)
    assert kl_penalty_loss(logp, ref, mask, "k1").item() == pytest.approx((0.5 - 1.0) / 2, abs=1e-6)

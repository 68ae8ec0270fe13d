"""`dpo_loss`: each form worked out by hand on one pair.

The pair: policy log-probs chosen −1.0, rejected −3.0; reference −2.0, −2.5. So
x = (−1 − (−3)) − (−2 − (−2.5)) = 2.0 − 0.5 = 1.5, and with β = 0.5, βx = 0.75.
logσ(0.75) = −log(1 + e^−0.75) = −0.386871, logσ(−0.75) = −log(1 + e^0.75) = −1.136871 (they differ
by 0.75).
"""

import math

import pytest
import torch

from rlhfkit.core import best_and_worst, dpo_loss

PAIR = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]
LOG_SIG = -math.log1p(math.exp(-0.75))  # logσ(0.75) = −0.386871
LOG_SIG_NEG = -math.log1p(math.exp(0.75))  # logσ(−0.75) = −1.136871


def loss_of(**kwargs) -> float:
    losses, _, _ = dpo_loss(*PAIR, beta=0.5, **kwargs)
    return losses.item()


def test_the_hand_values_are_what_the_comments_say():
    assert abs(LOG_SIG - -0.386871) < 1e-6
    assert abs(LOG_SIG_NEG - -1.136871) < 1e-6


def test_sigmoid_is_minus_log_sigmoid_of_beta_x():
    assert loss_of() == pytest.approx(-LOG_SIG, abs=1e-6)  # 0.386871


def test_sigmoid_with_label_smoothing_is_cdpo():
    # −0.9·logσ(0.75) − 0.1·logσ(−0.75) = 0.348184 + 0.113687 = 0.461871
    assert loss_of(label_smoothing=0.1) == pytest.approx(0.461871, abs=1e-6)


def test_robust_removes_the_noise_bias():
    # (−0.9·logσ(0.75) + 0.1·logσ(−0.75)) / 0.8 = (0.348184 − 0.113687) / 0.8 = 0.293121
    assert loss_of(loss_type="robust", label_smoothing=0.1) == pytest.approx(0.293121, abs=1e-6)
    # without noise it is DPO's
    assert loss_of(loss_type="robust") == pytest.approx(-LOG_SIG, abs=1e-6)


def test_hinge_is_zero_past_the_margin_and_linear_before_it():
    assert loss_of(loss_type="hinge") == pytest.approx(0.25, abs=1e-7)  # relu(1 − 0.75)
    far = dpo_loss(*PAIR, beta=1.0, loss_type="hinge")[0].item()  # βx = 1.5 > 1
    assert far == 0.0


def test_ipo_regresses_x_to_one_over_two_beta():
    assert loss_of(loss_type="ipo") == pytest.approx(0.25, abs=1e-7)  # (1.5 − 1/(2·0.5))² = 0.5²
    # β = 1: (1.5 − 1/2)² = 1
    assert dpo_loss(*PAIR, beta=1.0, loss_type="ipo")[0].item() == pytest.approx(1.0, abs=1e-7)


def test_simpo_needs_no_reference_and_subtracts_gamma():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-3.0])
    losses, rc, rr = dpo_loss(chosen, rejected, None, None, beta=2.0, loss_type="simpo", gamma=0.5)
    # −logσ(2·(−1 − (−3)) − 0.5) = −logσ(3.5) = log(1 + e^−3.5) = 0.029750
    assert losses.item() == pytest.approx(0.029750, abs=1e-6)
    assert (rc.item(), rr.item()) == (-2.0, -6.0)  # β·policy


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_rewards_carry_no_gradient(loss_type):
    chosen, rejected = (torch.tensor([v], requires_grad=True) for v in (-1.0, -3.0))
    references = (None, None) if loss_type == "simpo" else PAIR[2:]
    _, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, *references, beta=0.5, loss_type=loss_type
    )
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_rewards_are_beta_times_the_log_ratio():
    _, chosen, rejected = dpo_loss(*PAIR, beta=0.5)
    assert chosen.item() == pytest.approx(0.5)  # 0.5·(−1 − (−2))
    assert rejected.item() == pytest.approx(-0.25)  # 0.5·(−3 − (−2.5))


def test_sigmoid_gradient_pushes_chosen_up_by_beta_sigma_of_minus_beta_x():
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    losses, _, _ = dpo_loss(policy_chosen, *PAIR[1:], beta=0.5)
    losses.sum().backward()
    # d/dπc −logσ(βx) = −β·σ(−βx) = −0.5 · 1/(1 + e^0.75) = −0.160412
    assert policy_chosen.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.75)), abs=1e-6)


def test_one_loss_per_pair():
    b = [torch.tensor([-1.0, -2.0, -4.0]) for _ in range(4)]
    losses, chosen, rejected = dpo_loss(*b, beta=0.1)
    assert losses.shape == chosen.shape == rejected.shape == (3,)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))  # x = 0: −logσ(0) = log 2


def test_refusals():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*PAIR, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(PAIR[0], PAIR[1], None, None, beta=0.1)


def test_best_and_worst_pair_each_group_and_skip_ties():
    # groups of 3: [1, 5, 2] -> best index 1, worst 0; [4, 4, 4] a tie, no pair; [0, -1, 3] -> best 8, worst 7
    scores = torch.tensor([1.0, 5.0, 2.0, 4.0, 4.0, 4.0, 0.0, -1.0, 3.0])
    chosen, rejected = best_and_worst(scores, 3)
    assert chosen.tolist() == [1, 8] and rejected.tolist() == [0, 7]


def test_best_and_worst_takes_the_first_of_equal_extremes():
    # [2, 7, 7, 2]: best the first 7 (index 1), worst the first 2 (index 0)
    chosen, rejected = best_and_worst(torch.tensor([2.0, 7.0, 7.0, 2.0]), 4)
    assert (chosen.tolist(), rejected.tolist()) == ([1], [0])

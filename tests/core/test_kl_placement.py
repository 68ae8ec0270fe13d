"""Where the KL penalty goes (docs/ppo-details.md, "Where the KL penalty goes"): exact gradients on one state.

A categorical policy pi = softmax(theta) over A actions and a fixed reference q. Every expectation is an exact
sum over the actions, in float64, so each identity holds to rounding error. With d(a) = log pi(a) - log q(a)
the estimators of `rlhfkit.core.kl_estimate` are k1 = d, k2 = d^2 / 2, k3 = exp(-d) - 1 + d.

Two ways a per-token estimate k(a) reaches the policy's gradient:
- in the reward (score function, the default `kl_penalty: reward`): k is a constant reward, the gradient is
  E_pi[k(a) grad log pi(a)] = sum_a pi(a) k(a) grad log pi(a);
- in the loss (pathwise, `kl_penalty: loss`, the GRPO placement): the loss is the sample mean of k(a), a ~ pi
  (the sampling weights carry no gradient), so its expected gradient is sum_a pi(a) grad k(a), the gradient
  flowing only through log pi inside d.
Both use sum_a pi(a) grad log pi(a) = grad sum_a pi(a) = 0.
"""

import pytest
import torch

from rlhfkit.core import kl_estimate

TOL = 1e-10


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(p || q) of two categorical distributions given by their log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum()


def grad(value: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(value, theta)
    return g


@pytest.fixture(params=[(3, 0), (4, 1), (5, 2)], ids=["A3", "A4", "A5"])
def state(request):
    """(theta, log pi_ref): logits of the policy with grad, and a fixed reference distinct from the policy."""
    actions, seed = request.param
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(actions, generator=gen, dtype=torch.float64).requires_grad_(True)
    ref_logp = torch.log_softmax(torch.randn(actions, generator=gen, dtype=torch.float64), -1)
    return theta, ref_logp


def score_function_gradient(theta, ref_logp, kind):
    """The reward placement: E_pi[k(a) grad log pi(a)], with k held constant (no gradient through it)."""
    logp = torch.log_softmax(theta, -1)  # (A,)
    k = kl_estimate(logp, ref_logp, kind).detach()  # (A,)
    weights = logp.exp().detach()  # pi(a): the expectation's weights
    return grad((weights * k * logp).sum(), theta)


def pathwise_gradient(theta, ref_logp, kind):
    """The on-policy loss placement: grad of sum_a pi(a) k(a) with the weights pi(a) held fixed, so the
    gradient flows only through log pi inside k."""
    logp = torch.log_softmax(theta, -1)  # (A,)
    weights = logp.exp().detach()
    return grad((weights * kl_estimate(logp, ref_logp, kind)).sum(), theta)


def forward_kl_gradient(theta, ref_logp):
    """grad KL(pi || ref), by autograd on the closed form."""
    return grad(kl(torch.log_softmax(theta, -1), ref_logp), theta)


def reverse_kl_gradient(theta, ref_logp):
    """grad KL(ref || pi), by autograd on the closed form."""
    return grad(kl(ref_logp, torch.log_softmax(theta, -1)), theta)


def assert_close(actual, expected):
    assert torch.allclose(actual, expected, rtol=0, atol=TOL), (actual, expected)


def assert_far(actual, expected):
    """The two gradients differ by far more than the tolerance (so an `assert_close` here would fail)."""
    assert (actual - expected).abs().max() > 1e3 * TOL, (actual, expected)


def test_the_example_is_not_degenerate(state):
    # pi differs from ref, so KL(pi||ref) and KL(ref||pi) have non-zero and different gradients: an identity
    # that confused them, or gave 0, would fail below.
    theta, ref_logp = state
    forward, reverse = forward_kl_gradient(theta, ref_logp), reverse_kl_gradient(theta, ref_logp)
    assert forward.abs().max() > 1e-3 and reverse.abs().max() > 1e-3
    assert_far(forward, reverse)
    assert_far(forward, -reverse)


def test_k1_in_the_reward_is_the_gradient_of_kl_pi_ref(state):
    # grad KL(pi||ref) = grad sum pi d = sum (grad pi) d + sum pi grad log pi
    #                  = sum pi d grad log pi + 0 = E_pi[k1 grad log pi].
    theta, ref_logp = state
    assert_close(score_function_gradient(theta, ref_logp, "k1"), forward_kl_gradient(theta, ref_logp))


def test_k3_in_the_reward_is_the_gradient_of_kl_pi_ref_minus_kl_ref_pi(state):
    # k3 = ref/pi - 1 + d. E_pi[(ref/pi) grad log pi] = sum ref grad log pi = -grad KL(ref||pi);
    # E_pi[-1 grad log pi] = 0; E_pi[d grad log pi] = grad KL(pi||ref). So the reward placement of k3 follows
    # grad [KL(pi||ref) - KL(ref||pi)], not grad KL(pi||ref): biased, though k3's value is unbiased.
    theta, ref_logp = state
    k3 = score_function_gradient(theta, ref_logp, "k3")
    forward, reverse = forward_kl_gradient(theta, ref_logp), reverse_kl_gradient(theta, ref_logp)
    assert_far(k3, forward)
    assert_close(k3, forward - reverse)


def test_k2_in_the_reward_is_biased(state):
    # E_pi[(d^2/2) grad log pi] = grad E_pi[d^2/2] - E_pi[d grad log pi] = grad E_pi[k2] - grad KL(pi||ref):
    # the gradient of neither KL.
    theta, ref_logp = state
    k2 = score_function_gradient(theta, ref_logp, "k2")
    forward, reverse = forward_kl_gradient(theta, ref_logp), reverse_kl_gradient(theta, ref_logp)
    assert_far(k2, forward)
    assert_far(k2, reverse)
    logp = torch.log_softmax(theta, -1)
    expected_k2 = (logp.exp() * kl_estimate(logp, ref_logp, "k2")).sum()
    assert_close(k2, grad(expected_k2, theta) - forward)


def test_k2_in_the_loss_is_the_gradient_of_kl_pi_ref(state):
    # grad k2 = d grad log pi, so sum pi grad k2 = E_pi[d grad log pi] = grad KL(pi||ref) (on-policy).
    theta, ref_logp = state
    assert_close(pathwise_gradient(theta, ref_logp, "k2"), forward_kl_gradient(theta, ref_logp))


def test_k3_in_the_loss_is_the_gradient_of_kl_ref_pi(state):
    # grad k3 = (1 - ref/pi) grad log pi, so sum pi grad k3 = 0 - sum ref grad log pi = grad KL(ref||pi):
    # the forward KL, which is what GRPO's k3-in-the-loss minimises, not KL(pi||ref).
    theta, ref_logp = state
    k3 = pathwise_gradient(theta, ref_logp, "k3")
    assert_far(k3, forward_kl_gradient(theta, ref_logp))
    assert_close(k3, reverse_kl_gradient(theta, ref_logp))


def test_k1_in_the_loss_has_no_expected_gradient(state):
    # grad k1 = grad log pi, so sum pi grad k1 = grad sum pi = 0: nothing pulls towards the reference, which
    # is why the config refuses kl_penalty=loss with kl_estimator=k1.
    theta, ref_logp = state
    k1 = pathwise_gradient(theta, ref_logp, "k1")
    assert_close(k1, torch.zeros_like(k1))
    assert_far(k1, forward_kl_gradient(theta, ref_logp))


def test_off_policy_the_loss_placement_loses_its_identity(state):
    # After the first minibatch of a PPO iteration the samples come from pi_old, not pi, and the code adds
    # beta * mean(k) without an importance weight. With weights pi_old: sum pi_old d grad log pi is not
    # grad KL(pi||ref); weighting by the ratio pi / pi_old restores it. This drift is what policy/ratio_var
    # and policy/approx_kl measure.
    theta, ref_logp = state
    old_theta = theta.detach() + 0.3 * torch.linspace(-1, 1, theta.shape[0], dtype=torch.float64)
    old_pi = torch.softmax(old_theta, -1)
    logp = torch.log_softmax(theta, -1)
    off_policy = grad((old_pi * kl_estimate(logp, ref_logp, "k2")).sum(), theta)
    forward = forward_kl_gradient(theta, ref_logp)
    assert_far(off_policy, forward)
    logp = torch.log_softmax(theta, -1)
    ratio = (logp - old_pi.log()).exp().detach()  # pi / pi_old, no gradient
    weighted = grad((old_pi * ratio * kl_estimate(logp, ref_logp, "k2")).sum(), theta)
    assert_close(weighted, forward)


def test_the_estimators_are_the_documented_formulas(state):
    # Pins the formulas the derivations above rely on, and their expectations under pi: k1 and k3 are
    # unbiased for KL(pi||ref); k2 is not.
    theta, ref_logp = state
    logp = torch.log_softmax(theta, -1).detach()
    d, pi = logp - ref_logp, logp.exp()
    assert_close(kl_estimate(logp, ref_logp, "k1"), d)
    assert_close(kl_estimate(logp, ref_logp, "k2"), d**2 / 2)
    assert_close(kl_estimate(logp, ref_logp, "k3"), torch.exp(-d) - 1 + d)
    value = kl(logp, ref_logp)
    assert_close((pi * kl_estimate(logp, ref_logp, "k1")).sum(), value)
    assert_close((pi * kl_estimate(logp, ref_logp, "k3")).sum(), value)
    assert abs((pi * kl_estimate(logp, ref_logp, "k2")).sum() - value) > 1e3 * TOL

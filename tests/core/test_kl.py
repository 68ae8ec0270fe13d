import math

import pytest
import torch

from rlhfkit.core import AdaptiveKLController, FixedKLController, kl_estimate, kl_shaped_rewards


def test_kl_estimators_by_hand(dtype, tol):
    # d = logp - ref_logp = 0 - ln 2 = -ln 2.
    logp, ref = torch.tensor([0.0], dtype=dtype), torch.tensor([math.log(2)], dtype=dtype)
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(-math.log(2), abs=tol)  # d
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2, abs=tol)  # d^2/2
    # exp(-d) - 1 + d = 2 - 1 - ln 2
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(1 - math.log(2), abs=tol)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_vanish_when_policies_agree():
    logp = torch.randn(4, 6)
    for kind in ("k1", "k2", "k3"):
        assert (kl_estimate(logp, logp.clone(), kind) == 0).all()


def test_kl_shaped_rewards_by_hand(dtype, tol):
    scores = torch.tensor([1.0, 2.0], dtype=dtype)
    logp = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.9, 0.7]], dtype=dtype)
    ref = torch.tensor([[0.1, 0.2, 0.4], [0.1, 0.0, 0.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = kl_shaped_rewards(scores, logp, ref, mask, kl_coef=0.5)
    # k1 = logp - ref at valid tokens: row 0 [0.4, 0, -0.3]; row 1 [0.2, masked, masked].
    torch.testing.assert_close(
        kl, torch.tensor([[0.4, 0.0, -0.3], [0.2, 0.0, 0.0]], dtype=dtype), atol=tol, rtol=0
    )
    # -0.5 * kl, plus the score on each row's last valid token (index 2 and index 0).
    expected = torch.tensor([[-0.2, 0.0, 0.15 + 1.0], [-0.1 + 2.0, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(rewards, expected, atol=tol, rtol=0)


def test_kl_shaped_rewards_k3_and_empty_row():
    logp = torch.tensor([[0.0, 5.0], [1.0, 1.0]])
    ref = torch.tensor([[math.log(2), -3.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 0], [0, 0]])  # row 1 has no valid token: no score is placed anywhere
    rewards, kl = kl_shaped_rewards(torch.tensor([3.0, 7.0]), logp, ref, mask, kl_coef=1.0, kind="k3")
    k3 = 1 - math.log(2)  # see test_kl_estimators_by_hand
    torch.testing.assert_close(kl, torch.tensor([[k3, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[3.0 - k3, 0.0], [0.0, 0.0]]))


def test_fixed_controller_never_changes():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(6.0, 256)  # KL on target: err = 0
    assert ctl.value == pytest.approx(0.1, abs=1e-15)
    ctl.update(12.0, 256)  # err = 12/6 - 1 = 1, clipped to 0.2: 0.1 * (1 + 0.2 * 256 / 10000)
    assert ctl.value == pytest.approx(0.1 * 1.00512, abs=1e-15)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(3.0, 100)  # err = -0.5, clipped to -0.2: 0.1 * (1 - 0.2 * 100 / 10000)
    assert ctl.value == pytest.approx(0.0998, abs=1e-15)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(6.6, 1000)  # err = 0.1, inside the clip: 0.1 * (1 + 0.1 * 1000 / 10000)
    assert ctl.value == pytest.approx(0.101, abs=1e-15)


def test_sequence_kl_sums_valid_tokens(dtype, tol):
    from rlhfkit.core import sequence_kl

    logp = torch.tensor([[0.5, 0.2, 9.0], [0.3, 0.1, 0.0]], dtype=dtype)
    ref = torch.tensor([[0.1, 0.4, 0.0], [0.1, 0.1, 0.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # k1 per token: row 0: 0.4 + (-0.2) (the masked 9.0 is ignored) = 0.2; row 1: 0.2
    torch.testing.assert_close(
        sequence_kl(logp, ref, mask), torch.tensor([0.2, 0.2], dtype=dtype), atol=tol, rtol=0
    )
    # k3 of d = 0.4 and -0.2: exp(-0.4) - 1 + 0.4 + exp(0.2) - 1 - 0.2
    k3 = math.exp(-0.4) - 0.6 + math.exp(0.2) - 1.2
    assert sequence_kl(logp, ref, mask, "k3")[0].item() == pytest.approx(k3, abs=tol)

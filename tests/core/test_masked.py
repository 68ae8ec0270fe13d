import math

import pytest
import torch

from rlhfkit.core import explained_variance, masked_mean, masked_var, masked_whiten

# x and mask shared by the hand-worked cases: valid values are 1, 2, 4.
X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[True, True, False], [True, False, False]]


def test_masked_mean_by_hand(dtype, tol):
    x, mask = torch.tensor(X, dtype=dtype), torch.tensor(MASK)
    # (1 + 2 + 4) / 3
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3, abs=tol)
    # per row: (1 + 2) / 2 and 4 / 1
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0], dtype=dtype))


def test_masked_mean_ignores_nan_and_sends_no_gradient_to_padding(dtype):
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]], dtype=dtype, requires_grad=True)
    mask = torch.tensor(MASK)
    out = masked_mean(x, mask)
    out.backward()
    assert out.item() == pytest.approx(7 / 3)
    # d mean / d x_i = 1/3 at the three valid positions, exactly 0 elsewhere.
    expected = torch.tensor([[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_masked_mean_empty_row_along_dim_is_zero():
    x = torch.ones(2, 3)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.0, 0.0]))


def test_masked_var_by_hand(dtype, tol):
    x, mask = torch.tensor(X, dtype=dtype), torch.tensor(MASK)
    # mean 7/3; squared deviations 16/9, 1/9, 25/9 sum to 14/3.
    # biased: (14/3) / 3 = 14/9; unbiased: (14/3) / 2 = 7/3.
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(14 / 9, abs=tol)
    assert masked_var(x, mask).item() == pytest.approx(7 / 3, abs=tol)


def test_masked_var_unbiased_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))


def test_masked_whiten_by_hand(dtype):
    x, mask = torch.tensor(X, dtype=dtype), torch.tensor(MASK)
    std = math.sqrt(7 / 3 + 1e-8)  # unbiased masked variance 7/3 (above)
    expected = torch.tensor(
        [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]], dtype=dtype
    )
    torch.testing.assert_close(masked_whiten(x, mask), expected)
    # shift_mean=False keeps the mean: only the scale changes.
    expected_kept = torch.where(mask, expected + 7 / 3, torch.zeros((), dtype=dtype))
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), expected_kept)


def test_masked_whiten_gives_mean_zero_variance_one_on_random_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=g, dtype=torch.float64) * 3 + 5
    lengths = torch.randint(1, 17, (8,), generator=g)
    mask = torch.arange(16)[None, :] < lengths[:, None]
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask] == 0).all()


def test_explained_variance_by_hand(dtype, tol):
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0]])
    # a perfect critic explains everything; predicting the mean explains nothing
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0, abs=tol)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(
        0.0, abs=tol
    )
    # returns [1, 2, 3] have unbiased variance 1; values [1.5, 2, 2.5] leave errors [-0.5, 0, 0.5] with
    # unbiased variance (0.25 + 0 + 0.25) / 2 = 0.25, so 1 - 0.25 / 1 = 0.75 (the padded 99 is ignored)
    values = torch.tensor([[1.5, 2.0, 2.5, 0.0]], dtype=dtype)
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.75, abs=tol)


# --- whitening without spread (docs/ppo-details.md #15) -----------------------------------------------------


def test_masked_whiten_of_one_valid_value_is_zero_or_the_value(dtype):
    """One valid position (batch_size=1 with response_length=1, or a response that is only EOS): its
    distance to the mean is 0 whatever the scale, so whitening gives 0 (the value itself with
    shift_mean=False) instead of failing in masked_var."""
    x = torch.tensor([[2.5, 7.0, 9.0]], dtype=dtype)
    mask = torch.tensor([[True, False, False]])
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[2.5, 0.0, 0.0]]
    none = torch.zeros(1, 3, dtype=torch.bool)  # no valid position at all
    assert masked_whiten(x, none).tolist() == [[0.0, 0.0, 0.0]]
    assert masked_whiten(x, none, shift_mean=False).tolist() == [[0.0, 0.0, 0.0]]


def test_masked_whiten_of_equal_values_is_exactly_zero():
    """Equal values have no spread either: the float mean of three 1000.1 misses them by ~6e-5, which
    rsqrt(0 + 1e-8) used to blow up to ~0.5."""
    x = torch.tensor([[1000.1, 1000.1], [1000.1, -5.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    kept = masked_whiten(x, mask, shift_mean=False)
    assert torch.equal(kept, torch.tensor([[1000.1, 1000.1], [1000.1, 0.0]]))


def test_masked_whiten_keeps_a_nan_visible():
    x = torch.tensor([[float("nan"), 1.0, 3.0]])
    assert masked_whiten(x, torch.tensor([[True, False, False]])).isnan()[0, 0]
    assert masked_whiten(x, torch.tensor([[True, True, True]])).isnan().all()
    inf = torch.tensor([[float("inf"), float("inf")]])
    assert masked_whiten(inf, torch.ones(1, 2, dtype=torch.bool)).isnan().all()


def test_explained_variance_of_fewer_than_two_values_is_nan_not_an_error():
    returns, values = torch.tensor([[1.0, 5.0]]), torch.tensor([[0.5, 0.0]])
    assert explained_variance(values, returns, torch.tensor([[True, False]])).isnan()
    assert explained_variance(values, returns, torch.tensor([[False, False]])).isnan()

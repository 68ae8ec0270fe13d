"""Gao et al.'s forms fitted by least squares: exact on points drawn from a known curve, and their peaks."""

import math

import pytest

from rlhfkit.report.fits import fit, fitted_peak, gold_curve, peak


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_points_on_a_known_curve_give_back_its_alpha_and_beta(form):
    alpha, beta = 0.8, 0.3
    kl = [0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 9.0]  # d = 0 .. 3, both sides of d = 1
    gain = [gold_curve(math.sqrt(k), alpha, beta, form) for k in kl]
    fitted = fit(kl, gain, form)
    assert fitted == pytest.approx((alpha, beta), abs=1e-9)


def test_the_bon_form_by_hand():
    # d = 1: α − β = 0.5; d = 2: 2α − 4β = 0.0  ->  α = 1.0, β = 0.5
    assert fit([1.0, 4.0], [0.5, 0.0], "bon") == pytest.approx((1.0, 0.5))


def test_the_rl_form_by_hand():
    # d = 1: α·1 − β·1·ln 1 = α = 0.7; d = e: α·e − β·e·1 = e·(α − β) = 0  ->  α = β = 0.7
    assert fit([1.0, math.e**2], [0.7, 0.0], "rl") == pytest.approx((0.7, 0.7))


def test_noisy_points_give_the_least_squares_fit():
    # three BoN points, two of them off the curve: the normal equations' solution, not any two points'
    kl, gain = [1.0, 4.0, 9.0], [0.5, 0.1, -1.2]
    alpha, beta = fit(kl, gain, "bon")
    residuals = [g - gold_curve(math.sqrt(k), alpha, beta, "bon") for k, g in zip(kl, gain, strict=True)]
    # at the least-squares optimum the residuals are orthogonal to both features
    assert sum(r * math.sqrt(k) for r, k in zip(residuals, kl, strict=True)) == pytest.approx(0, abs=1e-9)
    assert sum(r * k for r, k in zip(residuals, kl, strict=True)) == pytest.approx(0, abs=1e-9)


def test_too_few_points_give_no_fit():
    assert fit([0.0, 1.0], [0.0, 0.4], "bon") is None  # one point with d > 0
    assert fit([], [], "rl") is None


def test_the_fitted_peaks():
    assert fitted_peak(1.0, 0.5, "bon") == pytest.approx(1.0)  # α / 2β
    assert fitted_peak(0.7, 0.7, "rl") == pytest.approx(1.0)  # exp(α/β − 1) = e^0
    assert fitted_peak(1.0, -0.1, "bon") is None  # never turns down
    assert fitted_peak(-0.5, 0.3, "bon") is None  # falls from d = 0: no peak past the initial policy


def test_the_measured_peak_is_the_highest_gold_and_its_kl():
    assert peak([0.0, 1.0, 3.0, 8.0], [0.1, 0.6, 0.9, 0.4]) == {"gold": 0.9, "kl": 3.0}

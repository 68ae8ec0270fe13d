"""The over-optimisation section: a method's study (fit, peak) from its points, and the section's HTML."""

import math

import pytest

from rlhfkit.report.overoptimisation import method_study, section
from rlhfkit.report.page import overoptimisation_section

# best-of-N, α = 0.6, β = 0.25, gold 0.1 at the initial policy: gold(d) = 0.1 + d(0.6 - 0.25 d) at
# d = √KL = 0, 0.5, 1, 1.2, 1.5, 2 -> gains 0, 0.2375, 0.35, 0.36, 0.3375, 0.2: the peak is d* = α/(2β) = 1.2
# (KL 1.44), gold 0.1 + 0.36 = 0.46
BON_KL = [0.0, 0.25, 1.0, 1.44, 2.25, 4.0]
BON_GOLD = [0.1 + math.sqrt(k) * (0.6 - 0.25 * math.sqrt(k)) for k in BON_KL]
# RL, α = 1, β = 0.5, gold -0.2 at the initial policy: gold(d) = -0.2 + d(1 - 0.5 ln d) at d = 0, 1, 2, e, 4
# -> gains 0, 1, 1.3069, e/2 = 1.3591, 1.2274: the peak is d* = exp(α/β - 1) = e (KL e²), gold -0.2 + e/2
RL_KL = [0.0, 1.0, 4.0, math.e**2, 16.0]
RL_GOLD = [-0.2 + (math.sqrt(k) * (1 - 0.5 * math.log(math.sqrt(k))) if k else 0.0) for k in RL_KL]
RISING = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # a proxy that keeps rising


def test_best_of_n_points_give_back_alpha_beta_and_peak():
    study = method_study(BON_KL, BON_GOLD, RISING, "bon", n=[1, 2, 4, 8, 16, 64])
    assert study["fit"]["alpha"] == pytest.approx(0.6, abs=1e-9)
    assert study["fit"]["beta"] == pytest.approx(0.25, abs=1e-9)
    assert study["fit"]["form"] == "bon"
    assert study["peak"] == {"gold": pytest.approx(0.46, abs=1e-12), "kl": 1.44}
    assert study["n"] == [1, 2, 4, 8, 16, 64]
    assert study["proxy"] == RISING


def test_rl_points_give_back_alpha_beta_and_peak():
    study = method_study(RL_KL, RL_GOLD, RISING[:5], "rl")
    assert study["fit"] == {
        "alpha": pytest.approx(1.0, abs=1e-9),
        "beta": pytest.approx(0.5, abs=1e-9),
        "form": "rl",
    }
    assert study["peak"] == {"gold": pytest.approx(-0.2 + math.e / 2, abs=1e-12), "kl": math.e**2}
    assert "n" not in study


def test_no_fit_without_the_initial_point():
    # the gain is over the first point: one at KL 0.5 is not the initial policy, so no fit (but a peak)
    study = method_study([0.5, 1.0, 4.0], [0.1, 0.3, 0.2], [0.0, 1.0, 2.0], "rl")
    assert study["fit"] is None
    assert study["peak"] == {"gold": 0.3, "kl": 1.0}


def test_the_initial_gold_measured_apart_is_the_origin_of_the_fit():
    # the RL points without their KL-0 one, and the initial policy's gold -0.2 given apart: α 1, β 0.5 again
    study = method_study(RL_KL[1:], RL_GOLD[1:], RISING[:4], "rl", initial_gold=-0.2)
    assert study["fit"] == {
        "alpha": pytest.approx(1.0, abs=1e-9),
        "beta": pytest.approx(0.5, abs=1e-9),
        "form": "rl",
    }
    assert study["initial_gold"] == -0.2
    # a first point at KL 0 is the initial policy itself: the gold given apart is not used
    assert "initial_gold" not in method_study(RL_KL, RL_GOLD, RISING[:5], "rl", initial_gold=5.0)
    assert method_study(RL_KL, RL_GOLD, RISING[:5], "rl", initial_gold=5.0)["fit"]["alpha"] == pytest.approx(
        1.0
    )


def test_uneven_points_and_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="as many"):
        method_study([0.0, 1.0], [0.1], [0.0, 1.0], "rl")
    with pytest.raises(ValueError, match="form"):
        method_study([0.0, 1.0], [0.1, 0.2], [0.0, 1.0], "ppo")


def study():
    return {
        "bon": method_study(BON_KL, BON_GOLD, RISING, "bon", n=[1, 2, 4, 8, 16, 64]),
        "ppo": method_study(RL_KL, RL_GOLD, RISING[:5], "rl"),
        "dpo": method_study([0.5, 1.0, 4.0], [0.1, 0.3, 0.2], [0.0, 1.0, 2.0], "rl"),
    }


def test_section_has_both_charts_every_method_and_a_row_of_peaks_each():
    text = section(study())
    assert text.count("<svg") == 2  # gold vs √KL, proxy vs √KL
    rows = text.split("<tr>")[2:]  # after the header row
    assert len(rows) == 3
    bon, ppo, dpo = rows
    # bon: peak gold 0.46 at KL 1.44, at N = 8; α 0.6, β 0.25, d* 1.2, KL* 1.44
    assert bon.startswith("<td>bon [bon form]")
    assert "N = 8" in bon
    for cell in ("0.460", "1.44", "0.600", "0.250", "1.20"):
        assert f'<td class="num">{cell}</td>' in bon
    # ppo: peak gold -0.2 + e/2 = 1.159 at KL e² = 7.39; final gold -0.2 + 1.2274 = 1.027 at KL 16; d* = e
    for cell in ("1.159", "7.39", "1.027", "16.00", "1.000", "0.500", "2.72"):
        assert f'<td class="num">{cell}</td>' in ppo
    # dpo: no initial point, so no fit: α, β, d*, KL* are dashes
    assert dpo.startswith("<td>dpo [no fit]")
    assert dpo.count('<td class="num">–</td>') == 4


def test_the_peak_at_the_last_point_is_flagged():
    # gold still rising at the last point: the measured peak is only a lower bound
    text = section({"ppo": method_study([0.0, 1.0, 4.0], [0.0, 0.2, 0.3], [0.0, 1.0, 2.0], "rl")})
    assert "peak at the last point: not seen to fall" in text


def test_the_demo_report_gets_the_section_only_from_a_study():
    assert overoptimisation_section({"seed": 0}) == ""
    text = overoptimisation_section({"overoptimisation": study()})
    assert '<h2 id="over-optimisation">Over-optimisation</h2>' in text
    assert text.count("<svg") == 2

"""Matched-gain comparison (sdft.analysis.frontier): crossings, interpolation, the bootstrap and the verdict rule."""

import numpy as np
import pytest

from sdft.analysis.frontier import Curve, DecisionRule, at_position, compare_at_gain, crossing


def test_crossing_is_the_first_step_reaching_the_goal_interpolated():
    assert crossing(np.array([0.0, 5.0, 15.0, 12.0]), 10.0) == pytest.approx(1.5)
    assert crossing(np.array([0.0, 10.0, 20.0]), 10.0) == pytest.approx(1.0)
    assert crossing(np.array([0.0, 4.0, 6.0]), 10.0) is None
    assert at_position(np.array([0.0, -2.0, -6.0]), 1.5) == pytest.approx(-4.0)


def _curve(rng, gains_per_step, forgetting_per_step, n_target=200, n_measure=300, noise=0.0):
    """Per-item target scores (0/1) whose mean rises by `gains_per_step` (rates), and a measure whose items fall by
    `forgetting_per_step`."""
    base = (rng.random(n_target) < 0.2).astype(float)
    target = np.stack([np.maximum(base, rng.random(n_target) < g) for g in gains_per_step])
    items = rng.normal(0.0, 1.0, n_measure)
    measure = np.stack([items - f + rng.normal(0, noise, n_measure) for f in forgetting_per_step])
    return Curve(steps=tuple(range(len(gains_per_step))), target=target, measures={"likelihood": measure})


def test_sdft_that_forgets_less_at_the_same_gain_is_supported():
    rng = np.random.default_rng(0)
    curves = {"vanilla": [_curve(rng, [0, .2, .4, .6], [0, .3, .6, .9]) for _ in range(3)],
              "sdft": [_curve(rng, [0, .15, .3, .5], [0, .05, .1, .15]) for _ in range(3)]}
    result = compare_at_gain(curves, DecisionRule(gain=15.0, measures=("likelihood",)), n_boot=300)
    entry = result["measures"]["likelihood"]
    assert result["seeds_reaching"] == {"vanilla": 3, "sdft": 3}
    assert entry["sdft_minus_vanilla"]["diff"] > 0 and entry["sdft_minus_vanilla"]["ci95"][0] > 0
    assert entry["vanilla"]["change"] < entry["sdft"]["change"] < 0
    assert result["verdict"]["label"] == "supported"
    assert result["verdict"]["line"].startswith("Verdict at a task gain of 15: supported")


def test_sdft_that_never_reaches_the_gain_learns_less():
    rng = np.random.default_rng(1)
    curves = {"vanilla": [_curve(rng, [0, .3, .5], [0, .5, 1]) for _ in range(3)],
              "sdft": [_curve(rng, [0, 0, 0], [0, 0, 0]) for _ in range(3)]}
    result = compare_at_gain(curves, DecisionRule(gain=20.0, measures=("likelihood",)), n_boot=100)
    assert result["seeds_reaching"]["sdft"] == 0
    assert result["measures"]["likelihood"]["sdft_minus_vanilla"]["diff"] is None
    assert result["verdict"]["label"] == "learns less"


def test_sdft_that_forgets_more_is_refuted_and_equal_methods_inconclusive():
    rng = np.random.default_rng(2)
    worse = {"vanilla": [_curve(rng, [0, .2, .4], [0, .05, .1]) for _ in range(3)],
             "sdft": [_curve(rng, [0, .2, .4], [0, .6, 1.2]) for _ in range(3)]}
    assert compare_at_gain(worse, DecisionRule(gain=10.0, measures=("likelihood",)), n_boot=200)["verdict"]["label"] \
        == "refuted"
    same = [_curve(np.random.default_rng(s), [0, .2, .4], [0, .3, .6], noise=0.5) for s in range(3)]
    result = compare_at_gain({"vanilla": same, "sdft": same}, DecisionRule(gain=10.0, measures=("likelihood",)),
                             n_boot=200)
    assert result["measures"]["likelihood"]["sdft_minus_vanilla"]["diff"] == pytest.approx(0.0)
    assert result["verdict"]["label"] == "inconclusive"

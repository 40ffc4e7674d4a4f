import math

import numpy as np

from sdft.analysis.stats import bootstrap_ci, paired_bootstrap, summarize


def _scores(n, rate, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(n) < rate).astype(float).tolist()


def test_ci_contains_mean_and_narrows_with_n():
    small, large = _scores(50, 0.4), _scores(2000, 0.4)
    widths = []
    for scores in (small, large):
        lo, hi = bootstrap_ci(scores)
        assert lo <= 100 * np.mean(scores) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3


def test_ci_edge_cases():
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([1.0]) == (100.0, 100.0)
    assert bootstrap_ci([0.0, 0.0, 0.0]) == (0.0, 0.0)


def test_ci_is_deterministic_for_a_seed():
    scores = _scores(100, 0.5)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)


def test_summarize():
    out = summarize([1, 0, 1, 1])
    assert out["score"] == 75.0 and out["n"] == 4
    assert out["ci95"][0] <= 75.0 <= out["ci95"][1]
    assert summarize([]) == {"score": None, "n": 0, "ci95": [None, None]}


def test_paired_identical_gives_zero_diff_and_p_one():
    a = {str(i): s for i, s in enumerate(_scores(200, 0.5))}
    out = paired_bootstrap(a, dict(a))
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0]
    assert out["p_value"] == 1.0 and out["n"] == 200


def test_paired_clearly_better_b():
    a = {str(i): s for i, s in enumerate(_scores(300, 0.3, seed=1))}
    b = {i: 1.0 for i in a}
    out = paired_bootstrap(a, b)
    assert out["p_value"] < 0.01
    assert out["diff"] > 0 and out["ci95"][0] > 0


def test_paired_uses_common_ids_only():
    a = {"x": 0.0, "y": 1.0, "only_a": 0.0}
    b = {"x": 1.0, "y": 1.0, "only_b": 0.0}
    out = paired_bootstrap(a, b, n_boot=500)
    assert out["n"] == 2 and out["diff"] == 50.0
    assert paired_bootstrap({"x": 1.0}, {"y": 1.0})["n"] == 0


def test_seeds_by_items_bootstrap_one_seed_matches_item_bootstrap():
    from sdft.analysis.stats import seeds_by_items_bootstrap

    scores = np.array([_scores(400, 0.3)])
    result = seeds_by_items_bootstrap([scores])
    lo, hi = bootstrap_ci(scores[0])
    assert result["mean"] == 100 * scores.mean()
    assert abs(result["ci95"][0] - lo) < 1.5 and abs(result["ci95"][1] - hi) < 1.5
    assert result["seeds"] == 1 and result["items"] == 400


def test_seeds_by_items_bootstrap_widens_with_seed_variation():
    """Seeds that disagree (a run-level offset) must widen the interval beyond what the items alone give."""
    from sdft.analysis.stats import seeds_by_items_bootstrap

    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.05, size=(1, 300))
    agreeing = np.repeat(noise, 4, axis=0) + 0.1
    disagreeing = agreeing + np.array([[-0.2], [0.2], [-0.1], [0.1]])
    narrow, wide = seeds_by_items_bootstrap([agreeing], scale=1), seeds_by_items_bootstrap([disagreeing], scale=1)
    assert narrow["ci95"][0] > 0 and narrow["p_value"] < 0.01
    assert (wide["ci95"][1] - wide["ci95"][0]) > 5 * (narrow["ci95"][1] - narrow["ci95"][0])


def test_seeds_by_items_bootstrap_composite_is_mean_of_component_means():
    from sdft.analysis.stats import seeds_by_items_bootstrap

    a, b = np.ones((2, 10)), np.zeros((2, 50))
    result = seeds_by_items_bootstrap([a, b])
    assert result["mean"] == 50.0 and result["ci95"] == [50.0, 50.0] and result["items"] == 60
    assert seeds_by_items_bootstrap([])["mean"] is None

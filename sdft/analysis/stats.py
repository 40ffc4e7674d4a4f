"""Bootstrap statistics for benchmark scores: a confidence interval per score and a paired test between two models.

Benchmarks here are small (100–1300 items), so a one-point difference is often noise; every reported score carries a
95% interval and every SDFT-vs-vanilla difference a paired p-value. Scores are per-sample values in [0, 1]; results
are reported on the 0–100 scale the paper uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Resample in chunks of about this many drawn indices, so 10k resamples of a 1300-item benchmark stay small in memory.
_CHUNK_ELEMENTS = 1 << 22


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of `values`, vectorised in chunks."""
    n = len(values)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def bootstrap_ci(
    scores: Sequence[float], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 − alpha) interval of the mean score, on the 0–100 scale.

    No scores → (nan, nan): an empty benchmark has no interval, and nan cannot be mistaken for a real bound.
    One score → (s, s), which is what resampling a single value gives.
    """
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    means = _bootstrap_means(values, n_boot, np.random.default_rng(seed))
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (100 * float(lo), 100 * float(hi))


def summarize(scores: Sequence[float]) -> dict:
    """{"score", "n", "ci95"} for a results file; with no scores, score and bounds are None (JSON has no nan)."""
    n = len(scores)
    if n == 0:
        return {"score": None, "n": 0, "ci95": [None, None]}
    lo, hi = bootstrap_ci(scores)
    return {"score": 100 * float(np.mean(scores)), "n": n, "ci95": [lo, hi]}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap of mean(b − a) over the ids both models were scored on.

    Pairing by id removes the item-difficulty variance two models share, so it detects smaller differences than
    comparing two independent intervals. `diff` and `ci95` (percentile interval) are on the 0–100 scale.

    `p_value` is two-sided and read off the same bootstrap distribution: 2·min(P*(d ≤ 0), P*(d ≥ 0)), each tail
    estimated as (1 + count) / (1 + n_boot) so it is never exactly 0, and clipped to 1. It is small exactly when the
    (1 − p) percentile interval excludes 0. Identical models give p = 1.
    No common ids → diff, bounds and p are None.
    """
    ids = sorted(a.keys() & b.keys())
    if not ids:
        return {"diff": None, "ci95": [None, None], "p_value": None, "n": 0}
    d = np.array([b[i] - a[i] for i in ids], dtype=float)
    (lo, hi), p_value = _interval_and_p(_bootstrap_means(d, n_boot, np.random.default_rng(seed)))
    return {"diff": 100 * float(d.mean()), "ci95": [100 * lo, 100 * hi], "p_value": p_value, "n": len(ids)}


def _interval_and_p(boot: np.ndarray) -> tuple[tuple[float, float], float]:
    """95% percentile interval of bootstrap means, and the two-sided p against 0 read off the same draws."""
    lo, hi = np.percentile(boot, [2.5, 97.5])
    tail_low = (1 + np.count_nonzero(boot <= 0)) / (1 + len(boot))
    tail_high = (1 + np.count_nonzero(boot >= 0)) / (1 + len(boot))
    return (float(lo), float(hi)), float(min(1.0, 2 * min(tail_low, tail_high)))


def seeds_by_items_bootstrap(components: Sequence[np.ndarray], n_boot: int = 4000, seed: int = 0,
                             scale: float = 100.0, weights: Sequence[np.ndarray | None] | None = None) -> dict:
    """Mean, 95% interval and two-sided p (against 0) of a score measured on seeds × items.

    Each component is a (seeds, items) matrix of per-item values for one benchmark (for a difference, the paired
    difference of two models on the same seed and item); the statistic is the mean over components of each
    component's mean, so one component is a benchmark's score and several are a composite such as the forgetting
    index. Each resample draws seeds with replacement (one draw shared by all components, as a seed is one training
    run) and, independently per component, items with replacement: the interval covers both the variation between
    training runs and the sampling of benchmark items. With one seed it is the ordinary item bootstrap.
    `weights` (per component, an (items,) array or None) make a component's mean the weighted one: a rate pooled over
    the parts of an item, as IFEval's instruction-level accuracy (value: the item's share of instructions followed,
    weight: its number of instructions), still resampled by item, since an item's parts are not independent.
    `p_value` is read off the same distribution (`_interval_and_p`).
    """
    components = [np.asarray(c, dtype=float) for c in components]
    if not components or any(c.ndim != 2 or c.size == 0 for c in components):
        return {"mean": None, "ci95": [None, None], "p_value": None, "seeds": 0, "items": 0}
    n_seeds = components[0].shape[0]
    if any(c.shape[0] != n_seeds for c in components):
        raise ValueError("every component needs the same seeds")
    weights = [None if w is None else np.asarray(w, dtype=float) for w in weights or [None] * len(components)]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(c.size for c in components))
    boot = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        total = np.zeros(size)
        for c, w in zip(components, weights):
            items = rng.integers(0, c.shape[1], size=(size, c.shape[1]))
            drawn = c[seeds[:, :, None], items[:, None, :]]
            if w is None:
                total += drawn.mean(axis=(1, 2))
            else:
                total += (drawn.mean(axis=1) * w[items]).sum(axis=1) / w[items].sum(axis=1)
        boot[start:start + size] = total / len(components)
    mean = float(np.mean([c.mean() if w is None else np.average(c.mean(axis=0), weights=w)
                          for c, w in zip(components, weights)]))
    (lo, hi), p_value = _interval_and_p(boot)
    return {"mean": scale * mean, "ci95": [scale * lo, scale * hi], "p_value": p_value, "seeds": n_seeds,
            "items": int(sum(c.shape[1] for c in components))}

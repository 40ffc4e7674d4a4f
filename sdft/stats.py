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
    boot = _bootstrap_means(d, n_boot, np.random.default_rng(seed))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    tail_low = (1 + np.count_nonzero(boot <= 0)) / (1 + n_boot)
    tail_high = (1 + np.count_nonzero(boot >= 0)) / (1 + n_boot)
    return {
        "diff": 100 * float(d.mean()),
        "ci95": [100 * float(lo), 100 * float(hi)],
        "p_value": float(min(1.0, 2 * min(tail_low, tail_high))),
        "n": len(ids),
    }

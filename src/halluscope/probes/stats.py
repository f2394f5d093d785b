"""Summaries over examples: the mean with a percentile-bootstrap 95% confidence interval."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(values: list[float], resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of the finite values and its 95% percentile-bootstrap interval: the 2.5th and
    97.5th percentiles of the means of `resamples` resamples drawn with replacement.
    NaN / inf values (a metric undefined for that example) are left out and counted out of n.
    One value gives an interval of zero width; none gives None (JSON has no NaN)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": len(v)}


def ratio_ci(numerators: list[float], denominators: list[float], resamples: int = 1000, seed: int = 0) \
        -> dict[str, float]:
    """Σ num / Σ den over the examples where both are finite (a ratio of means, well defined
    when some denominators are 0, unlike the mean of per-example ratios) and its 95%
    percentile-bootstrap interval, resampling examples (pairs) with replacement. A zero total
    denominator gives None."""
    pairs = [(a, b) for a, b in zip(numerators, denominators)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    v = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    if len(v) == 0 or v[:, 1].sum() <= 0:
        return {"mean": None, "lo": None, "hi": None, "n": len(v)}
    rng = np.random.default_rng(seed)
    sums = v[rng.integers(0, len(v), size=(resamples, len(v)))].sum(1)  # (resamples, 2)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of zero spreads only: an infinite ratio
        ratios = np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.inf)
        lo, hi = np.percentile(ratios, [2.5, 97.5])
    return {"mean": float(v[:, 0].sum() / v[:, 1].sum()), "lo": float(lo) if math.isfinite(lo) else None,
            "hi": float(hi) if math.isfinite(hi) else None, "n": len(v)}


def chi2_sf(statistic: float, dof: int) -> float:
    """P(χ²_dof ≥ statistic), from the closed forms of the regularized upper incomplete gamma
    function at integer and half-integer shape (no scipy needed)."""
    x = statistic / 2
    if x <= 0:
        return 1.0
    if dof % 2 == 0:  # Q(k, x) = e^-x Σ_{i<k} x^i / i!
        terms = [i * math.log(x) - x - math.lgamma(i + 1) for i in range(dof // 2)]
        return min(1.0, sum(math.exp(t) for t in terms))
    # Q(k + ½, x) = erfc(√x) + e^-x Σ_{i=1..k} x^(i-½) / Γ(i + ½)
    terms = [(i - 0.5) * math.log(x) - x - math.lgamma(i + 0.5) for i in range(1, (dof - 1) // 2 + 1)]
    return min(1.0, math.erfc(math.sqrt(x)) + sum(math.exp(t) for t in terms))


def rank_histogram(ranks: list[float], members: int) -> dict:
    """Counts of the ranks 0..members-1 (pooled over examples) and Pearson's chi-square test
    of uniformity: {"counts", "chi2", "dof", "p"}; p is None without ranks."""
    counts = np.bincount(np.asarray([int(r) for r in ranks if r is not None], dtype=np.int64), minlength=members)
    total = int(counts.sum())
    if total == 0:
        return {"counts": counts.tolist(), "chi2": None, "dof": members - 1, "p": None}
    expected = total / members
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return {"counts": counts.tolist(), "chi2": chi2, "dof": members - 1, "p": chi2_sf(chi2, members - 1)}

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

"""Summaries over examples, through scipy.stats: means, ratios of means and paired differences
with percentile-bootstrap 95% intervals (resampling examples), the Wilcoxon signed-rank test of
a paired difference, and Pearson's chi-square test of a rank histogram's uniformity.

Each interval is {"mean", "lo", "hi", "n"}: n the examples whose values were finite (undefined
values, None / NaN / inf, are left out), None where a value is undefined or a bound unbounded
(JSON has no NaN or inf)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

RESAMPLES = 1000


def finite(*columns: list[float | None]) -> np.ndarray:
    """(n, k) float64 array of the rows (examples) where every column is finite."""
    rows = [r for r in zip(*columns) if all(v is not None and math.isfinite(v) for v in r)]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))


def resampled(columns: np.ndarray, statistic: Callable[..., np.ndarray], seed: int = 0,
              vectorized: bool = True) -> np.ndarray:
    """The bootstrap distribution (RESAMPLES,) of statistic(*columns) over rows resampled with
    replacement, the columns of a row kept together (paired); at least two rows. A vectorized
    statistic takes an `axis`; another is called once per resample."""
    result = stats.bootstrap(tuple(columns.T), statistic, n_resamples=RESAMPLES, paired=True, vectorized=vectorized,
                             method="percentile", rng=np.random.default_rng(seed))
    return result.bootstrap_distribution


def interval(mean: float, draws: np.ndarray | None, n: int) -> dict:
    """{"mean", "lo", "hi", "n"}: the 2.5th and 97.5th percentiles of the draws; an infinite bound
    is None; no draws (a single example): an interval of zero width."""
    if draws is None:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    with np.errstate(invalid="ignore"):  # between two infinite draws a percentile is NaN: unbounded too
        lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"mean": mean, "lo": float(lo) if math.isfinite(lo) else None,
            "hi": float(hi) if math.isfinite(hi) else None, "n": n}


def empty(n: int = 0) -> dict:
    return {"mean": None, "lo": None, "hi": None, "n": n}


def fmt_interval(ci: dict | None, spec: str = ".3g") -> str:
    """An interval as text, "mean [lo, hi]" each in `spec`: "–" without a mean, an unbounded
    end (None) as −∞ / ∞."""
    if not ci or ci.get("mean") is None:
        return "–"
    lo = "−∞" if ci["lo"] is None else format(ci["lo"], spec)
    hi = "∞" if ci["hi"] is None else format(ci["hi"], spec)
    return f"{format(ci['mean'], spec)} [{lo}, {hi}]"


def bootstrap_ci(values: list[float | None], seed: int = 0) -> dict:
    """Mean of the finite values and its 95% percentile-bootstrap interval."""
    v = finite(values)[:, 0]
    if len(v) == 0:
        return empty()
    draws = resampled(v[:, None], lambda x, axis=-1: x.mean(axis), seed) if len(v) > 1 else None
    return interval(float(v.mean()), draws, len(v))


def ratio_ci(numerators: list[float | None], denominators: list[float | None], seed: int = 0) -> dict:
    """Σ num / Σ den over the examples where both are finite (a ratio of means, well defined
    when some denominators are 0, unlike the mean of per-example ratios) and its paired
    95% percentile-bootstrap interval. None when the total denominator is 0.

    A resample whose denominator is 0 gives an infinite ratio (spread-skill of samples that
    never differ). When more than 2.5% of the resamples give a denominator of the other sign
    than the whole sample's (a normalised skill whose oracle and baseline the data cannot tell
    apart), the ratio is unbounded on both sides and both bounds are None."""
    v = finite(numerators, denominators)
    if len(v) == 0 or v[:, 1].sum() == 0:
        return empty(len(v))
    sign = np.sign(v[:, 1].sum())
    mean = float(v[:, 0].sum() / v[:, 1].sum())
    if len(v) == 1:
        return interval(mean, None, 1)
    num, den = resampled(v, lambda a, b, axis=-1: np.stack([a.sum(axis), b.sum(axis)]), seed)  # each (RESAMPLES,)
    if np.mean(den * sign < 0) > 0.025:
        return {"mean": mean, "lo": None, "hi": None, "n": len(v)}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den * sign > 0, num / den, np.inf)
    return interval(mean, ratios, len(v))


def paired_difference(a: list[float | None], b: list[float | None], seed: int = 0) -> dict:
    """mean(a − b) over the examples where both are finite, its paired 95% percentile-bootstrap
    interval, and `p`, the two-sided Wilcoxon signed-rank test of differences symmetric about 0
    (wilcoxon_p; None for fewer than 2 examples)."""
    v = finite(a, b)
    if len(v) == 0:
        return {**empty(), "p": None}
    d = v[:, 0] - v[:, 1]
    if len(d) == 1:
        return {**interval(float(d[0]), None, 1), "p": None}
    draws = resampled(d[:, None], lambda x, axis=-1: x.mean(axis), seed)
    p = wilcoxon_p(d)
    return {**interval(float(d.mean()), draws, len(d)), "p": p}


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of differences d, zeros left out: the exact null
    distribution for up to 25 differences without tied magnitudes, else the normal
    approximation with scipy's tie correction (scipy's own choice for tied small samples, a
    permutation test, costs seconds per call)."""
    nonzero = d[d != 0]
    if len(nonzero) < 2:
        return 1.0
    exact = len(nonzero) <= 25 and len(np.unique(np.abs(nonzero))) == len(nonzero)
    return float(stats.wilcoxon(nonzero, method="exact" if exact else "approx").pvalue)


def rank_histogram(ranks: list[float | None], members: int) -> dict:
    """Counts of the ranks 0..members-1 (pooled over examples) and Pearson's chi-square test
    of uniformity: {"counts", "chi2", "dof", "p"}; p is None without ranks."""
    counts = np.bincount(np.asarray([int(r) for r in ranks if r is not None], dtype=np.int64), minlength=members)
    if counts.sum() == 0:
        return {"counts": counts.tolist(), "chi2": None, "dof": members - 1, "p": None}
    test = stats.chisquare(counts)
    return {"counts": counts.tolist(), "chi2": float(test.statistic), "dof": members - 1, "p": float(test.pvalue)}


def sign_test(successes: int, trials: int) -> float | None:
    """Two-sided exact binomial test of a success rate of ½ (the sign test of paired
    comparisons); None without trials."""
    return float(stats.binomtest(successes, trials).pvalue) if trials else None


def proportion_ci(successes: int, trials: int) -> dict:
    """successes / trials with its exact (Clopper–Pearson) 95% interval and the two-sided exact
    binomial test of ½ (`p`); undefined without trials."""
    if not trials:
        return {**empty(), "p": None}
    test = stats.binomtest(successes, trials)
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    return {"mean": successes / trials, "lo": float(ci.low), "hi": float(ci.high), "n": trials, "p": float(test.pvalue)}

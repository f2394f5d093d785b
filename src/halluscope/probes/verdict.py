"""The claim as a pre-registered test: does a clip sampler get more from its context than an
image sampler does, at one context fraction?

Stated before any run (docs/probes.md, "The verdict"). For a sampler X and its shuffled twin
(X given another example's context), the context effect of one example is
Δ = m(X) − m(X shuffled): how much the example's own context buys. The verdict compares
Δ_clip − Δ_image, the mean over the clip runs' examples minus the mean over the image runs',
with a 95% interval that resamples training seeds (runs) and, within each, examples:

- **reproduced**: (i) the interval of the difference in the chance-corrected token match lies
  above 0; (ii) the object-level difference (the context's reduction of the object energy
  score) points the same way; (iii) each sampler beats every baseline of its run — copy-last,
  the marginal, its shuffled twin — in the object energy score (paired interval below 0)
  wherever the run's oracle beats that baseline too, and is not worse elsewhere: a world whose
  context cannot help (image halves drawn independently) asks no model to beat its shuffled
  twin, and what the exact posterior cannot beat on these examples no model is asked to;
- **not reproduced**: the interval of the difference lies at or below 0;
- **inconclusive**: anything else (an interval that holds 0, a missing baseline or twin, a
  sampler that does not beat its baselines, objects that do not point the same way: the
  other way, or no difference at all).
"""

from __future__ import annotations

import numpy as np

from halluscope.errors import UserError
from halluscope.probes.probe import plain
from halluscope.probes.skill import role
from halluscope.probes.stats import RESAMPLES, fmt_interval, paired_difference

TOKENS = "chance_corrected_match"  # higher is better
OBJECTS = "energy_objects"  # lower is better
BASELINES = ("copy-last", "marginal")


def per_example(records: list[dict], sampler: str, context: float, metric: str) -> dict[str, float]:
    """example id -> the sampler's metric at the context (finite values only)."""
    out = {}
    for r in records:
        value = r["metrics"].get(metric)
        if r["sampler"] == sampler and r["context"] == context and value is not None:
            out[r["example"]] = value
    return out


def effects(records: list[dict], sampler: str, context: float, metric: str, sign: float = 1.0) -> list[float]:
    """sign × (m(X) − m(X shuffled)) per example that has both."""
    own, twin = (per_example(records, name, context, metric) for name in (sampler, f"{sampler} shuffled"))
    return [sign * (own[e] - twin[e]) for e in sorted(own.keys() & twin.keys())]


def clustered_difference(a: list[list[float]], b: list[list[float]], seed: int = 0) -> dict:
    """mean(a) − mean(b), each the mean over its clusters' (training seeds') pooled values, and
    its 95% percentile interval from a two-level bootstrap: resample clusters, then values
    within each, independently for a and b. With one cluster each, a plain bootstrap over
    examples. An empty side gives an undefined difference."""
    a, b = [[np.asarray(c, float) for c in side if len(c)] for side in (a, b)]
    if not a or not b:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)

    def draw(side: list[np.ndarray]) -> float:
        picked = [side[i] for i in rng.integers(len(side), size=len(side))]
        return float(np.mean(np.concatenate([c[rng.integers(len(c), size=len(c))] for c in picked])))

    draws = np.array([draw(a) - draw(b) for _ in range(RESAMPLES)])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    mean = float(np.mean(np.concatenate(a)) - np.mean(np.concatenate(b)))
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": sum(map(len, a)) + sum(map(len, b))}


def baseline_checks(records: list[dict], sampler: str, context: float) -> dict[str, dict]:
    """Per baseline (copy-last, the marginal, the sampler's shuffled twin): the paired
    difference of object energy scores, sampler − baseline (n = 0 where the run lacks it),
    whether the sampler must beat it and whether it passes. It must beat it (interval below 0)
    where the run has no oracle or the oracle beats it; elsewhere the world leaves nothing to
    gain over that baseline on these examples, and the sampler must only not be worse
    (interval not above 0)."""
    has_oracle = bool(per_example(records, "oracle", context, OBJECTS))
    checks = {}
    twin = f"{sampler} shuffled"
    for name in (*BASELINES, twin):
        d = compare(records, sampler, name, context)
        must_beat = not has_oracle or beaten(compare(records, "oracle", "oracle shuffled" if name == twin else name,
                                                     context))
        passed = beaten(d) if must_beat else d["n"] > 0 and (d["lo"] is None or d["lo"] <= 0)
        checks[name] = {**d, "must_beat": must_beat, "passed": passed}
    return checks


def compare(records: list[dict], sampler: str, other: str, context: float) -> dict:
    """The paired difference of object energy scores, sampler − other, over their common examples."""
    own, base = per_example(records, sampler, context, OBJECTS), per_example(records, other, context, OBJECTS)
    common = sorted(own.keys() & base.keys())
    return paired_difference([own[e] for e in common], [base[e] for e in common])


def beaten(difference: dict) -> bool:
    return difference["hi"] is not None and difference["hi"] < 0


def verdict(image_runs: list[list[dict]], clip_runs: list[list[dict]], image_sampler: str, clip_sampler: str,
            context: float = 0.5) -> dict:
    """{"outcome", "line", "tokens", "objects", "baselines", ...}: the pre-registered test
    above on the records of K image runs and K' clip runs (one per training seed)."""
    tokens = clustered_difference([effects(r, clip_sampler, context, TOKENS) for r in clip_runs],
                                  [effects(r, image_sampler, context, TOKENS) for r in image_runs])
    objects = clustered_difference([effects(r, clip_sampler, context, OBJECTS, -1) for r in clip_runs],
                                   [effects(r, image_sampler, context, OBJECTS, -1) for r in image_runs])
    checks = {f"image run {i}": baseline_checks(r, image_sampler, context) for i, r in enumerate(image_runs)}
    checks |= {f"clip run {i}": baseline_checks(r, clip_sampler, context) for i, r in enumerate(clip_runs)}
    unbeaten = [f"{run}: {name}{'' if d['n'] else ' (not run)'}" for run, c in checks.items()
                for name, d in c.items() if not d["passed"]]
    if tokens["mean"] is None:
        outcome, why = "inconclusive", "no context effect measured (each sampler needs its shuffled twin)"
    elif tokens["hi"] <= 0:
        outcome, why = "not reproduced", "the clip sampler's context effect is not above the image sampler's"
    elif tokens["lo"] > 0 and objects["mean"] is not None and objects["mean"] > 0 and not unbeaten:
        outcome, why = "reproduced", "the clip sampler gets more from its context, in tokens and objects"
    else:
        reasons = (["the token interval holds 0"] if tokens["lo"] <= 0 else []) + \
            (["objects do not point the same way"] if objects["mean"] is None or objects["mean"] <= 0 else []) + \
            ([f"not beaten: {', '.join(unbeaten)}"] if unbeaten else [])
        outcome, why = "inconclusive", "; ".join(reasons)
    line = (f"verdict at context {context:g}: {outcome} — Δ_clip − Δ_image in chance-corrected match "
            f"{fmt(tokens)}, in object energy reduction {fmt(objects)} ({len(image_runs)} image and "
            f"{len(clip_runs)} clip runs; {why})")
    return {"outcome": outcome, "line": line, "context": context, "tokens": tokens, "objects": objects,
            "baselines": checks, "samplers": {"image": image_sampler, "clip": clip_sampler},
            "clip_against_oracle": against_oracle(clip_runs, clip_sampler, context)}


def default_sampler(runs: list[list[dict]], kind: str) -> str:
    """The sampler a verdict tests in runs of one kind: their one plain GPT setting
    (temperature 1, no truncation), else the oracle when that is all there is."""
    names = {r["sampler"] for run in runs for r in run}
    plain_gpts = sorted({r["sampler"] for run in runs for r in run if role(r) == "model" and plain(r)})
    if len(plain_gpts) == 1:
        return plain_gpts[0]
    if not plain_gpts and "oracle" in names:
        return "oracle"
    choices = ", ".join(sorted(names))
    raise UserError(f"the {kind} runs hold {len(plain_gpts) or 'no'} plain GPT samplers; pass "
                    f"--{'clip' if kind == 'video' else 'image'}-sampler NAME (one of: {choices})")


def verdict_of_runs(runs: list[list[dict]], context: float = 0.5, image_sampler: str | None = None,
                    clip_sampler: str | None = None) -> dict | None:
    """The verdict over probe runs' records, image runs against clip runs (several of a kind:
    one per training seed); None unless both kinds are there."""
    kinds = {k: [run for run in runs if run and run[0]["kind"] == k] for k in ("image", "video")}
    if not kinds["image"] or not kinds["video"]:
        return None
    return verdict(kinds["image"], kinds["video"], image_sampler or default_sampler(kinds["image"], "image"),
                   clip_sampler or default_sampler(kinds["video"], "video"), context)


NEAR = (("match_mean", "match rate"), ("exact_rate", "exact rate"), ("objects_invented", "objects invented per frame"),
        ("objects_dropped", "objects dropped per frame"), ("energy_objects", "object energy score"))


def against_oracle(runs: list[list[dict]], sampler: str, context: float) -> str:
    """The "nearly reproduces the truth" half, in plain words: the sampler's figures beside the
    oracle's (means over the runs' examples), or why they cannot be set side by side."""
    def values(name: str, metric: str) -> list[float]:  # every run's examples (seeds share example ids)
        return [v for run in runs for v in per_example(run, name, context, metric).values()]

    if sampler == "oracle" or not values("oracle", "match_mean"):
        return f"{sampler} at context {context:g}: no oracle to compare with"
    parts = [f"{label} {np.mean(own):.3f} (oracle {np.mean(oracle):.3f})" for metric, label in NEAR
             if (own := values(sampler, metric)) and (oracle := values("oracle", metric))]
    return f"{sampler} against the oracle at context {context:g}: " + ", ".join(parts)


def fmt(stats: dict) -> str:
    return fmt_interval(stats, "+.3f")

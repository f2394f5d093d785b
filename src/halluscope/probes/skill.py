"""Every figure against its chance level and its baselines, and calibration verdicts that
need evidence.

Per record (one example's N samples):
    chance_match            1/L Σ_l p_l(x_l), p_l the training tokens' marginal at position l:
                            the match rate expected of the marginal baseline on this truth
    chance_corrected_match  (match_mean − chance_match) / (1 − chance_match)
    foreground_*            the token figures over the positions whose true patch holds a shape

Per summary row (paired over the examples both rows hold, bootstrap 95% intervals):
    normalised_skill_{m}_vs_{b}  (m(model) − m(b)) / (m(oracle) − m(b)), a ratio of means
    context_effect_{m}           m(sampler) − m(the same sampler given another example's context)
    context_gain_{m}             m(this context) − m(the run's shortest context), fixed target only
    relative_energy_{d}          energy_{d}(sampler) / energy_{d}(oracle), a ratio of means
    verdicts                     {pixels, features, objects}: calibration_verdict of R"""

from __future__ import annotations

import torch

from halluscope.probes.stats import paired_difference, ratio_ci

# The figures that score closeness to the truth (higher or lower is better), against which
# samplers are compared; diversities, spreads and ranks describe a sampler, they do not score it.
SCORES = ("match_mean", "chance_corrected_match", "foreground_match_mean", "foreground_chance_corrected_match",
          "pixel_mse_mean", "recon_mse_mean", "foreground_pixel_mse_mean", "feature_mse_mean", "retrieval",
          "energy_tokens", "energy_pixels", "energy_features", "energy_objects", "objects_invented",
          "objects_dropped", "objects_recoloured", "objects_position_error")
JOINT = ("pixels", "features", "objects")  # distances that see joint structure: the only calibration verdicts
MARGIN = (0.9, 1.1)  # an R interval inside it is "calibrated"
BASELINES = ("copy-last", "marginal", "shuffled")


def chance_metrics(truth: torch.Tensor, samples: torch.Tensor, marginal: torch.Tensor | None,
                   foreground: torch.Tensor | None) -> dict[str, float]:
    """truth (L,), samples (N, L) continuation tokens; marginal (L, V) the training tokens'
    per-position marginal at those positions (None: no chance level); foreground (L,) bool,
    the positions whose true patch holds a shape (None: not a world)."""
    hits = (samples == truth[None]).double().mean(0)  # (L,) each position's match rate
    chance = None if marginal is None else marginal.to(truth.device).gather(1, truth[:, None])[:, 0].double()
    out = {} if chance is None else corrected(hits, chance, "")
    if foreground is not None:
        keep = foreground.to(hits.device)
        out["foreground_share"] = keep.double().mean().item()
        out["foreground_match_mean"] = hits[keep].mean().item() if keep.any() else float("nan")
        if chance is not None:
            out.update(corrected(hits[keep], chance[keep], "foreground_"))
    return out


def corrected(hits: torch.Tensor, chance: torch.Tensor, prefix: str) -> dict[str, float]:
    """{prefix}chance_match and {prefix}chance_corrected_match of per-position match rates and
    chance levels; NaN over no positions, or when chance is 1 (nothing left to predict)."""
    level = chance.mean().item() if len(chance) else float("nan")
    match = hits.mean().item() if len(hits) else float("nan")
    return {f"{prefix}chance_match": level,
            f"{prefix}chance_corrected_match": (match - level) / (1 - level) if level < 1 else float("nan")}


def calibration_verdict(r: dict | None, skill: float | None = None, spread: float | None = None,
                        margin: tuple[float, float] = MARGIN) -> str:
    """What a spread-skill interval r = {"mean", "lo", "hi"} (a None bound is unbounded) says:
    "calibrated" only when it lies inside the equivalence margin (the data rule out a ratio
    outside it); "inconclusive" when it holds 1 but reaches outside the margin; otherwise
    "under-dispersed" (R > 1: the samples agree with each other more than with the truth,
    confidently wrong) or "over-dispersed" (R < 1). Without a ratio (no spread at all), the
    mean skill and spread decide: samples that never differ but miss the truth are
    "under-dispersed"; otherwise "undefined"."""
    if not r or r.get("mean") is None:
        return "under-dispersed" if spread == 0 and skill is not None and skill > 0 else "undefined"
    lo = -float("inf") if r["lo"] is None else r["lo"]
    hi = float("inf") if r["hi"] is None else r["hi"]
    if margin[0] <= lo and hi <= margin[1]:
        return "calibrated"
    if lo <= 1 <= hi:
        return "inconclusive"
    return "under-dispersed" if lo > 1 else "over-dispersed"


def role(settings: dict) -> str:
    """"oracle", a baseline's name, or "model"."""
    if settings.get("baseline"):
        return settings["baseline"]
    return "oracle" if settings.get("gpt") == "oracle" else "model"


def compare(rows: list[dict], records: list[dict]) -> None:
    """Add to the summary rows (see the module docstring) the figures that pair one row's
    examples with another's: normalised skills, context effects, context gains, energies
    relative to the oracle's, and the calibration verdicts of plain samplers."""
    values: dict[tuple, dict[str, dict]] = {}
    for r in records:
        values.setdefault((r["kind"], r["sampler"], r["context"]), {})[r["example"]] = r["metrics"]

    def columns(*keys: tuple, metric: str) -> list[list[float | None]]:
        """One list per row key: the metric over the examples every row holds, in one order."""
        common = sorted(set.intersection(*(set(values[k]) for k in keys)))
        return [[values[k][e].get(metric) for e in common] for k in keys]

    def key(row: dict) -> tuple:
        return row["kind"], row["sampler"], row["context"]

    for row in rows:
        here = [r for r in rows if r["kind"] == row["kind"] and r["context"] == row["context"]]
        oracle = next((r for r in here if role(r["settings"]) == "oracle"), None)
        twin = next((r for r in here if r["settings"].get("of") == row["sampler"]), None)
        baselines = {role(r["settings"]): r for r in here if role(r["settings"]) in ("copy-last", "marginal")
                     and r is not row}
        if twin is not None:
            baselines["shuffled"] = twin
        metrics = row["metrics"]
        scores = [m for m in SCORES if m in metrics]
        if oracle is not None and oracle is not row:
            for name, base in baselines.items():
                for m in scores:
                    x, b, o = columns(key(row), key(base), key(oracle), metric=m)
                    metrics[f"normalised_skill_{m}_vs_{name}"] = ratio_ci(
                        [diff(xi, bi) for xi, bi in zip(x, b)], [diff(oi, bi) for oi, bi in zip(o, b)])
            for d in JOINT + ("tokens",):
                if f"energy_{d}" in metrics:
                    metrics[f"relative_energy_{d}"] = ratio_ci(*columns(key(row), key(oracle), metric=f"energy_{d}"))
        if twin is not None:
            for m in scores:
                metrics[f"context_effect_{m}"] = paired_difference(*columns(key(row), key(twin), metric=m))
        shortest = min(r["context"] for r in rows if r["kind"] == row["kind"] and r["sampler"] == row["sampler"])
        if row.get("target") is not None and row["context"] != shortest:
            reference = (row["kind"], row["sampler"], shortest)
            row["reference_context"] = shortest
            for m in scores:
                metrics[f"context_gain_{m}"] = paired_difference(*columns(key(row), reference, metric=m))
        if row.get("plain"):
            row["verdicts"] = {d: calibration_verdict(metrics.get(f"spread_skill_{d}"), mean(metrics, f"skill_{d}"),
                                                      mean(metrics, f"spread_{d}"))
                               for d in JOINT if f"skill_{d}" in metrics}
        row["metrics"] = dict(sorted(metrics.items()))


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def mean(metrics: dict, name: str) -> float | None:
    return (metrics.get(name) or {}).get("mean")

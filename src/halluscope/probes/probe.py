"""The continuation probe runner: examples × context fractions × samplers (GPTs and their
sampling settings, or the oracle) -> one record per (example, context, sampler) in
records.jsonl, then summary.json / summary.csv with bootstrap 95% intervals over examples.

Examples are sampled in fixed blocks of `batch` (examples 0..B-1, B..2B-1, ...: one GPT call
continues all of a block's contexts at once). A block's random seed depends only on (run
seed, block, context), so a resumed run draws what the uninterrupted one would have (a block
with a missing record is drawn again whole and only the missing records are kept), and every
sampler sees the same seed.

Each context's tokens are encoded as `ProbeConfig.encoding` says (probes/context.py: from the
shown pixels alone by default); every record carries that mode, the context's measured leak
(`context_leak`: the share of its tokens that change when another example's continuation
replaces its own) and `context_agreement` (the share that equal the full encoding's: what
leak-free contexts cost a GPT trained on full encodings)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from halluscope.io import atomic_path, read_jsonl, write_json
from halluscope.probes import calibration, metrics, objects, skill
from halluscope.probes.detection import detect, detection_metrics
from halluscope.probes.memorization import Memory, memorization_metrics
from halluscope.probes.context import context_leak, context_split, cut, encode_context
from halluscope.probes.redundancy import redundancy_curve
from halluscope.probes.samplers import Example, GPTSampler, OracleSampler, Sampler
from halluscope.probes.stats import bootstrap_ci, rank_histogram, ratio_ci
from halluscope.probes.target import describe, scored_split

RECORDS, SUMMARY_JSON, SUMMARY_CSV = "records.jsonl", "summary.json", "summary.csv"
DISTANCES = ("tokens", "pixels", "features", "objects")  # the spaces spread-skill is measured in
RANKS = ("tokens", "pixels", "features", "objects", "nll")  # the pre-ranks of the rank histograms


@dataclass
class ProbeConfig:
    contexts: list[float]
    samples: int = 8
    seed: int = 0
    batch: int = 8  # examples sampled (and encoded) together; part of the seed, so fixed for a run
    pool: int = 16  # other examples' real continuations in each retrieval pool
    redundancy: bool = True  # also each GPT's teacher-forced redundancy curve (probes/redundancy.py)
    encoding: str = "visible"  # how context tokens are encoded (probes/context.py)
    target: float | None = None  # score only the last `target` of rows / latent frames (probes/target.py)
    marginal: torch.Tensor | None = None  # (L, V) training tokens' per-position marginal: the chance levels
    only_at: dict[str, list[float]] = field(default_factory=dict)  # sampler name -> its contexts (default: all)
    memory: Memory | None = None  # the training set the memorization figures compare with (probes/memorization.py)


@dataclass
class Truth:
    """What the probe needs of one example, computed once for every context and sampler."""
    tokens: torch.Tensor  # (*grid)
    pixels: torch.Tensor  # (3, ...) the example
    reconstruction: torch.Tensor  # (3, ...) the tokenizer's decoding of its own tokens
    features: torch.Tensor  # (D, L) encoder features per token position
    recon_features: torch.Tensor  # (D, L) the same of the reconstruction: what decoded samples are compared with
    context: dict[int, torch.Tensor]  # context units -> the context tokens a sampler is given (units * per unit,)
    leak: dict[int, float]  # context units -> context_leak
    agreement: dict[int, float]  # context units -> context_agreement

    def given(self, units: int) -> torch.Tensor:
        """(L,) the context tokens for `units` followed by the example's own continuation."""
        context = self.context[units]
        return torch.cat([context, self.tokens.flatten()[len(context):]])


def record_key(record: dict) -> tuple[str, float, str]:
    return record["example"], record["context"], record["sampler"]


def block_seed(seed: int, block: int, context: float) -> int:
    return int(np.random.SeedSequence([seed, block, round(context * 1e6)]).generate_state(1)[0])


@torch.no_grad()
def prepare(examples: list[Example], tokenizer: torch.nn.Module, batch: int, units: list[int],
            encoding: str = "visible") -> list[Truth]:
    """Each example's tokens, reconstruction and features, and for each context size in `units`
    its context tokens under `encoding`, their leak (against the next example's continuation)
    and their agreement with the full encoding."""
    device = next(tokenizer.parameters(), torch.empty(0)).device
    truths = []
    for i in tqdm(range(0, len(examples), batch), desc="encoding examples", unit="batch", leave=False):
        block = range(i, min(i + batch, len(examples)))
        x = torch.stack([examples[k].pixels for k in block]).to(device)
        other = torch.stack([examples[(k + 1) % len(examples)].pixels for k in block]).to(device)
        tokens = tokenizer.encode(x)
        recon = tokenizer.decode(tokens).clamp(-1, 1)
        feats = tokenizer.features(x).flatten(2)
        recon_feats = tokenizer.features(recon).flatten(2)
        context, leak, agreement = [{} for _ in block], [{} for _ in block], [{} for _ in block]
        for u in units:
            visible = encode_context(tokenizer, x, u, "visible")
            full = tokens.flatten(1)[:, :visible.shape[1]]
            # One example has no other continuation to swap in: its leak is unmeasured (null), not 0.
            leaks = context_leak(tokenizer, x, other, u, encoding).tolist() if len(examples) > 1 \
                else [math.nan] * len(x)
            for j, (given, same, share) in enumerate(zip(visible if encoding == "visible" else full,
                                                         (visible == full).double().mean(1).tolist(), leaks)):
                context[j][u], agreement[j][u], leak[j][u] = given, same, share
        truths += [Truth(*parts) for parts in zip(tokens, x, recon, feats, recon_feats, context, leak, agreement)]
    return truths


@torch.no_grad()
def measure(truth: Truth, others: list[Truth], sampler: Sampler, new: torch.Tensor, context: float,
            tokenizer: torch.nn.Module, rng: np.random.Generator, example: Example | None = None,
            config: ProbeConfig | None = None) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """(metrics, decoded samples (N, 3, ...), entropy map or None) of one example's N
    continuations `new` (N, L - context_tokens) drawn by `sampler`; `rng` breaks rank ties.
    Spread-skill compares like with like: decoded samples with the decoded truth tokens (the
    reconstruction), so tokenizer error does not count as the sampler's. What is scored is
    the whole continuation, or the config's fixed target (probes/target.py); a world example
    (with meta) adds its object and foreground figures, a config with the training marginal
    the chance-corrected ones."""
    grid = tuple(truth.tokens.shape)
    units, n_ctx = context_split(grid, context)
    start, n_start = scored_split(grid, units, config.target if config else None)
    skip = n_start - n_ctx  # continuation tokens before the target
    seq = truth.given(units)  # the context the sampler was given, then the real continuation
    n = len(new)
    full = torch.cat([seq[None, :n_ctx].expand(n, -1), new], 1)  # (N, L)
    pixels = tokenizer.decode(full.view(n, *grid)).clamp(-1, 1)  # (N, 3, ...)
    # A sample that is the truth token for token decodes to the reconstruction; decoding in
    # another batch size differs in the last float bits, which would read as a nonzero distance.
    same = (full == truth.tokens.flatten()[None]).all(1)
    pixels[same] = truth.reconstruction.to(pixels.dtype)
    target, drawn = seq[n_start:], new[:, skip:]
    out = {"context_leak": truth.leak[units], "context_agreement": truth.agreement[units]}
    out.update(metrics.token_metrics(target, drawn))
    out.update(calibration.ensemble_metrics(target, drawn, calibration.HAMMING, "tokens", rng))
    world = example is not None and example.meta is not None
    foreground = objects.foreground_tokens(truth.pixels, grid).flatten()[n_start:] if world else None
    marginal = config.marginal[n_start:] if config is not None and config.marginal is not None else None
    out.update(skill.chance_metrics(target, drawn, marginal, foreground))
    entropy, scored = None, None
    if hasattr(sampler, "score"):
        scored = sampler.score(torch.cat([seq[None], full]), n_ctx)  # row 0: the truth
        scored = {k: v[:, skip:] for k, v in scored.items()}
        out.update(metrics.likelihood_metrics({k: v[0] for k, v in scored.items()}, scored["logprob"][1:]))
        out.update(calibration.likelihood_calibration(scored["logprob"][0], scored["logprob"][1:], rng))
        entropy = metrics.entropy_map(scored["entropy"][0], grid, n_start)
    region = cut(pixels, grid, start)
    raw, recon = cut(truth.pixels, grid, start), cut(truth.reconstruction, grid, start)
    out.update(metrics.distance_metrics(raw, region, "pixel_", pixels=True))
    out.update(metrics.distance_metrics(recon, region, "recon_", pixels=True))
    out["floor_rate"] = calibration.floor_rate(raw, region, recon)
    out.update(calibration.ensemble_metrics(recon, region, calibration.RMS, "pixels", rng))
    out["pixel_diversity"] = metrics.pairwise_mse(region)
    seg = None  # the matched objects, on worlds
    if world:
        seg = objects.segment_members(recon, region, raw)
        shape = objects.foreground_pixels(raw, clip=len(grid) == 3).to(raw.device)
        out["foreground_pixel_mse_mean"] = (region - raw[None]).pow(2)[:, :, shape].mean().item() if shape.any() \
            else float("nan")
        out.update(objects.object_metrics(seg, rng))
    feats = tokenizer.features(pixels).flatten(2)[:, :, n_start:]  # (N, D, target tokens)
    feats[same] = truth.recon_features[:, n_start:].to(feats.dtype)
    out.update(metrics.distance_metrics(truth.features[:, n_start:], feats, "feature_"))
    out.update(calibration.ensemble_metrics(truth.recon_features[:, n_start:], feats, calibration.RMS, "features", rng))
    out["feature_diversity"] = metrics.pairwise_mse(feats)
    out["vendi"] = metrics.vendi_score(feats)
    if config is not None and config.memory is not None:  # row 0 the truth's reconstruction, then the samples
        out.update(memorization_metrics(torch.cat([target[None], drawn]), torch.cat([recon[None], region]),
                                        torch.cat([truth.recon_features[None, :, n_start:], feats]), start,
                                        config.memory, example.id if example is not None else None))
    pool = torch.stack([cut(o.pixels, grid, start) for o in others]) if others else region[:0]
    out["retrieval"] = metrics.retrieval_rate(raw, region, pool)
    out["retrieval_chance"] = 1 / (len(pool) + 1) if len(pool) else float("nan")
    pool_features = torch.stack([o.recon_features[:, n_start:] for o in others]) if others else feats[:0, 0]
    likelihoods = (scored["logprob"][1:], scored["entropy"][1:]) if scored else (None, None)  # the samples' rows
    out.update(detection_metrics(drawn, region, feats, truth.recon_features[:, n_start:], pool_features,
                                 *likelihoods, seg))
    return out, pixels, entropy


def run_probe(examples: list[Example], tokenizer: torch.nn.Module, samplers: list[Sampler], config: ProbeConfig,
              out: str | os.PathLike, resume: bool = False, on_samples=None, shard: tuple[int, int] = (0, 1),
              barrier=None) -> list[dict]:
    """Probe every (example, context, sampler) not yet in out/records.jsonl (with `resume`;
    without it an existing file is replaced), appending one record per line as it goes;
    then write the summaries (with each GPT's redundancy curve when `config.redundancy`).
    `on_samples(example_index, context, sampler, pixels, truth)`
    sees each decoded set of samples (the report keeps a few for its grids). Returns all records.

    With shard = (rank, world) and world > 1 (torchrun), rank r probes the blocks
    b ≡ r (mod world) into records.rank{r}.jsonl; after `barrier()` rank 0 merges every
    shard into records.jsonl and writes the summaries, and the other ranks return []."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = shard
    path = out / (RECORDS if world == 1 else f"records.rank{rank}.jsonl")
    done = (read_jsonl(out / RECORDS) + (read_jsonl(path) if world > 1 else [])) if resume else []
    with atomic_path(path) as tmp:  # drop a half-written last line before appending to the file
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done
                               if world == 1 or r["index"] // config.batch % world == rank))
    finished = {record_key(r) for r in done}
    blocks = [range(b, min(b + config.batch, len(examples))) for b in range(0, len(examples), config.batch)]
    todo = []  # (block, context, sampler, examples of the block still missing a record)
    for b, block in enumerate(blocks):
        if b % world != rank:
            continue
        for context, sampler in itertools.product(config.contexts, samplers):
            if context not in config.only_at.get(sampler.name, config.contexts):
                continue
            missing = [k for k in block if (examples[k].id, context, sampler.name) not in finished]
            if missing:
                todo.append((b, context, sampler, missing))
    grid = tuple(tokenizer.grid)
    units = sorted({context_split(grid, c)[0] for c in config.contexts})
    truths = prepare(examples, tokenizer, config.batch, units, config.encoding) if todo else []
    device = truths[0].tokens.device if truths else torch.device("cpu")
    records = list(done)
    with open(path, "a") as f, tqdm(total=sum(len(t[3]) for t in todo), desc="probing", unit="record") as bar:
        for b, context, sampler, missing in todo:
            units, n_ctx = context_split(grid, context)
            seed = block_seed(config.seed, b, context)
            generator = torch.Generator(device).manual_seed(seed)
            tokens = torch.stack([truths[k].given(units).view(grid) for k in blocks[b]])  # (B, *grid)
            new = sampler.sample([examples[k] for k in blocks[b]], tokens, units, n_ctx, config.samples, generator)
            for k, drawn in zip(blocks[b], new.to(device)):
                if k not in missing:
                    continue
                others = [truths[(k + d) % len(truths)] for d in range(1, min(config.pool, len(truths) - 1) + 1)]
                rng = np.random.default_rng([seed, k])  # rank ties: the same draw on resume
                values, pixels, entropy = measure(truths[k], others, sampler, drawn, context, tokenizer, rng,
                                                  examples[k], config)
                record = {"example": examples[k].id, "index": k, "kind": tokenizer.kind, "context": context,
                          "context_encoding": config.encoding, "target": config.target, "samples": config.samples,
                          "sampler": sampler.name, **sampler.settings, "seed": seed,
                          "metrics": {m: clean(v) for m, v in values.items()},
                          **({"group": config.memory.group} if config.memory else {})}
                if examples[k].id in getattr(sampler, "stats", {}):  # e.g. the oracle's acceptance rate
                    record["sampler_stats"] = sampler.stats[examples[k].id]
                if entropy is not None:
                    record["entropy_map"] = [clean(v) for v in entropy.flatten().tolist()]
                    record["grid"] = list(entropy.shape)
                f.write(json.dumps(record) + "\n")
                f.flush()
                records.append(record)
                bar.update()
                if on_samples is not None:
                    on_samples(k, context, sampler, pixels, truths[k])
    if world > 1:
        records = merge_shards(out, rank, world, barrier)
        if records is None:
            return []
    curves = {}
    if config.redundancy and examples:
        fps = (examples[0].meta or {}).get("fps")  # world clips know their frame rate
        gpts = {s.label: s.gpt for s in samplers if isinstance(s, GPTSampler)}
        world = next((s.world for s in samplers if isinstance(s, OracleSampler)), None)  # its true R beside the GPT's
        curves = {label: redundancy_curve(gpt, tokenizer, examples, config.contexts, fps, config.batch, config.encoding,
                                          world)
                  for label, gpt in gpts.items()}
    write_summary(records, out, curves)
    return records


def merge_shards(out: Path, rank: int, world: int, barrier) -> list[dict] | None:
    """After every rank has finished (barrier), rank 0 gathers records.jsonl and each
    records.rank{r}.jsonl into records.jsonl, one record per key, and removes the shards.
    Returns the merged records on rank 0, None on the others."""
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    shards = [out / f"records.rank{r}.jsonl" for r in range(world)]
    merged: dict[tuple, dict] = {}
    for source in [out / RECORDS, *shards]:
        for r in read_jsonl(source):
            merged.setdefault(record_key(r), r)
    records = sorted(merged.values(), key=lambda r: (r["index"], r["context"], r["sampler"]))
    with atomic_path(out / RECORDS) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    for shard in shards:
        shard.unlink(missing_ok=True)
    return records


def clean(v: float) -> float | None:
    """Six significant digits (small MSEs stay visible); JSON has no NaN, so an undefined value
    is null (the summaries skip it)."""
    return float(f"{v:.6g}") if math.isfinite(v) else None


def plain(settings: dict) -> bool:
    """Whether a sampler draws from the model's own distribution (temperature 1, no top-k /
    top-p, no guidance; the oracle too): only then are spread-skill and ranks a calibration
    verdict. Tempered, truncated or guided sampling narrows the samples and inflates matches."""
    return (settings.get("temperature") in (None, 1) and not settings.get("top_k") and settings.get("top_p") in (None, 1)
            and settings.get("cfg_scale") in (None, 1))


def summarize(records: list[dict]) -> list[dict]:
    """One row per (kind, sampler, context): each metric's mean and bootstrap 95% interval
    over examples; spread_skill_{distance} = Σ skill / Σ spread over examples with its
    bootstrap interval; the pooled rank histograms with their chi-square uniformity test;
    then the figures that pair rows: against baselines and the oracle, the effect of the
    context, and calibration verdicts (probes/skill.py)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["kind"], r["sampler"], r["context"]), []).append(r)
    rows = []
    for (kind, sampler, context), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        values = [{**r["metrics"], **sampler_metrics(r)} for r in rs]
        names = sorted({m for v in values for m in v})
        stats = {m: bootstrap_ci([v.get(m) for v in values]) for m in names}
        for d in DISTANCES:
            if f"skill_{d}" in names:
                stats[f"spread_skill_{d}"] = ratio_ci([r["metrics"].get(f"skill_{d}") for r in rs],
                                                      [r["metrics"].get(f"spread_{d}") for r in rs])
        histograms = {d: rank_histogram([r["metrics"].get(f"rank_{d}") for r in rs], rs[0]["samples"] + 1)
                      for d in RANKS if f"rank_{d}" in names}
        for d, h in histograms.items():  # the uniformity p-value also goes to the CSV, without an interval
            stats[f"rank_{d}_p"] = {"mean": h["p"], "lo": None, "hi": None, "n": int(sum(h["counts"]))}
        settings = {k: rs[0].get(k) for k in ("gpt", "temperature", "top_k", "top_p", "cfg_scale", "cond", "baseline",
                                                "of")}
        notes = sorted({r["sampler_stats"]["note"] for r in rs if "note" in r.get("sampler_stats", {})})
        rows.append({"kind": kind, "sampler": sampler, "context": context, "target": rs[0].get("target"),
                     "context_encoding": rs[0].get("context_encoding", "full"),  # older records: full
                     "examples": len(rs), "settings": settings, "plain": plain(settings),
                     **({"group": rs[0]["group"]} if "group" in rs[0] else {}),
                     "metrics": dict(sorted(stats.items())), "rank_histograms": histograms,
                     **({"sampler_notes": notes} if notes else {})})
    skill.compare(rows, records)
    return rows


def sampler_metrics(record: dict) -> dict[str, float]:
    """A record's numeric sampler statistics as metrics `sampler_{name}` (the oracle's
    acceptance rate, how often its drawn clip state differs from the recorded one, the
    world's known entropy and information in bits), so the summary gives them intervals."""
    return {f"sampler_{k}": v for k, v in record.get("sampler_stats", {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def add_redundancy(rows: list[dict], curves: dict[str, list[dict]]) -> None:
    """Each GPT sampler's row gains its GPT's redundancy and information (bits per token) at
    its context: teacher-forced, so the same for every sampling setting of one GPT (not for
    its shuffled twin, which is not given the context the curve scores)."""
    for row in rows:
        if row["settings"].get("baseline"):
            continue
        for point in curves.get(row["settings"]["gpt"], []):
            if point["context"] == row["context"]:
                row["metrics"]["redundancy"] = point["redundancy"]
                row["metrics"]["information_bits_per_token"] = point["information_bits_per_token"]


def write_summary(records: list[dict], out: Path, curves: dict[str, list[dict]] | None = None) -> list[dict]:
    """summary.json ({"groups": rows, "redundancy": {gpt: curve}, "detection": detection rows})
    and summary.csv."""
    rows = summarize(records)
    add_redundancy(rows, curves or {})
    write_json(out / SUMMARY_JSON, {"groups": rows, "redundancy": curves or {}, "detection": detect(records)})
    with atomic_path(out / SUMMARY_CSV) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "sampler", "context", "target", "examples", "metric", "mean", "ci_lo", "ci_hi", "n", "p"])
        for row in rows:
            for m, s in row["metrics"].items():
                w.writerow([row["kind"], row["sampler"], row["context"], describe(row["target"]), row["examples"], m,
                            *("" if s.get(k) is None else f"{s[k]:.6g}" for k in ("mean", "lo", "hi")), s["n"],
                            "" if s.get("p") is None else f"{s['p']:.6g}"])
    return rows

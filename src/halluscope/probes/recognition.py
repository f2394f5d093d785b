"""The recognition probe: can a model tell a real clip from its twin whose second half breaks
physics, even if it cannot generate the real one? Each clip's continuation after a shared
context is scored by teacher forcing; a model that recognizes the break finds the twin's
continuation less likely.

    nll(x)   = -1/L Σ_{l > context} log p(x_l | x_<l)           (nats per token)
    gap      = 1/P Σ_pairs nll(violation) - nll(real)             (> 0: violations look less likely)
    AUC      = P(nll(v) > nll(r)) + ½ P(nll(v) = nll(r)) over all (real, violation) clips
               (Mann-Whitney; 0.5 = chance, 1 = every violation scores worse than every real clip)
    paired   = 1/P Σ_pairs [nll(violation) > nll(real)]
    auc_p    = the two-sided Mann-Whitney U test of AUC = 0.5
    paired_p = the two-sided sign test of paired = 0.5 (pairs with equal NLLs left out)
    paired_accuracy_ci = paired with its exact (Clopper-Pearson) 95% interval and binomial p
    generative = 1/P Σ_pairs 1/N Σ_samples [mse(sample, real) < mse(sample, violation)]
               (+ ½ on ties): recognition's question asked of the model's own continuations, on
               the same pairs; 0.5 = its samples side with neither

Every figure but the AUC is also given per violation kind (`by_kind`): a vanish removes
content and can lower the NLL where a teleport or a recolour adds surprise.

A twin shares its real clip's context pixels; its context tokens are encoded from the shown
pixels alone (`visible`, the default), so both are scored after the same context tokens, and
the summary says in how many pairs they differ (`context_differs`: 0 under `visible`; under
`full` a non-causal tokenizer lets the break leak into the context).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
from halluscope.gpt.base import TokenModel
from halluscope.probes.context import context_split, cut, encode_context
from halluscope.probes.samplers import check_world_fits, world_from_folder, world_lines
from halluscope.probes.stats import bootstrap_ci, interval, proportion_ci, resampled, sign_test


def roc_auc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative), ties counting one half: the area under the ROC
    curve of the score as a detector of positives (the Mann-Whitney U of the positives over
    the number of pairs)."""
    if len(negatives) == 0 or len(positives) == 0:
        raise UserError("the recognition probe needs at least one real clip and one violation")
    u = stats.mannwhitneyu(np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)).statistic
    return float(u / (len(negatives) * len(positives)))


def auc_ci(negatives: list[float], positives: list[float], seed: int = 0) -> dict:
    """The AUC of paired scores and its 95% percentile-bootstrap interval, resampling pairs
    (a real clip with its own twin) with replacement."""
    v = np.column_stack([negatives, positives]).astype(np.float64)
    draws = resampled(v, roc_auc, seed, vectorized=False) if len(v) > 1 else None
    return interval(roc_auc(negatives, positives), draws, len(v))


def roc_curve(negatives: list[float], positives: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every threshold, from (0, 0) to (1, 1)."""
    thresholds = np.unique(np.concatenate([negatives, positives]))[::-1]
    fpr = [0.0] + [float((np.asarray(negatives) >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((np.asarray(positives) >= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


@dataclass
class Pair:
    id: str  # the real clip's file
    real: torch.Tensor  # pixels, (3, T, H, W) or (3, H, W)
    violation: torch.Tensor
    kind: str = "unknown"  # teleport / vanish / recolor for world twins, else what the pairs file says


def load_pairs(data: str | os.PathLike | None, pairs: str | os.PathLike | None, tokenizer: torch.nn.Module,
               limit: int | None = None) -> list[Pair]:
    """Real / violation pixel pairs: from a world folder written with --violations, or a JSONL
    file of {"real": path, "violation": path[, "kind": name]} (paths relative to the file)."""
    if (data is None) == (pairs is None):
        raise UserError("give exactly one of --data WORLD_DIR (written with --violations) or --pairs FILE.jsonl")
    out = []
    if data is not None:
        world = world_from_folder(data)
        if world is None:
            raise UserError(f"{data} is not a world folder (no world.json); use --pairs for your own clips")
        check_world_fits(world, tokenizer, data)
        lines = world_lines(data)
        by_file = {m["file"]: m for m in lines}
        for m in lines:
            if m.get("twin") in by_file:
                real = by_file[m["twin"]]
                out.append(Pair(real["file"], world.render(real), world.render(m), m["violation"]["kind"]))
        if not out:
            raise UserError(f"{data} holds no violation twins; write the world with --violations")
    else:
        path = Path(pairs)
        load = load_image if tokenizer.kind == "image" else lambda p, r: load_clip(p, r, tokenizer.frames)
        try:
            specs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise UserError(f"pairs file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON lines: {e}") from None
        for k, spec in enumerate(specs):
            if not isinstance(spec, dict) or not {"real", "violation"} <= spec.keys():
                raise UserError(f"{path} line {k + 1}: expected {{\"real\": path, \"violation\": path}}")
            real, violation = (load(path.parent / spec[k], tokenizer.resolution) for k in ("real", "violation"))
            out.append(Pair(spec["real"], real, violation, str(spec.get("kind", "unknown"))))
    return out[:limit]


@torch.no_grad()
def recognition(gpt: TokenModel, tokenizer: torch.nn.Module, pairs: list[Pair], context: float, encoding: str = "visible",
                samples: int = 8, seed: int = 0) -> tuple[list[dict], dict]:
    """Per-pair records and the summary for one GPT: AUC, paired accuracy (with its exact
    interval), NLL gap, the share of pairs whose context tokens differ, and the generative
    two-alternative test on the same pairs — the share of the GPT's own `samples`
    continuations closer in pixels to the real continuation than to the violating one (ties
    count ½; 0 samples: not run) — overall and per violation kind."""
    device = next(gpt.parameters()).device
    units, n_ctx = context_split(tuple(tokenizer.grid), context)
    generator = torch.Generator(device).manual_seed(seed)
    records = []
    for pair in tqdm(pairs, desc="scoring pairs", unit="pair"):
        x = torch.stack([pair.real, pair.violation]).to(device)
        given = encode_context(tokenizer, x, units, encoding)  # (2, n_ctx)
        tokens = torch.cat([given, tokenizer.encode(x).flatten(1)[:, n_ctx:]], 1)  # (2, L)
        nll = (-gpt.score(tokens, n_ctx)["logprob"].double().mean(1)).tolist()
        records.append({"pair": pair.id, "kind": pair.kind, "context": context, "context_encoding": encoding,
                        "nll_real": nll[0], "nll_violation": nll[1], "gap": nll[1] - nll[0],
                        "context_differs": bool((given[0] != given[1]).any()),
                        "generative": closer_to_real(gpt, tokenizer, x, tokens[0, :n_ctx], units, samples, generator)
                        if samples else None})
    summary = {"pairs": len(records), "context": context, "context_encoding": encoding, "samples": samples,
               "context_differs": float(np.mean([r["context_differs"] for r in records])), **figures(records),
               "by_kind": {kind: figures([r for r in records if r["kind"] == kind], auc=False)
                           for kind in sorted({r["kind"] for r in records})}}
    return records, summary


def figures(records: list[dict], auc: bool = True) -> dict:
    """The recognition figures of some pairs (AUC and the NLL means only over all of them)."""
    real, bad = [r["nll_real"] for r in records], [r["nll_violation"] for r in records]
    preferred = sum(r["gap"] > 0 for r in records)
    out = {"pairs": len(records), "paired_accuracy": preferred / len(records),
           "paired_p": sign_test(preferred, sum(r["gap"] != 0 for r in records)),
           "paired_accuracy_ci": proportion_ci(preferred, len(records)),
           "gap": bootstrap_ci([r["gap"] for r in records]),
           "generative_accuracy": bootstrap_ci([r["generative"] for r in records])}
    if auc:
        out |= {"auc": roc_auc(real, bad), "auc_ci": auc_ci(real, bad),
                "auc_p": float(stats.mannwhitneyu(bad, real).pvalue),
                "nll_real": bootstrap_ci(real), "nll_violation": bootstrap_ci(bad)}
    return out


def closer_to_real(gpt: TokenModel, tokenizer: torch.nn.Module, x: torch.Tensor, given: torch.Tensor, units: int, n: int,
                   generator: torch.Generator) -> float:
    """Generation on a recognition pair x = (real, violation): the share of n continuations the
    GPT draws after the shared context tokens `given` whose decoded pixels after the cut are
    nearer (mean squared error) the real clip's than the violating twin's; ties count ½."""
    grid = tuple(tokenizer.grid)
    new, _ = gpt.generate(given[None], math.prod(grid) - len(given), n, generator=generator)
    drawn = cut(tokenizer.decode(torch.cat([given.expand(n, -1), new], 1).view(n, *grid)).clamp(-1, 1), grid, units)
    real, violation = (((drawn - truth) ** 2).flatten(1).mean(1) for truth in cut(x, grid, units))  # each (n,)
    return float(((real < violation).double() + 0.5 * (real == violation).double()).mean())

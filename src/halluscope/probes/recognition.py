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

A twin shares its real clip's context pixels; its context tokens are encoded from the shown
pixels alone (`visible`, the default), so both are scored after the same context tokens, and
the summary says in how many pairs they differ (`context_differs`: 0 under `visible`; under
`full` a non-causal tokenizer lets the break leak into the context).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
from halluscope.gpt.model import GPT
from halluscope.probes.context import context_split, encode_context
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


def load_pairs(data: str | os.PathLike | None, pairs: str | os.PathLike | None, tokenizer: torch.nn.Module,
               limit: int | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(id, real, violation) pixel pairs: from a world folder written with --violations, or a
    JSONL file of {"real": path, "violation": path} (paths relative to the file)."""
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
                out.append((by_file[m["twin"]]["file"], world.render(by_file[m["twin"]]), world.render(m)))
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
            out.append((spec["real"], load(path.parent / spec["real"], tokenizer.resolution),
                        load(path.parent / spec["violation"], tokenizer.resolution)))
    return out[:limit]


@torch.no_grad()
def recognition(gpt: GPT, tokenizer: torch.nn.Module, pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
                context: float, encoding: str = "visible") -> tuple[list[dict], dict]:
    """Per-pair records and the summary (AUC, paired accuracy, NLL gap with a bootstrap 95%
    interval, the share of pairs whose context tokens differ) for one GPT."""
    device = next(gpt.parameters()).device
    units, n_ctx = context_split(tuple(tokenizer.grid), context)
    records = []
    for pair_id, real, violation in tqdm(pairs, desc="scoring pairs", unit="pair"):
        x = torch.stack([real, violation]).to(device)
        given = encode_context(tokenizer, x, units, encoding)  # (2, n_ctx)
        tokens = torch.cat([given, tokenizer.encode(x).flatten(1)[:, n_ctx:]], 1)  # (2, L)
        nll = (-gpt.score(tokens, n_ctx)["logprob"].double().mean(1)).tolist()
        records.append({"pair": pair_id, "context": context, "context_encoding": encoding, "nll_real": nll[0],
                        "nll_violation": nll[1], "gap": nll[1] - nll[0],
                        "context_differs": bool((given[0] != given[1]).any())})
    real = [r["nll_real"] for r in records]
    bad = [r["nll_violation"] for r in records]
    summary = {"pairs": len(records), "context": context, "context_encoding": encoding,
               "context_differs": float(np.mean([r["context_differs"] for r in records])),
               "auc": roc_auc(real, bad), "auc_ci": auc_ci(real, bad),
               "auc_p": float(stats.mannwhitneyu(bad, real).pvalue),
               "paired_accuracy": float(np.mean([r["gap"] > 0 for r in records])),
               "paired_p": sign_test(sum(r["gap"] > 0 for r in records), sum(r["gap"] != 0 for r in records)),
               "paired_accuracy_ci": proportion_ci(sum(r["gap"] > 0 for r in records), len(records)),
               "gap": bootstrap_ci([r["gap"] for r in records]),
               "nll_real": bootstrap_ci(real), "nll_violation": bootstrap_ci(bad)}
    return records, summary

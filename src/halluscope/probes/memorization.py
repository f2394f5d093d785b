"""Memorization against the training set: is a continuation a copy of a training example's?

For each probed example the truth (row 0) and its N samples are compared with the continuation
of every training example at the same positions (the same context cut), in four spaces:
tokens (Hamming share), pixels (MSE over the hidden part), features (MSE of the tokenizer's
features) and, for worlds, object state (GOSPA per frame, probes/objects.py). Both sides are
decodings of tokens (the samples' and the training examples' reconstructions), so a
token-for-token copy is at distance 0 in every space and tokenizer error is nobody's copy.

    d_n        = min over training m of Hamming(s_n, y_m)           (the nearest training continuation)
    train_copy = 1/N Σ_n [d_n ≤ τ]                                   (share of samples that copy one)

The truth's own d_0 and [d_0 ≤ τ] are the reference level: a truth near a training example
means the world repeats itself, not that the model copies. A world's oracle draws from the same
distribution as the truth, so its expected copy share equals the truth's: the chance level.
Probing training examples themselves (the `training` group) leaves each example's own entry
out, so there `train_copy` counts copies of *other* training examples; how well the model
reproduces its own training continuation is the ordinary probe figures (match, exact rate,
NLL), which `group_contrast` sets against the held-out group's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from halluscope.data.shapes import radius_range
from halluscope.probes import objects
from halluscope.probes.baselines import training_split
from halluscope.probes.context import cut
from halluscope.probes.samplers import Example
from halluscope.probes.stats import RESAMPLES, bootstrap_ci, empty, finite, interval

COPY_THRESHOLD = 0.05  # τ: a continuation with at most 1 token in 20 unlike a training one is a copy
OBJECT_SHORTLIST = 16  # object distance: the nearest among this many pixel-nearest training continuations
GROUPS = ("held-out", "training")
# What the group contrast compares, training examples minus held-out ones (higher = closer to the truth, but nll).
CONTRAST = ("match_mean", "exact_rate", "recon_psnr_best", "nll_truth", "objects_invented", "objects_dropped",
            "retrieval", "train_copy")


@dataclass
class TrainingSet:
    """The training examples, encoded once: what every continuation is compared with."""
    ids: list[str]
    tokens: torch.Tensor  # (M, L)
    reconstruction: torch.Tensor  # (M, 3, ...) decoded tokens
    features: torch.Tensor  # (M, D, L) the tokenizer's features of the reconstructions
    grid: tuple[int, ...]
    world: bool  # world examples: object state is measured too
    source: str
    segmented: dict[int, list[list[np.ndarray]]] = field(default_factory=dict, repr=False)  # start units -> objects

    def objects_after(self, units: int) -> list[list[np.ndarray]]:
        """Per training example, its reconstruction's objects per frame after `units` token units."""
        if units not in self.segmented:
            hidden = cut(self.reconstruction, self.grid, units)
            frames = objects.segment(objects.planes(hidden, clip=len(self.grid) == 3))
            per = len(frames) // len(self.ids)
            self.segmented[units] = [frames[m * per:(m + 1) * per] for m in range(len(self.ids))]
        return self.segmented[units]


@dataclass
class Memory:
    """What ProbeConfig needs for the memorization figures of one group of probed examples."""
    train: TrainingSet
    threshold: float = COPY_THRESHOLD
    group: str = "held-out"  # "training": the probed examples are in `train`, each one's own entry left out


@torch.no_grad()
def encode_training(examples: list[Example], tokenizer: torch.nn.Module, batch: int, source: str) -> TrainingSet:
    device = next(tokenizer.parameters(), torch.empty(0)).device
    tokens, recon, feats = [], [], []
    for i in tqdm(range(0, len(examples), batch), desc="encoding training examples", unit="batch", leave=False):
        x = torch.stack([e.pixels for e in examples[i:i + batch]]).to(device)
        t = tokenizer.encode(x)
        r = tokenizer.decode(t).clamp(-1, 1)
        tokens.append(t.flatten(1))
        recon.append(r)
        feats.append(tokenizer.features(r).flatten(2))
    return TrainingSet([e.id for e in examples], torch.cat(tokens), torch.cat(recon), torch.cat(feats),
                       tuple(tokenizer.grid), examples[0].meta is not None, source)


def trained_ids(gpt_dir: str | os.PathLike) -> set[str] | None:
    """The sources of the examples train-gpt actually trained the GPT in `gpt_dir` on (its
    token cache's training split, the held-out validation split left out), or None when its
    training config or cache is not there."""
    try:
        found = training_split(gpt_dir)
    except FileNotFoundError:
        return None
    if found is None:
        return None
    cache, split = found
    return set(cache.sources[:len(split.train)])


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, K) x (M, K) tokens -> (A, M) share of positions that differ."""
    return (a[:, None] != b[None]).double().mean(2)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, ...) x (M, ...) -> (A, M) mean squared difference; exact (no matmul expansion)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / a.shape[1]


def object_distances(members: torch.Tensor, train: TrainingSet, units: int, shortlist: torch.Tensor) -> torch.Tensor:
    """(A,) GOSPA per frame of each of `members` (A, 3, ...) hidden parts to the nearest of its
    shortlisted training continuations (indices (A, S))."""
    clip = len(train.grid) == 3
    frames = objects.planes(members, clip)
    per = len(frames) // len(members)
    found = objects.segment(frames)
    theirs = train.objects_after(units)
    scale = float(radius_range(frames.shape[2])[1])  # as object_metrics: the world's largest shape radius
    return torch.tensor([min(objects.compare(theirs[m], found[a * per:(a + 1) * per], scale)["distance"]
                             for m in shortlist[a].tolist()) for a in range(len(members))], dtype=torch.float64)


def memorization_metrics(tokens: torch.Tensor, pixels: torch.Tensor, features: torch.Tensor, units: int,
                         memory: Memory, own: str | None = None) -> dict[str, float]:
    """Row 0 the truth, rows 1..N the samples: tokens (1+N, K) of the scored continuation (the
    last K of L), decoded pixels (1+N, 3, ...) after `units` token units, features
    (1+N, D, K). `own`: the probed example's id, left out of the training set in the
    training group.

    train_{tokens,pixels,features,objects}_truth    the truth's distance to its nearest training continuation
    train_{tokens,pixels,features,objects}_nearest  mean over samples of theirs
    train_copy        1/N Σ_n [d_n ≤ τ]   (d: token Hamming share)
    train_copy_truth  [d_0 ≤ τ]           (the reference level)
    train_copy_excess train_copy − train_copy_truth
    train_closer      1/N Σ_n [d_n < Hamming(s_n, x)]   (nearer a training continuation than its own truth)"""
    train = memory.train
    k = tokens.shape[1]
    keep = torch.ones(len(train.ids), dtype=torch.bool)
    if memory.group == "training" and own in train.ids:
        keep[train.ids.index(own)] = False
    keep = keep.to(train.tokens.device)
    if not keep.any():
        return {}
    far = torch.tensor(float("inf"), dtype=torch.float64, device=train.tokens.device)
    spaces = {"tokens": hamming(tokens, train.tokens[:, -k:]),
              "pixels": mse(pixels, cut(train.reconstruction, train.grid, units)),
              "features": mse(features, train.features[:, :, -k:])}
    nearest = {name: torch.where(keep[None], d, far).min(1).values.cpu() for name, d in spaces.items()}
    if train.world:
        pixel_d = torch.where(keep[None], spaces["pixels"], far)
        shortlist = pixel_d.topk(min(OBJECT_SHORTLIST, int(keep.sum())), dim=1, largest=False).indices.cpu()
        nearest["objects"] = object_distances(pixels, train, units, shortlist)
    out = {}
    for name, d in nearest.items():
        out[f"train_{name}_truth"], out[f"train_{name}_nearest"] = d[0].item(), d[1:].mean().item()
    d = nearest["tokens"]
    copy = (d <= memory.threshold).double()
    out["train_copy"], out["train_copy_truth"] = copy[1:].mean().item(), copy[0].item()
    out["train_copy_excess"] = out["train_copy"] - out["train_copy_truth"]
    to_truth = (tokens[1:] != tokens[:1]).double().mean(1).cpu()
    out["train_closer"] = (d[1:] < to_truth).double().mean().item()
    return out


def unpaired_difference(a: list[float | None], b: list[float | None], seed: int = 0) -> dict:
    """mean(a) − mean(b) of two independent groups of examples, its 95% percentile-bootstrap
    interval (each group resampled on its own) and the two-sided Mann–Whitney U p."""
    x, y = finite(a)[:, 0], finite(b)[:, 0]
    if len(x) == 0 or len(y) == 0:
        return empty(min(len(x), len(y)))
    diff = float(x.mean() - y.mean())
    draws = None
    if len(x) > 1 and len(y) > 1:
        draws = stats.bootstrap((x, y), lambda u, v, axis: u.mean(axis) - v.mean(axis), n_resamples=RESAMPLES,
                                method="percentile", rng=np.random.default_rng(seed)).bootstrap_distribution
    out = interval(diff, draws, len(x) + len(y))
    out["p"] = float(stats.mannwhitneyu(x, y).pvalue) if np.ptp(np.concatenate([x, y])) > 0 else 1.0
    return out


def group_contrast(records: list[dict]) -> list[dict]:
    """Per (kind, sampler, context) probed in both groups: each CONTRAST metric's mean in the
    training and the held-out group, and their unpaired difference (training − held-out): how
    much better the sampler does on contexts it was trained on (memorized) than on novel ones."""
    by: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        if r.get("group") in GROUPS:
            by.setdefault((r["kind"], r["sampler"], r["context"]), {}).setdefault(r["group"], []).append(r)
    rows = []
    for (kind, sampler, context), groups in sorted(by.items()):
        if set(groups) != set(GROUPS):
            continue
        metrics = {}
        for m in CONTRAST:
            values = {g: [r["metrics"].get(m) for r in groups[g]] for g in GROUPS}
            if all(v is None for g in GROUPS for v in values[g]):
                continue
            metrics[m] = {"training": bootstrap_ci(values["training"]), "held-out": bootstrap_ci(values["held-out"]),
                          "difference": unpaired_difference(values["training"], values["held-out"])}
        rows.append({"kind": kind, "sampler": sampler, "context": context,
                     "examples": {g: len(groups[g]) for g in GROUPS}, "metrics": metrics})
    return rows

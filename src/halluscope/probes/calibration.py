"""Is a sampler confidently wrong or honestly uncertain? Per-example forecast-verification
metrics of one example's N samples against its ground truth, for any distance d:

    skill          = 1/N Σ_n d(s_n, y)
    spread         = 1/(N(N-1)) Σ_{n≠m} d(s_n, s_m)
    energy         = skill - ½ spread          (the fair energy score; Gneiting & Raftery 2007)
    spread-skill R = skill / spread            (summarized as a ratio of means over examples)

If y is exchangeable with the samples (drawn from the same distribution), E[skill] =
E[spread], so R = 1; R > 1: the samples agree with each other but not with the truth
(confidently wrong); R < 1: they are more spread out than the truth warrants.

Rank of the truth among the N + 1 members {y, s_1..s_N}: with a pre-rank ρ (lower = more
typical), the number of samples more typical than y, ties broken at random, in 0..N. It is
uniform under exchangeability. Pre-ranks: the mean distance of a member to the others (the
multivariate "average" pre-rank, Thorarinsdottir, Scheuerer & Heinz 2016), which every
sampler supports, and the sequence NLL under the model itself (GPT samplers)."""

from __future__ import annotations

import math

import numpy as np
import torch

# Distance names (the suffix of each metric) and how members are compared in that space.
HAMMING, RMS = "hamming", "rms"


def distance_matrix(members: torch.Tensor, kind: str) -> torch.Tensor:
    """(M, M) float64 pairwise distances of M members (M, ...): `hamming` is the fraction of
    differing entries (tokens); `rms` the root mean squared difference (pixels, features),
    a Euclidean distance, so the energy score built on it is strictly proper (with squared
    distances it would only check the mean)."""
    flat = members.flatten(1)
    if kind == HAMMING:
        return torch.stack([(flat != row).double().mean(1) for row in flat])
    # Exact differences (not the |a|²+|b|²-2ab shortcut), so equal members are at distance 0.
    return torch.cdist(flat.double(), flat.double(), compute_mode="donot_use_mm_for_euclid_dist") \
        / math.sqrt(flat.shape[1])


def rank_of_truth(truth: float, samples: torch.Tensor, rng: np.random.Generator) -> int:
    """How many of the samples' values (N,) are lower than the truth's, ties broken uniformly
    at random: uniform on 0..N when the truth is exchangeable with the samples."""
    values = samples.double()
    below = int((values < truth).sum())
    ties = int((values == truth).sum())
    return below + int(rng.integers(0, ties + 1))


def ensemble_metrics(truth: torch.Tensor, samples: torch.Tensor, kind: str, name: str,
                     rng: np.random.Generator) -> dict[str, float]:
    """truth (...), samples (N, ...): skill_{name}, spread_{name}, energy_{name} and
    rank_{name} (distance pre-rank). With N = 1 spread and energy are undefined (NaN)."""
    return ensemble_from_distances(distance_matrix(torch.cat([truth[None], samples]), kind), name, rng)


def ensemble_from_distances(d: torch.Tensor, name: str, rng: np.random.Generator) -> dict[str, float]:
    """The same from the (N+1, N+1) float64 distances of the members, member 0 the truth: for
    distances that are not differences of tensors (objects.py's distance between object sets)."""
    n = len(d) - 1
    skill = d[0, 1:].mean().item()
    spread = d[1:, 1:].sum().item() / (n * (n - 1)) if n > 1 else float("nan")
    prerank = d.sum(1) / n  # mean distance to the other N members (the diagonal is 0)
    return {f"skill_{name}": skill, f"spread_{name}": spread, f"energy_{name}": skill - 0.5 * spread,
            f"rank_{name}": float(rank_of_truth(prerank[0].item(), prerank[1:], rng))}


def likelihood_calibration(truth_logprob: torch.Tensor, sample_logprobs: torch.Tensor,
                           rng: np.random.Generator) -> dict[str, float]:
    """truth_logprob (L,), sample_logprobs (N, L): the plain model's per-token log-probabilities.

    rank_nll     = rank of NLL(y) among the samples' NLLs (ties at random), 0..N; high: the
                   truth is less likely than what the model draws
    typicality_z = (NLL(y) - mean_n NLL(s_n)) / std_n NLL(s_n), sequence NLLs in nats
                   (NaN when the samples' NLLs do not vary)"""
    truth_nll = -truth_logprob.double().sum().item()
    nll = -sample_logprobs.double().sum(1)  # (N,)
    std = nll.std().item() if len(nll) > 1 else 0.0
    z = (truth_nll - nll.mean().item()) / std if std > 0 else float("nan")
    return {"rank_nll": float(rank_of_truth(truth_nll, nll, rng)), "typicality_z": z}


def floor_rate(truth: torch.Tensor, samples: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Share of samples (N, ...) whose pixel MSE to the raw truth (...) is within the
    tokenizer's own reconstruction floor MSE(decode(encode(y)), y): as close as the
    tokenizer can get (up to float rounding, relative 1e-5)."""
    floor = (reconstruction.double() - truth.double()).pow(2).mean().item()
    err = (samples.double() - truth.double()[None]).pow(2).flatten(1).mean(1)
    return (err <= floor * (1 + 1e-5) + 1e-12).double().mean().item()

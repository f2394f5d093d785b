"""Per-example probe metrics: how diverse N continuations are, and how close they come to the
real one. Each function takes the ground truth and the N samples of ONE example and returns
plain floats; docs/probes.md holds every definition. Notation: x the ground truth, s_1..s_N
the samples, L the number of continuation tokens, [.] the indicator."""

from __future__ import annotations

import itertools
import math

import torch
from pytorch_msssim import ssim

PSNR_CAP = 100.0  # dB; a sample equal to the truth (MSE 0) scores this instead of +inf, so means stay finite


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors (i, j) of every unordered pair i < j among n items."""
    i, j = zip(*itertools.combinations(range(n), 2)) if n > 1 else ((), ())
    return torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long)


def token_metrics(truth: torch.Tensor, samples: torch.Tensor) -> dict[str, float]:
    """truth (L,), samples (N, L): continuation tokens.

    match_mean  = 1/N Σ_n 1/L Σ_l [s_n,l = x_l]           (ground-truth token match rate)
    match_best  = max_n 1/L Σ_l [s_n,l = x_l]              (best of N)
    exact_rate  = 1/N Σ_n [s_n = x]                         (whole continuation reproduced)
    diversity   = mean over pairs n<m of 1/L Σ_l [s_n,l ≠ s_m,l]   (pairwise Hamming; 0 if N = 1)
    """
    match = (samples == truth[None]).float().mean(1)  # (N,)
    return {"match_mean": match.mean().item(), "match_best": match.max().item(),
            "exact_rate": match.eq(1).float().mean().item(), "diversity": token_diversity(samples)}


def token_diversity(samples: torch.Tensor) -> float:
    """Mean pairwise Hamming distance per token of samples (N, L); 0 if N = 1."""
    i, j = pairs(len(samples))
    return (samples[i] != samples[j]).float().mean(1).mean().item() if len(i) else 0.0


def likelihood_metrics(truth: dict[str, torch.Tensor], sample_logprobs: torch.Tensor) -> dict[str, float]:
    """truth: GPT.score of the ground-truth continuation, each (L,) (logprob, entropy, rank);
    sample_logprobs (N, L): the plain model's log-probabilities of the sampled tokens.

    nll_truth        = -1/L Σ_l log p(x_l | x_<l)                 (nats per token)
    nll_samples      = -1/(N L) Σ_n Σ_l log p(s_n,l | s_n,<l)
    typicality_gap   = nll_truth - nll_samples    (> 0: the truth is less likely than what the model draws)
    entropy          = 1/L Σ_l H(p(· | x_<l))     (predictive entropy along the truth)
    truth_rank       = 1/L Σ_l rank_l  (0 = the truth was the model's top choice)
    top1 / top5      = 1/L Σ_l [rank_l < k]
    """
    nll_truth = -truth["logprob"].double().mean().item()
    nll_samples = -sample_logprobs.double().mean().item()
    rank = truth["rank"].double()
    return {"nll_truth": nll_truth, "nll_samples": nll_samples, "typicality_gap": nll_truth - nll_samples,
            "entropy": truth["entropy"].double().mean().item(), "truth_rank": rank.mean().item(),
            "top1": rank.lt(1).double().mean().item(), "top5": rank.lt(5).double().mean().item()}


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over every axis but the first: (N, ...) x (N, ...) -> (N,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1).double()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2): 10 log10(2² / MSE), capped at PSNR_CAP."""
    return (10 * torch.log10(4.0 / mse(a, b))).clamp(max=PSNR_CAP)


def ssim_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (pytorch-msssim, Gaussian window up to 11, data range 2) of images
    (N, 3, H, W) or clips (N, 3, T, H, W) frame by frame -> (N,). The window shrinks to the
    largest odd size that fits a small region."""
    n = a.shape[0]
    if a.dim() == 5:  # frames become images of the batch
        a, b = (v.transpose(1, 2).flatten(0, 1) for v in (a, b))
    win = min(11, *a.shape[-2:])
    win -= 1 - win % 2
    if win < 3:
        return torch.full((n,), float("nan"))
    # Inputs are shifted into [0, 2] because ssim's constants assume non-negative data.
    values = ssim(a.float() + 1, b.float() + 1, data_range=2.0, size_average=False, win_size=win)
    return values.view(n, -1).mean(1).double()


def distance_metrics(truth: torch.Tensor, samples: torch.Tensor, prefix: str, pixels: bool = False) \
        -> dict[str, float]:
    """truth (...), samples (N, ...) in one space (pixels or features).

    {prefix}mse_mean / _best   = mean / min over n of MSE(s_n, x)
    {prefix}psnr_mean / _best  = mean / max over n of PSNR(s_n, x)   (pixels only)
    {prefix}ssim_mean / _best  = mean / max over n of SSIM(s_n, x)   (pixels only)
    """
    target = truth[None].expand_as(samples)
    err = mse(samples, target)
    out = {f"{prefix}mse_mean": err.mean().item(), f"{prefix}mse_best": err.min().item()}
    if pixels:
        p, s = psnr(samples, target), ssim_batch(samples, target)
        out.update({f"{prefix}psnr_mean": p.mean().item(), f"{prefix}psnr_best": p.max().item(),
                    f"{prefix}ssim_mean": s.mean().item(), f"{prefix}ssim_best": s.max().item()})
    return out


def pairwise_mse(samples: torch.Tensor) -> float:
    """Diversity in a continuous space: mean over pairs n<m of MSE(s_n, s_m); 0 if N = 1."""
    i, j = pairs(len(samples))
    return mse(samples[i], samples[j]).mean().item() if len(i) else 0.0


def vendi_score(features: torch.Tensor) -> float:
    """Vendi score (Friedman & Dieng, 2023) of N items (N, D) with the cosine-similarity kernel:
    exp(-Σ_i λ_i log λ_i), λ the eigenvalues of K/N, K_nm = cos(f_n, f_m). It is the effective
    number of distinct items: 1 for N identical items, N for N orthogonal ones."""
    f = torch.nn.functional.normalize(features.double().flatten(1), dim=1)
    lam = torch.linalg.eigvalsh(f @ f.T / len(f)).clamp(min=0)
    lam = lam[lam > 1e-12]
    return math.exp(-(lam * lam.log()).sum().item())


def retrieval_rate(truth: torch.Tensor, samples: torch.Tensor, others: torch.Tensor) -> float:
    """truth (...), samples (N, ...), others (P, ...): real continuations of other examples.

    retrieval = 1/N Σ_n [argmin over the pool {x} ∪ others of MSE(s_n, ·) is x]
    (ties go to the truth). NaN without other examples: there is nothing to tell apart."""
    if len(others) == 0:
        return float("nan")
    to_truth = mse(samples, truth[None].expand_as(samples))  # (N,)
    to_others = (samples[:, None].float() - others[None].float()).pow(2).flatten(2).mean(2).double()  # (N, P)
    return (to_truth <= to_others.min(1).values).double().mean().item()


def entropy_map(entropy: torch.Tensor, grid: tuple[int, ...], context_tokens: int) -> torch.Tensor:
    """Per-position predictive entropy (L - context_tokens,) laid back onto the token grid,
    NaN over the context: (*grid)."""
    full = torch.full((math.prod(grid),), float("nan"))
    full[context_tokens:] = entropy.float().cpu()
    return full.view(grid)

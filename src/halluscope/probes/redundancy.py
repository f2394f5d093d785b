"""How redundant a modality is, from a GPT's own teacher-forced likelihoods (no sampling).

For a context of k whole rows / latent frames, Y_k is what the probe asks the model to
continue: every token after them, always scored at its own positions. H(Y_k | C_k) is Y_k's
NLL given its real context, encoded as the probe encodes it (probes/context.py: from the
shown pixels alone by default). H(Y_k), Y_k's entropy with no context, needs the model's
marginal p(Y_k) = E_C p(Y_k | C), which a GPT does not give: it is estimated from the
contexts C_m of M *other* real examples (C_m ~ the data's context distribution),

    log p̂_M(Y_k) = log (1/M) Σ_m p(Y_k | C_m)                        (a log-mean-exp)
    H_M(Y_k)     = −mean over examples of log p̂_M(Y_k)
    I(C_k; Y_k)  = H_M(Y_k) − H(Y_k | C_k)       bits per token, per pixel, per second (clips)
    R(k)         = 1 − H(Y_k | C_k) / H_M(Y_k)   0: the context says nothing about Y_k; 1: it fixes Y_k

p̂_M is unbiased for p(Y_k), so by Jensen E log p̂_M ≤ log p(Y_k) and rises with M: H_M is
too high at small M and falls towards the model's marginal entropy, and R with it, as M
grows (the curve reports each M = 1, 2, 4, ...). It needs M of about 2^I(C_k; Y_k) in bits
to converge, which no data set gives where a context fixes many bits: there R stays an
overestimate. At k = 0 there is no context and R = 0. An unconditional GPT cannot score a
sequence's first token, so at k = 0 it is left out.

Model NLLs are cross-entropies, upper bounds on the true entropies, and R is a ratio of two
of them: a better model lowers both, so R may move either way. The curve is the redundancy
the model exploits, not the domain's; where the world's definition gives the true R (issue
13's known answers), each point shows it beside the model's (`world_redundancy`)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm

from halluscope.data.answers import known_answer
from halluscope.data.worlds import ImageWorld, VideoWorld
from halluscope.gpt.base import TokenModel
from halluscope.probes.context import context_split, encode_context, pixel_cut
from halluscope.probes.samplers import Example
from halluscope.probes.stats import bootstrap_ci, ratio_ci

BITS = 1 / math.log(2)  # nats -> bits
Scorer = Callable[[torch.Tensor, int], torch.Tensor]  # (B, L) tokens, start -> (B, L - start) log-probs


def gpt_scorer(gpt: torch.nn.Module) -> Scorer:
    """`score(tokens, start)`: a GPT's teacher-forced log-probabilities of tokens[:, start:]."""
    device = next(gpt.parameters()).device
    return lambda tokens, start: gpt.score(tokens.to(device), start)["logprob"].double().cpu()


def other_contexts(n: int, m: int, seed: int = 0) -> torch.Tensor:
    """(n, m) example indices: row i lists the m examples after i along one random cycle
    through all n, so none is i's own, each serves m times, and the first m' of a row are
    the whole set for m' (the estimates at growing M are nested)."""
    if not 0 <= m < n:
        raise ValueError(f"need 0 <= m < n, got m {m}, n {n}")
    cycle = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    place = torch.empty(n, dtype=torch.long)
    place[cycle] = torch.arange(n)
    return cycle[(place[:, None] + torch.arange(1, m + 1)) % n]


@torch.no_grad()
def target_logprobs(score: Scorer, seq: torch.Tensor, context: torch.Tensor, start: int, partners: torch.Tensor,
                    batch: int = 16) -> torch.Tensor:
    """(N, 1 + M) summed log-probabilities in nats of each Y_i = seq[i, start:] (seq (N, L))
    at its own positions: given its own context (N, c) (column 0), then given the context of
    each of its partners (N, M) in turn. Tokens between the context and `start` are Y's too."""
    target = seq[:, context.shape[1]:]
    columns = [torch.arange(len(seq))[:, None], partners]
    out = []
    for who in torch.cat(columns, 1).T:  # (N,) whose context each Y_i is given
        sums = [score(torch.cat([context[who[i:i + batch]], target[i:i + batch]], 1), start).double().sum(1)
                for i in range(0, len(seq), batch)]
        out.append(torch.cat(sums))
    return torch.stack(out, 1)


def marginal_ladder(m_max: int) -> list[int]:
    """M = 1, 2, 4, ... up to m_max, and m_max itself."""
    return sorted({2 ** i for i in range(m_max.bit_length()) if 2 ** i <= m_max} | ({m_max} if m_max else set()))


def world_redundancy(world: ImageWorld | VideoWorld, cut: int) -> dict:
    """{"redundancy", "note"}: the world's true R at a context of `cut` pixel rows (images)
    or frames (clips), from its known answers (data/answers.py): 1 where nothing is left to
    draw given the context, 0 where the context tells nothing, else None."""
    known = known_answer(world, cut)
    value = 1.0 if known["conditional_entropy_bits"] == 0 else 0.0 if known["mutual_information_bits"] == 0 else None
    if isinstance(world, VideoWorld) and value == 1.0:
        known["note"] += ("; about 1: it leaves out what the shown frames leave unknown about that state (a single "
                          "frame shows no velocity)")
    return {"redundancy": value, "note": known["note"]}


def one_minus(v: float | None) -> float | None:
    return None if v is None else 1 - v


@torch.no_grad()
def redundancy_curve(gpt: TokenModel, tokenizer: torch.nn.Module, examples: list[Example], contexts: list[float],
                     fps: float | None = None, batch: int = 16, encoding: str = "visible",
                     world: ImageWorld | VideoWorld | None = None, max_contexts: int = 16) -> list[dict]:
    """The redundancy curve of one GPT (anything with `score(tokens, start)` and parameters)
    on examples, one dict per context (0 = none, then each fraction of `contexts`, its tokens
    encoded as `encoding` says): context, context_units, target_units, tokens_scored,
    marginal_contexts (M, at most max_contexts and the number of other examples), and the
    mean [95% bootstrap interval] over examples ({"mean", "lo", "hi", "n"}) of
    entropy_bits_per_token = H(Y_k | C_k), marginal_bits_per_token = H_M(Y_k),
    information_bits_per_token / _per_pixel / _per_second (clips, when fps is given) =
    I(C_k; Y_k), redundancy = R(k) (a ratio of sums over examples); by_marginal_contexts:
    [{"contexts": M', "marginal_bits_per_token", "redundancy"}] for M' = 1, 2, 4, ... M; and,
    given the world, world_redundancy and world_note (world_redundancy)."""
    grid = tuple(tokenizer.grid)
    per_unit = math.prod(grid[1:])
    units = {0.0: 0, **{c: context_split(grid, c)[0] for c in sorted(contexts)}}
    device = next(gpt.parameters()).device
    pixels = torch.stack([e.pixels for e in examples])
    seq = torch.cat([tokenizer.encode(pixels[i:i + batch].to(device)).flatten(1).cpu()
                     for i in range(0, len(examples), batch)])  # (N, L)
    m_max = min(max_contexts, len(examples) - 1)
    partners = other_contexts(len(examples), m_max)
    score = gpt_scorer(gpt)
    rates = {"token": 1.0, "pixel": math.prod(grid) / (tokenizer.resolution ** 2 * (tokenizer.frames or 1))}
    if fps is not None and tokenizer.kind == "video":
        rates["second"] = math.prod(grid) / (tokenizer.frames / fps)  # tokens per second
    rows = []
    for fraction, k in tqdm(units.items(), desc="redundancy", unit="context", leave=False):
        context = torch.cat([encode_context(tokenizer, pixels[i:i + batch].to(device), k, encoding).cpu()
                             for i in range(0, len(examples), batch)])  # (N, k * per_unit)
        start = max(k * per_unit, 1)  # without a context the first token has no prediction
        logp = target_logprobs(score, seq, context, start, partners[:, :0] if k == 0 else partners, batch)
        if k == 0:  # no context to swap: every C_m is the empty one
            logp = logp[:, :1].expand(-1, 1 + m_max)
        row = {"context": fraction, "context_units": k, "target_units": grid[0] - k,
               "tokens_scored": seq.shape[1] - start, "marginal_contexts": m_max}
        row.update(curve_point(-logp * BITS, row["tokens_scored"], rates))
        if world is not None:
            found = world_redundancy(world, pixel_cut(pixels[0], grid, k)[1])
            row["world_redundancy"], row["world_note"] = found["redundancy"], found["note"]
        rows.append(row)
    return rows


def marginal_nll(nll: torch.Tensor) -> torch.Tensor:
    """(N,) −log p̂(Y) in bits from (N, M) NLLs in bits of Y given M other contexts: −log of
    their mean likelihood."""
    return -(torch.logsumexp(-nll / BITS, 1) - math.log(nll.shape[1])) * BITS


def redundancy(given: torch.Tensor, marginal: torch.Tensor) -> dict:
    """R = 1 − Σ H(Y|C) / Σ H(Y) over examples, with its paired bootstrap interval."""
    ratio = ratio_ci(given.tolist(), marginal.tolist())
    return {"mean": one_minus(ratio["mean"]), "lo": one_minus(ratio["hi"]), "hi": one_minus(ratio["lo"]),
            "n": ratio["n"]}


def curve_point(nll: torch.Tensor, scored: int, rates: dict[str, float]) -> dict:
    """A point's figures from summed NLLs in bits (N, 1 + M): given the example's own context
    (column 0), then given each other one's."""
    given = nll[:, 0]
    steps = [(m, marginal_nll(nll[:, 1:1 + m])) for m in marginal_ladder(nll.shape[1] - 1)]
    marginal = steps[-1][1] if steps else torch.full_like(given, math.nan)  # no other example: unknown
    point = {"entropy_bits_per_token": bootstrap_ci((given / scored).tolist()),
             "marginal_bits_per_token": bootstrap_ci((marginal / scored).tolist()),
             "redundancy": redundancy(given, marginal)}
    for unit, rate in rates.items():
        point[f"information_bits_per_{unit}"] = bootstrap_ci(((marginal - given) / scored * rate).tolist())
    point["by_marginal_contexts"] = [{"contexts": m, "marginal_bits_per_token": bootstrap_ci((h / scored).tolist()),
                                      "redundancy": redundancy(given, h)} for m, h in steps]
    return point

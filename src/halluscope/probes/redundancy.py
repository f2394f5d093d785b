"""How redundant a modality is, from a GPT's own teacher-forced likelihoods (no sampling).

For a context of k whole rows / latent frames, Y_k is what the probe asks the model to
continue: every token after them. H(Y_k | C_k) is Y_k's NLL scored in place, given its real
context encoded as the probe encodes it (probes/context.py: from the shown pixels alone by
default). H(Y_k), Y_k's entropy with no context, is its NLL scored as a sequence of its own,
moved to the start of the grid (by whole rows / frames, so every token keeps its column and
row-in-frame). That assumes Y_k looks like the top of an example: true of clips over time
(frames 8-15 are distributed like frames 0-7), true of the image world at k = 1/2 (its halves
are drawn alike), an approximation at other k and for photos. An unconditional GPT cannot
score the first token of a sequence, so Y_k's first token is left out of both scores.

    I(C_k; Y_k) = H(Y_k) - H(Y_k | C_k)           bits per token, per pixel, per second (clips)
    R(k)        = 1 - H(Y_k | C_k) / H(Y_k)       0: the context says nothing about Y_k; 1: it fixes Y_k

Model NLLs are cross-entropies, upper bounds on the true entropies: the curve is the
redundancy the model exploits, which a better model can only raise."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from halluscope.gpt.base import TokenModel
from halluscope.probes.context import context_split, encode_context
from halluscope.probes.samplers import Example
from halluscope.probes.stats import bootstrap_ci, ratio_ci

BITS = 1 / math.log(2)  # nats -> bits


@torch.no_grad()
def example_nlls(gpt: TokenModel, tokens: torch.Tensor, contexts: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLLs in nats, each (B, len(contexts)), of Y_k = the tokens (B, units, per_unit)
    after the first k units (k, context tokens (B, k * per_unit) in contexts): given those
    context tokens, and alone (moved to the start of the grid); Y_k's first token is left out
    of both."""
    per_unit = math.prod(tokens.shape[2:])
    seq = tokens.flatten(1)
    given, alone = [], []
    for k, context in contexts.items():
        in_place = torch.cat([context, seq[:, k * per_unit:]], 1)
        given.append(-gpt.score(in_place, k * per_unit + 1)["logprob"].double().sum(1))
        alone.append(-gpt.score(seq[:, k * per_unit:], 1)["logprob"].double().sum(1))
    return torch.stack(given, 1).cpu(), torch.stack(alone, 1).cpu()


def one_minus(v: float | None) -> float | None:
    return None if v is None else 1 - v


@torch.no_grad()
def redundancy_curve(gpt: TokenModel, tokenizer: torch.nn.Module, examples: list[Example], contexts: list[float],
                     fps: float | None = None, batch: int = 16, encoding: str = "visible") -> list[dict]:
    """The redundancy curve of one GPT on examples, one dict per context (0 = none, then each
    fraction of `contexts`, its tokens encoded as `encoding` says): context, context_units,
    target_units, tokens_scored, and the mean [95% bootstrap interval] over examples ({"mean", "lo", "hi", "n"}) of
    entropy_bits_per_token = H(Y_k | C_k), marginal_bits_per_token = H(Y_k),
    information_bits_per_token / _per_pixel / _per_second (clips, when fps is given) =
    I(C_k; Y_k), and redundancy = R(k) (a ratio of sums over examples)."""
    grid = tuple(tokenizer.grid)
    per_unit = math.prod(grid[1:])
    units = {0.0: 0, **{c: context_split(grid, c)[0] for c in sorted(contexts)}}
    scored_units = sorted(set(units.values()))
    device = next(gpt.parameters()).device
    given, alone = [], []  # (B, contexts) per batch
    for i in tqdm(range(0, len(examples), batch), desc="redundancy", unit="batch", leave=False):
        x = torch.stack([e.pixels for e in examples[i:i + batch]]).to(device)
        contexts_given = {k: encode_context(tokenizer, x, k, encoding).to(device) for k in scored_units}
        g, a = example_nlls(gpt, tokenizer.encode(x).to(device), contexts_given)
        given.append(g)
        alone.append(a)
    given, alone = torch.cat(given) * BITS, torch.cat(alone) * BITS  # (examples, contexts) bits
    pixels = tokenizer.resolution ** 2 * (tokenizer.frames or 1)
    rates = {"token": 1.0, "pixel": math.prod(grid) / pixels}  # tokens per unit
    if fps is not None and tokenizer.kind == "video":
        rates["second"] = math.prod(grid) / (tokenizer.frames / fps)
    rows = []
    for fraction, k in units.items():
        j = scored_units.index(k)
        scored = (grid[0] - k) * per_unit - 1
        h_given, h_alone = given[:, j] / scored, alone[:, j] / scored  # bits per token
        ratio = ratio_ci(given[:, j].tolist(), alone[:, j].tolist())  # H(Y_k | C_k) / H(Y_k)
        row = {"context": fraction, "context_units": k, "target_units": grid[0] - k, "tokens_scored": scored,
               "entropy_bits_per_token": bootstrap_ci(h_given.tolist()),
               "marginal_bits_per_token": bootstrap_ci(h_alone.tolist()),
               "redundancy": {"mean": one_minus(ratio["mean"]), "lo": one_minus(ratio["hi"]),
                              "hi": one_minus(ratio["lo"]), "n": ratio["n"]}}
        for unit, rate in rates.items():
            row[f"information_bits_per_{unit}"] = bootstrap_ci(((h_alone - h_given) * rate).tolist())
        rows.append(row)
    return rows

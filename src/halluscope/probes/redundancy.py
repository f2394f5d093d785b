"""How redundant a modality is, from a GPT's own teacher-forced likelihoods (no sampling).

Y is fixed for the whole curve: the tokens after the largest context K (whole rows / latent
frames). C_k is the k rows / latent frames right before Y. A raster-order GPT can only score
tokens given everything before them, so C_k and Y are scored as a sequence of their own,
placed at the start of the grid (shifted by whole rows / frames, so every token keeps its
column, row-in-frame): H(Y | C_k) ≈ NLL(Y | C_k), and H(Y) ≈ NLL(Y) with no context (k = 0).
At k = K this is the ordinary score of the example; below it, it assumes the domain looks
the same wherever a window starts (true of clips over time; an approximation for photos,
whose top rows differ from their bottom rows). An unconditional GPT cannot score the first
token of a sequence, so Y's first token is left out of every score (the same at every k).

    I(C_k; Y) = H(Y) - H(Y | C_k)                 bits per token, per pixel, per second (clips)
    R(k)      = 1 - H(Y | C_k) / H(Y)             0: the context says nothing about Y; 1: it fixes Y

Model NLLs are cross-entropies, upper bounds on the true entropies: the curve is the
redundancy the model exploits, which a better model can only raise."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from halluscope.gpt.model import GPT
from halluscope.probes.context import context_split
from halluscope.probes.samplers import Example
from halluscope.probes.stats import bootstrap_ci, ratio_ci

BITS = 1 / math.log(2)  # nats -> bits


@torch.no_grad()
def example_nlls(gpt: GPT, tokens: torch.Tensor, windows: list[int], target: int) -> torch.Tensor:
    """(B, len(windows)) summed NLL in nats of tokens (B, units, per_unit) from unit `target`
    on, each given only the `k` units right before it (k in windows), Y's first token left out."""
    per_unit = math.prod(tokens.shape[2:])
    seq = tokens.flatten(1)
    out = []
    for k in windows:
        window = seq[:, (target - k) * per_unit:]  # C_k then Y, moved to the start of the grid
        out.append(-gpt.score(window, k * per_unit + 1)["logprob"].double().sum(1))
    return torch.stack(out, 1).cpu()


def one_minus(v: float | None) -> float | None:
    return None if v is None else 1 - v


@torch.no_grad()
def redundancy_curve(gpt: GPT, tokenizer: torch.nn.Module, examples: list[Example], contexts: list[float],
                     fps: float | None = None, batch: int = 16) -> list[dict]:
    """The redundancy curve of one GPT on examples, one dict per context (0 = none, then each
    fraction of `contexts`, which also fixes Y as the tokens after the largest one):
    context, context_units, target_units, tokens_scored, and mean [95% bootstrap interval] over
    examples ({"mean", "lo", "hi", "n"}) of entropy_bits_per_token = H(Y | C_k),
    information_bits_per_token / _per_pixel / _per_second (clips, when fps is given) =
    I(C_k; Y), and redundancy = R(k) (a ratio of sums over examples)."""
    grid = tuple(tokenizer.grid)
    units = {c: context_split(grid, c)[0] for c in contexts}
    target = max(units.values())
    windows = [0, *sorted(set(units.values()))]
    device = next(gpt.parameters()).device
    nll = []  # (B, windows) per batch
    for i in tqdm(range(0, len(examples), batch), desc="redundancy", unit="batch", leave=False):
        x = torch.stack([e.pixels for e in examples[i:i + batch]]).to(device)
        nll.append(example_nlls(gpt, tokenizer.encode(x).to(device), windows, target))
    nll = torch.cat(nll) * BITS  # (examples, windows) bits
    scored = (grid[0] - target) * math.prod(grid[1:]) - 1
    pixels = tokenizer.resolution ** 2 * (tokenizer.frames or 1)
    rates = {"token": 1.0, "pixel": math.prod(grid) / pixels}  # tokens per unit
    if fps is not None and tokenizer.kind == "video":
        rates["second"] = math.prod(grid) / (tokenizer.frames / fps)
    per_token = nll / scored
    rows = []
    for fraction, k in [(0.0, 0)] + sorted(units.items()):
        j = windows.index(k)
        info = (per_token[:, 0] - per_token[:, j]).tolist()
        ratio = ratio_ci(nll[:, j].tolist(), nll[:, 0].tolist())  # H(Y | C_k) / H(Y)
        row = {"context": fraction, "context_units": k, "target_units": grid[0] - target, "tokens_scored": scored,
               "entropy_bits_per_token": bootstrap_ci(per_token[:, j].tolist()),
               "redundancy": {"mean": one_minus(ratio["mean"]), "lo": one_minus(ratio["hi"]),
                              "hi": one_minus(ratio["lo"]), "n": ratio["n"]}}
        for unit, rate in rates.items():
            row[f"information_bits_per_{unit}"] = bootstrap_ci([v * rate for v in info])
        rows.append(row)
    return rows

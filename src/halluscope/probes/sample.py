"""Conditional sampling of one example: encode it, keep a context of whole leading rows or
latent frames, draw N continuations from a GPT, decode them, and write what a person looks at
(a grid of context / ground truth / reconstruction / samples) and what a script reads (JSON)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from halluscope.data import write_clip_grid, write_image_grid
from halluscope.errors import UserError
from halluscope.gpt.model import GPT
from halluscope.io import write_json
from halluscope.probes.context import context_split


@dataclass
class Continuations:
    grid: tuple[int, ...]
    context_units: int  # leading token rows (images) or latent frames (clips) given
    context_tokens: int
    truth_tokens: torch.Tensor  # (*grid)
    tokens: torch.Tensor  # (N, *grid): the context followed by each sample's continuation
    logprobs: torch.Tensor  # (N, L - context_tokens), from the distribution each token was drawn from
    truth_logprob: float  # log-probability of the real continuation under the plain model
    truth: torch.Tensor  # pixels of the example, (3, H, W) or (3, T, H, W)
    reconstruction: torch.Tensor  # the tokenizer's decoding of the example's own tokens
    samples: torch.Tensor  # (N, 3, ...) decoded samples


def check_pair(gpt: GPT, tokenizer: torch.nn.Module) -> None:
    """A GPT and a tokenizer that can work together, or one UserError saying why not."""
    c = gpt.config
    # A larger GPT vocabulary would sample tokens the tokenizer cannot decode.
    if tokenizer.vocab_size != c.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} codes but the GPT's vocabulary has {c.vocab_size}")
    if c.grid is not None and tuple(c.grid) != tuple(tokenizer.grid):
        raise UserError(f"the GPT was trained on a {c.grid} token grid, the tokenizer makes {tokenizer.grid}")
    if torch.Size(tokenizer.grid).numel() - 1 > c.block_size:
        raise UserError(f"the tokenizer's {tokenizer.grid} grid needs {torch.Size(tokenizer.grid).numel() - 1} "
                        f"positions; the GPT has {c.block_size}")


@torch.no_grad()
def continue_example(gpt: GPT, tokenizer: torch.nn.Module, x: torch.Tensor, context: float, samples: int,
                     temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     generator: torch.Generator | None = None, cond: list[int] | None = None,
                     progress: bool = False) -> Continuations:
    """N continuations of the example x ((3, H, W) or (3, T, H, W) in [-1, 1]) given `context`
    of it, as a fraction turned into whole leading rows / latent frames; `cond` holds the
    condition tokens (e.g. the class) of a conditional GPT."""
    check_pair(gpt, tokenizer)
    device = next(gpt.parameters()).device
    truth_tokens = tokenizer.encode(x[None].to(device))[0]  # (*grid)
    grid = tuple(truth_tokens.shape)
    units, n_ctx = context_split(grid, context)
    seq = truth_tokens.flatten()[None]  # (1, L)
    cond = None if cond is None else torch.tensor([cond], device=device)  # (1, n_cond)
    new, logprobs = gpt.generate(seq[:, :n_ctx], seq.shape[1] - n_ctx, samples, temperature, top_k, top_p,
                                 generator, cond=cond, progress=progress)
    tokens = torch.cat([seq[:, :n_ctx].expand(samples, -1), new], dim=1).view(samples, *grid)
    truth_logprob = gpt.score(seq, n_ctx, cond)["logprob"].sum().item()
    return Continuations(grid=grid, context_units=units, context_tokens=n_ctx, truth_tokens=truth_tokens,
                         tokens=tokens, logprobs=logprobs, truth_logprob=truth_logprob, truth=x.to(device),
                         reconstruction=tokenizer.decode(truth_tokens[None])[0], samples=tokenizer.decode(tokens))


def hide_continuation(x: torch.Tensor, grid: tuple[int, ...], units: int) -> torch.Tensor:
    """x with everything after the first `units` token rows (image (3, H, W)) or latent frames
    (clip (3, T, H, W)) painted mid-grey: what the model was shown."""
    # Axis 1 is height for an image and time for a clip: the axis grid[0] divides.
    cut = units * x.shape[1] // grid[0]
    shown = x.clone()
    shown[:, cut:] = 0.0
    return shown


def write_panels(truth: torch.Tensor, reconstruction: torch.Tensor, samples: torch.Tensor, grid: tuple[int, ...],
                 units: int, stem: Path, video_format: str = "gif") -> Path:
    """One grid of what was shown (the context), the ground truth, its reconstruction and the
    samples: `stem`.png for images, `stem`.gif / .mp4 for clips."""
    panels = torch.cat([torch.stack([hide_continuation(truth, grid, units), truth, reconstruction]),
                        samples]).clamp(-1, 1).cpu()
    nrow = min(len(panels), 11)  # context, truth, reconstruction and 8 samples on one line
    if len(grid) == 2:
        return write_image_grid(panels, stem.with_name(stem.name + ".png"), nrow=nrow)
    return write_clip_grid(panels, stem.with_name(f"{stem.name}.{video_format}"), nrow=nrow)


def write_continuations(result: Continuations, out: str | os.PathLike, video_format: str = "gif",
                        info: dict | None = None) -> list[Path]:
    """Write the sample grid (PNG for images; GIF or MP4 for clips: context, ground truth,
    reconstruction, then the samples) and samples.json into `out`; return the paths."""
    out = Path(out)
    r = result
    grid_path = write_panels(r.truth, r.reconstruction, r.samples, r.grid, r.context_units, out / "samples",
                             video_format)
    record = {
        **(info or {}),
        "grid": list(r.grid),
        "context_units": r.context_units,
        "context_tokens": r.context_tokens,
        "panels": ["context", "ground truth", "reconstruction"] + [f"sample {i}" for i in range(len(r.tokens))],
        "ground_truth_tokens": r.truth_tokens.flatten().tolist(),
        "ground_truth_logprob": r.truth_logprob,
        "sample_tokens": r.tokens.flatten(1)[:, r.context_tokens:].tolist(),
        "sample_logprobs": [[round(v, 5) for v in row] for row in r.logprobs.tolist()],
        "sample_logprob_sums": r.logprobs.sum(1).tolist(),
    }
    write_json(out / "samples.json", record)
    return [grid_path, out / "samples.json"]

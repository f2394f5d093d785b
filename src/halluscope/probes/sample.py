"""Conditional sampling of one example: encode its context (whole leading rows or latent frames,
from the shown pixels alone by default: probes/context.py), draw N continuations from a GPT,
decode them, and write what a person looks at (a grid of what the model saw / ground truth /
reconstruction / samples) and what a script reads (JSON)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from halluscope.data import write_clip_grid, write_image_grid
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.base import TokenModel
from halluscope.gpt.settings import SamplingSettings
from halluscope.io import write_json
from halluscope.probes.context import context_split, decode_context, encode_context
from halluscope.tokenizers import load_tokenizer


@dataclass
class Continuations:
    grid: tuple[int, ...]
    context_units: int  # leading token rows (images) or latent frames (clips) given
    context_tokens: int
    context_encoding: str  # "visible" | "full" (probes/context.py)
    truth_tokens: torch.Tensor  # (*grid), the whole example encoded
    tokens: torch.Tensor  # (N, *grid): the context the GPT was given followed by each sample's continuation
    logprobs: torch.Tensor  # (N, L - context_tokens), from the distribution each token was drawn from
    truth_logprob: float  # log-probability of the real continuation under the plain model
    truth: torch.Tensor  # pixels of the example, (3, H, W) or (3, T, H, W)
    seen: torch.Tensor  # what the model saw: its context tokens decoded alone, the rest grey
    reconstruction: torch.Tensor  # the tokenizer's decoding of the example's own tokens
    samples: torch.Tensor  # (N, 3, ...) decoded samples


def check_pair(gpt: TokenModel, tokenizer: torch.nn.Module) -> None:
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


def load_pair(gpt_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
              device: str | None = None) -> tuple[TokenModel, torch.nn.Module]:
    """A GPT folder and its tokenizer (the one its config names, unless `tokenizer_dir` is
    given), on `device`, checked to work together: how every command and the app load a model."""
    gpt = load_gpt(gpt_dir, device=device)
    tokenizer_dir = tokenizer_dir or gpt.config.tokenizer
    if tokenizer_dir is None:
        raise UserError(f"the GPT config in {gpt_dir} names no tokenizer; pass --tokenizer DIR")
    tokenizer = load_tokenizer(tokenizer_dir).to(device)
    check_pair(gpt, tokenizer)
    return gpt, tokenizer


@torch.no_grad()
def continue_example(gpt: TokenModel, tokenizer: torch.nn.Module, x: torch.Tensor, context: float, samples: int,
                     settings: SamplingSettings = SamplingSettings(),
                     generator: torch.Generator | None = None, cond: list[int] | None = None,
                     progress: bool = False, encoding: str = "visible") -> Continuations:
    """N continuations of the example x ((3, H, W) or (3, T, H, W) in [-1, 1]) given `context`
    of it, as a fraction turned into whole leading rows / latent frames, its tokens encoded as
    `encoding` says; `cond` holds the condition tokens (e.g. the class) of a conditional GPT
    (default: its null condition, where it has one)."""
    check_pair(gpt, tokenizer)
    device = gpt.device
    x = x.to(device)
    truth_tokens = tokenizer.encode(x[None])[0]  # (*grid)
    grid = tuple(truth_tokens.shape)
    units, n_ctx = context_split(grid, context)
    given = encode_context(tokenizer, x[None], units, encoding)  # (1, n_ctx)
    seq = torch.cat([given, truth_tokens.flatten()[None, n_ctx:]], 1)  # (1, L): the real continuation after it
    cond = None if cond is None else torch.tensor([cond], device=device)  # (1, n_cond)
    new, logprobs = gpt.generate(given, seq.shape[1] - n_ctx, samples, settings, generator, cond=cond,
                                 progress=progress)
    tokens = torch.cat([given.expand(samples, -1), new], dim=1).view(samples, *grid)
    truth_logprob = gpt.score(seq, n_ctx, cond)["logprob"].sum().item()
    return Continuations(grid=grid, context_units=units, context_tokens=n_ctx, context_encoding=encoding,
                         truth_tokens=truth_tokens, tokens=tokens, logprobs=logprobs, truth_logprob=truth_logprob,
                         truth=x, seen=decode_context(tokenizer, given, x[None])[0],
                         reconstruction=tokenizer.decode(truth_tokens[None])[0], samples=tokenizer.decode(tokens))


def write_panels(seen: torch.Tensor, truth: torch.Tensor, reconstruction: torch.Tensor, samples: torch.Tensor,
                 stem: Path, video_format: str = "gif") -> Path:
    """One grid of what the model saw (its context tokens decoded), the ground truth, its
    reconstruction and the samples: `stem`.png for images, `stem`.gif / .mp4 for clips."""
    panels = torch.cat([torch.stack([seen, truth, reconstruction]), samples]).clamp(-1, 1).cpu()
    nrow = min(len(panels), 11)  # context, truth, reconstruction and 8 samples on one line
    if truth.dim() == 3:
        return write_image_grid(panels, stem.with_name(stem.name + ".png"), nrow=nrow)
    return write_clip_grid(panels, stem.with_name(f"{stem.name}.{video_format}"), nrow=nrow)


def write_continuations(result: Continuations, out: str | os.PathLike, video_format: str = "gif",
                        info: dict | None = None) -> list[Path]:
    """Write the sample grid (PNG for images; GIF or MP4 for clips: context, ground truth,
    reconstruction, then the samples) and samples.json into `out`; return the paths."""
    out = Path(out)
    r = result
    grid_path = write_panels(r.seen, r.truth, r.reconstruction, r.samples, out / "samples", video_format)
    record = {
        **(info or {}),
        "grid": list(r.grid),
        "context_units": r.context_units,
        "context_tokens": r.context_tokens,
        "context_encoding": r.context_encoding,
        "panels": ["what the model saw", "ground truth", "reconstruction"] + [f"sample {i}" for i in range(len(r.tokens))],
        "ground_truth_tokens": r.truth_tokens.flatten().tolist(),
        "context_tokens_given": r.tokens[0].flatten()[:r.context_tokens].tolist(),
        "ground_truth_logprob": r.truth_logprob,
        "sample_tokens": r.tokens.flatten(1)[:, r.context_tokens:].tolist(),
        "sample_logprobs": [[round(v, 5) for v in row] for row in r.logprobs.tolist()],
        "sample_logprob_sums": r.logprobs.sum(1).tolist(),
    }
    write_json(out / "samples.json", record)
    return [grid_path, out / "samples.json"]

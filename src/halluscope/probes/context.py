"""The context a model is given: always whole leading token rows (images, grid (h, w)) or whole
latent frames (clips, grid (t, h, w)), so the visible part is a clean picture, never a row cut
in the middle — and its tokens, which must depend only on the pixels the model is shown.

A tokenizer that is not causal along rows / time (taming's VQGAN has global attention and
GroupNorm over the whole image; a 3D VQGAN looks ahead in time) gives the first rows of a
full encoding tokens that depend on the hidden pixels: the answer leaks into the context.
Two encodings of the context, every probe's `--context-encoding`:

    visible  encode only the pixels the model is shown — the example cut after the context's
             pixel rows (images) or frames (clips) — on their own: the context tokens depend
             on the shown pixels alone, by construction (the default)
    full     encode the whole example and keep its first rows / latent frames (the peers'
             practice, kept for comparison: it leaks wherever the tokenizer is not causal)

For a causal tokenizer the two are bit-identical. `context_leak` measures the leak: the share
of context tokens that change when only the continuation's pixels are replaced."""

from __future__ import annotations

import math

import torch

from halluscope.errors import UserError

ENCODINGS = ("visible", "full")
UNIT_NAMES = {2: "token rows", 3: "latent frames"}  # by the grid's number of axes


def context_split(grid: tuple[int, ...], fraction: float) -> tuple[int, int]:
    """(units, tokens): the leading rows or latent frames kept for `fraction` of the grid
    (rounded to the nearest whole one, halves up), and the number of tokens they hold.
    A fraction that keeps nothing or everything is a UserError."""
    if not 0 < fraction < 1:
        raise UserError(f"context fraction must be strictly between 0 and 1, got {fraction}")
    units = grid[0]
    keep = math.floor(fraction * units + 0.5)
    if not 0 < keep < units:
        lo, hi = 0.5 / units, 1 - 0.5 / units
        raise UserError(f"context {fraction} of {units} {UNIT_NAMES[len(grid)]} rounds to {keep}: it must keep at "
                        f"least one and leave at least one to continue (use a fraction in [{lo:.3g}, {hi:.3g}))")
    return keep, keep * math.prod(grid[1:])


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise UserError(f"context encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


def pixel_cut(x: torch.Tensor, grid: tuple[int, ...], units: int) -> tuple[int, int]:
    """(axis, start): pixels x (..., 3, H, W) / (..., 3, T, H, W) are shown up to `start` along
    `axis` (height of an image, time of a clip) for a context of `units` token rows / latent
    frames. The one place the token-to-pixel cut is computed."""
    axis = x.dim() - len(grid)
    return axis, units * x.shape[axis] // grid[0]


def cut(x: torch.Tensor, grid: tuple[int, ...], units: int) -> torch.Tensor:
    """The part of pixels x the context does not show: the rows (images) or frames (clips)
    after the first `units` token rows / latent frames."""
    axis, start = pixel_cut(x, grid, units)
    return x.narrow(axis, start, x.shape[axis] - start)


def shown(x: torch.Tensor, grid: tuple[int, ...], units: int) -> torch.Tensor:
    """x with everything the context does not show painted mid-grey: the picture the model is
    shown, as a person sees it."""
    out = x.clone()
    cut(out, grid, units).fill_(0.0)
    return out


def splice(x: torch.Tensor, other: torch.Tensor, grid: tuple[int, ...], units: int) -> torch.Tensor:
    """x's shown part with `other`'s hidden part: the same context, another continuation."""
    out = x.clone()
    cut(out, grid, units).copy_(cut(other, grid, units))
    return out


@torch.no_grad()
def encode_context(tokenizer: torch.nn.Module, x: torch.Tensor, units: int, encoding: str) -> torch.Tensor:
    """The context tokens (B, units * tokens per unit) of pixels x (B, 3, ...) in [-1, 1].
    `visible` encodes the shown part cut out, not painted over: a grey fill is a picture no
    tokenizer was trained on (measured on the demo's image VQGAN: 12% of the context tokens at
    ½ agreed with the full encoding's with a grey fill, 47% cut out)."""
    check_encoding(encoding)
    grid = tuple(tokenizer.grid)
    if units == 0:  # no context (the redundancy curve's first point)
        return torch.zeros(len(x), 0, dtype=torch.long, device=x.device)
    if encoding == "full":
        return tokenizer.encode(x).flatten(1)[:, :units * math.prod(grid[1:])]
    axis, start = pixel_cut(x, grid, units)
    tokens = tokenizer.encode(x.narrow(axis, 0, start))
    if tuple(tokens.shape[1:]) != (units, *grid[1:]):  # a tokenizer that only takes whole inputs
        raise UserError(f"the tokenizer encodes the {start} shown pixel rows / frames to a {tuple(tokens.shape[1:])} "
                        f"grid, not {(units, *grid[1:])}: it cannot encode a context on its own; use "
                        "--context-encoding full (and read its context_leak)")
    return tokens.flatten(1)


@torch.no_grad()
def context_leak(tokenizer: torch.nn.Module, x: torch.Tensor, other: torch.Tensor, units: int,
                 encoding: str) -> torch.Tensor:
    """Per example (B,), the share of its context tokens that change when its continuation's
    pixels are replaced by `other`'s (B, 3, ...): 0 when the context depends on the shown
    pixels alone. Both versions are encoded in one call, so only the pixels differ."""
    grid = tuple(tokenizer.grid)
    both = encode_context(tokenizer, torch.cat([x, splice(x, other, grid, units)]), units, encoding)
    return (both[:len(x)] != both[len(x):]).double().mean(1)


@torch.no_grad()
def decode_context(tokenizer: torch.nn.Module, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """What the model saw: the decoding of exactly its context tokens (B, units * per unit) — the
    leading token rows / latent frames decoded alone, so no hidden token shapes them — at the
    size of pixels `like` (B, 3, ...), the part after them mid-grey."""
    grid = tuple(tokenizer.grid)
    per_unit = math.prod(grid[1:])
    units = tokens.shape[1] // per_unit
    decoded = tokenizer.decode(tokens.view(len(tokens), units, *grid[1:])).clamp(-1, 1)
    axis, start = pixel_cut(like, grid, units)
    if decoded.shape[axis] != start:  # a decoder that only takes whole grids
        raise UserError(f"the tokenizer decodes {units} {UNIT_NAMES[len(grid)]} to {decoded.shape[axis]} pixel "
                        f"rows / frames, not {start}: it cannot show a context on its own")
    out = torch.zeros_like(like)
    out.narrow(axis, 0, start).copy_(decoded)
    return out

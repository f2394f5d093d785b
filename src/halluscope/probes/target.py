"""What a probe scores. By default every record scores its whole continuation, so records at
different contexts score different targets (less to predict as the context grows) and their
figures are not like for like. A fixed target (`probe --target F`) scores only the last F of
the token rows (images) or latent frames (clips), rounded to whole ones, at every context:
the context varies, what is scored does not."""

from __future__ import annotations

import math

from halluscope.errors import UserError
from halluscope.probes.context import context_split


def target_units(grid: tuple[int, ...], fraction: float) -> int:
    """The trailing rows / latent frames a target fraction keeps (nearest whole one, halves up)."""
    if not 0 < fraction < 1:
        raise UserError(f"--target must be a fraction strictly between 0 and 1, got {fraction}")
    keep = math.floor(fraction * grid[0] + 0.5)
    if keep < 1:
        raise UserError(f"--target {fraction} of {grid[0]} {unit_name(grid)} rounds to none; use at least "
                        f"{0.5 / grid[0]:.3g}")
    return keep


def unit_name(grid: tuple[int, ...]) -> str:
    return "token rows" if len(grid) == 2 else "latent frames"


def check_target(grid: tuple[int, ...], contexts: list[float], fraction: float | None) -> None:
    """A UserError unless the target lies after every context's last row / frame."""
    if fraction is None:
        return
    keep = target_units(grid, fraction)
    widest = max(context_split(grid, c)[0] for c in contexts)
    if widest + keep > grid[0]:
        raise UserError(f"--target {fraction} keeps the last {keep} of {grid[0]} {unit_name(grid)}, but context "
                        f"{max(contexts)} shows the first {widest}: the target must lie after every context")


def scored_split(grid: tuple[int, ...], context_units: int, fraction: float | None) -> tuple[int, int]:
    """(units, tokens) before what is scored: the context's (whole continuation) or, with a
    fixed target, everything before the target's first row / frame."""
    units = context_units if fraction is None else grid[0] - target_units(grid, fraction)
    return units, units * math.prod(grid[1:])


def describe(fraction: float | None) -> str:
    """How a report names the target of a row."""
    return "whole continuation" if fraction is None else f"fixed: last {fraction:g}"

"""How much of an example a context fraction shows: always whole leading token rows (images,
grid (h, w)) or whole latent frames (clips, grid (t, h, w)), so the visible part is a clean
picture, never a row cut in the middle."""

from __future__ import annotations

import math

from halluscope.errors import UserError


def context_split(grid: tuple[int, ...], fraction: float) -> tuple[int, int]:
    """(units, tokens): the leading rows or latent frames kept for `fraction` of the grid
    (rounded to the nearest whole one, halves up), and the number of tokens they hold.
    A fraction that keeps nothing or everything is a UserError."""
    if not 0 < fraction < 1:
        raise UserError(f"context fraction must be strictly between 0 and 1, got {fraction}")
    units = grid[0]
    unit_name = "token rows" if len(grid) == 2 else "latent frames"
    keep = math.floor(fraction * units + 0.5)
    if not 0 < keep < units:
        lo, hi = 0.5 / units, 1 - 0.5 / units
        raise UserError(f"context {fraction} of {units} {unit_name} rounds to {keep}: it must keep at least one "
                        f"and leave at least one to continue (use a fraction in [{lo:.3g}, {hi:.3g}))")
    return keep, keep * math.prod(grid[1:])

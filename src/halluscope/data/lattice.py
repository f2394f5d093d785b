"""Shapes on the world's lattice, counted against pixel layers: every geometry a prior can
draw (kind, radius, centre in eighths of a pixel), and how many pixels of each layer its
mask covers, for all of them at once (row intervals of precomputed templates, summed with
row-wise prefix sums). The posteriors of the image and clip worlds enumerate with it."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from halluscope.data.shapes import KINDS, PALETTE, Shape, masks

COLOURS = list(PALETTE)


def colour_map(pixels: np.ndarray) -> np.ndarray:
    """int (H, W): the PALETTE index of each uint8 (H, W, 3) pixel, -1 for the background."""
    out = np.full(pixels.shape[:2], -1)
    for i, rgb in enumerate(PALETTE.values()):
        out[(pixels == rgb).all(-1)] = i
    return out


def prefix_sums(layers: np.ndarray) -> np.ndarray:
    """int (L, H, W + 1): each layer's row-wise running counts, a zero column first."""
    return np.concatenate([np.zeros((*layers.shape[:2], 1), int), layers.cumsum(-1)], -1)


@dataclass
class Templates:
    """The rows of each shape template: a shape of kind k and radius r whose centre lies at
    (8 ix + fx, 8 iy + fy) eighths of a pixel covers, in canvas row iy - off + d, the columns
    ix - off + lo[t, d] .. ix - off + hi[t, d] (none where lo > hi), t = id(k, r, x8, y8)."""
    lo: np.ndarray
    hi: np.ndarray
    off: int

    def id(self, kind, r, x8, y8):
        return ((kind * self.off + r) * 8 + x8 % 8) * 8 + y8 % 8


@functools.lru_cache(maxsize=8)
def templates(rmax: int) -> Templates:
    k, off = 2 * rmax + 3, rmax + 1
    n = len(KINDS) * off * 64
    table = Templates(np.zeros((n, k), int), np.full((n, k), -1), off)
    for kind, r, fx, fy in itertools.product(range(len(KINDS)), range(1, off), range(8), range(8)):
        covered = masks(kind, r, off + fx / 8, off + fy / 8, False, np.arange(k), k)[0]
        t = table.id(kind, r, fx, fy)
        for d in np.flatnonzero(covered.any(1)):
            cols = np.flatnonzero(covered[d])
            table.lo[t, d], table.hi[t, d] = cols[0], cols[-1]
    return table


@dataclass
class Support:
    """Every shape geometry a half's prior can draw (kind as an index into KINDS; r; x, y in
    eighths of a pixel) with its prior probability w (colour aside), its template and the
    first canvas row it covers."""
    kind: np.ndarray
    r: np.ndarray
    x8: np.ndarray
    y8: np.ndarray
    w: np.ndarray
    template: np.ndarray
    first_row: np.ndarray
    table: Templates

    def count(self, idx: np.ndarray, prefix: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """int (L, len(idx)): how many pixels of each layer the shapes idx cover, from the
        layers' row-wise prefix sums (L, H, W + 1)."""
        if len(idx) > chunk:
            return np.concatenate([self.count(idx[i:i + chunk], prefix) for i in range(0, len(idx), chunk)], axis=1)
        lo, hi, off = self.table.lo[self.template[idx]], self.table.hi[self.template[idx]], self.table.off
        rows = (self.y8[idx] // 8 - off)[:, None] + np.arange(lo.shape[1])
        ok = (hi >= lo) & (rows >= 0) & (rows < prefix.shape[1])
        rows, left = np.where(ok, rows, 0), (self.x8[idx] // 8 - off)[:, None]
        c0, c1 = np.where(ok, left + lo, 0), np.where(ok, left + hi + 1, 0)
        return np.where(ok, prefix[:, rows, c1] - prefix[:, rows, c0], 0).sum(-1)

    def shapes(self, idx: np.ndarray, colour: np.ndarray) -> list[Shape]:
        return [Shape(KINDS[self.kind[i]], COLOURS[c], float(self.r[i]), self.x8[i] / 8, self.y8[i] / 8)
                for i, c in zip(idx, colour)]

    def cover(self, idx: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """bool (len(idx), P): which of the (row, col) pixels each shape covers."""
        off, t = self.table.off, self.template[idx][:, None]
        d = pixels[None, :, 0] - (self.y8[idx] // 8 - off)[:, None]  # the template row of each pixel
        inside = (d >= 0) & (d < self.table.lo.shape[1])
        d = np.where(inside, d, 0)
        col = pixels[None, :, 1] - (self.x8[idx] // 8 - off)[:, None]
        return inside & (col >= self.table.lo[t, d]) & (col <= self.table.hi[t, d])


@functools.lru_cache(maxsize=16)
def geometries(size: int, top: int, bottom: int, kinds: tuple[str, ...], options: tuple[int, ...],
               step: float) -> Support:
    """Every shape of a kind in `kinds` and a radius in `options` lying wholly within rows
    [top, bottom) and columns [0, size), centred on the multiples of step; its prior
    probability w when kind, radius, x and y are each uniform."""
    step8 = round(step * 8)
    table = templates(max(options))
    parts = []
    for name, r in itertools.product(kinds, options):
        xs = np.arange(-(-8 * r // step8), 8 * (size - r) // step8 + 1) * step8
        ys = np.arange(-(-8 * (top + r) // step8), 8 * (bottom - r) // step8 + 1) * step8
        y8, x8 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
        w = np.full(len(x8), 1 / (len(kinds) * len(options) * len(xs) * len(ys)))
        parts.append((np.full(len(x8), KINDS.index(name)), np.full(len(x8), r), x8, y8, w))
    kind, r, x8, y8, w = (np.concatenate(a) for a in zip(*parts))
    t = table.id(kind, r, x8, y8)
    first = y8 // 8 - table.off + np.argmax(table.hi[t] >= table.lo[t], axis=1)
    return Support(kind, r, x8, y8, w, t, first, table)



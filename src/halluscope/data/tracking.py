"""The posterior of a clip world's hidden state given its first frames.

The state of a shape is its centre and velocity on the 1/8-pixel lattice; frame t + 1 comes
from frame t by a kick (the velocity redrawn from its prior, with probability `randomness`)
then a move with elastic walls. The rendered frames show the state only up to pixels, so
given frames [0, F) the state at frame F - 1 is uncertain, and so is the continuation even
at randomness 0. This module draws whole context trajectories from the exact posterior
given the context frames *and the recorded kinds, colours, radii and drawing order* of the
shapes (which the frames show whenever the shapes are in view and their overlaps resolve
it), then the caller runs the world's own dynamics on from the last one.

Exactness. Given those attributes, the shapes' trajectories are independent a priori, and a
trajectory x_k of shape k (colour c) can belong to a draw that renders the context only if,
in every frame, its mask covers no pixel but those of its colour or of a colour drawn later
(U_t), and, if no other shape has colour c, covers every pixel of colour c (L_t): call that
event E_k, a hidden Markov model's constraint on its positions. Where other shapes share
colour c, L_t is the pixels of colour c that none of them can cover at any position its own
filter still allows; the bounds are tightened until they settle, which keeps every draw of
A. Forward filtering on the lattice, then backward sampling, draws x_k from π(x_k | E_k)
exactly; a joint draw is accepted iff it renders the context frames exactly, so accepted
draws follow π(x | A), A ⊆ Π_k E_k the draws that render the context. (With distinct
colours, Π E_k = A and every draw is accepted.)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from halluscope.data.lattice import COLOURS, colour_map, geometries, prefix_sums
from halluscope.data.shapes import KINDS, STEP, Shape, State, masks, render
from halluscope.errors import UserError

MAX_PROPOSALS = 100_000


def speeds(size: int) -> np.ndarray:
    """The velocity prior of one axis in eighths of a pixel (random_velocity's support):
    uniform over these."""
    scale = size / 64
    magnitudes = np.arange(np.ceil(0.5 * scale / STEP), np.floor(2.0 * scale / STEP) + 1).astype(int)
    return np.concatenate([-magnitudes[::-1], magnitudes])


def bounce(x: np.ndarray, v: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """shapes.bounce on integer eighths, for arrays."""
    x = x + v
    below, above = x < low, x > high
    return np.where(below, 2 * low - x, np.where(above, 2 * high - x, x)), np.where(below | above, -v, v)


@dataclasses.dataclass
class Track:
    """Forward filter of one shape: per context frame, the lattice positions (m, 2) in eighths
    its mask may take there, and the filtered probabilities (m, V) of (position, velocity)
    over them and the V velocities of the prior."""
    places: list[np.ndarray]
    probs: list[np.ndarray]


class ClipPosterior:
    """Draws the shapes' states over the context frames [0, frame) from their posterior."""

    def __init__(self, world, meta: dict, frame: int):
        self.world, self.frame, self.size = world, frame, world.size
        self.truth = [tuple(Shape(**s) for s in state) for state in meta["states"]]
        self.shapes = self.truth[0]
        self.observed = np.stack([colour_map(render(s, self.size)) for s in self.truth[:frame]])
        self.v = speeds(self.size)
        self.grid = np.stack(np.meshgrid(self.v, self.v, indexing="ij"), -1).reshape(-1, 2)  # velocity j: (vx, vy)
        colours = [COLOURS.index(s.color) for s in self.shapes]
        self.must = [[(self.observed[t] == c) if colours.count(c) == 1 else np.zeros_like(self.observed[t], bool)
                      for t in range(frame)] for c in colours]
        self.tracks = [self.track(k) for k in range(len(self.shapes))]
        shared = [k for k, c in enumerate(colours) if colours.count(c) > 1]
        while shared:  # tighten the shared colours' lower bounds until they settle
            reach = {k: self.reach(k) for k in shared}
            changed = []
            for k in shared:
                others = [reach[j] for j in shared if j != k and colours[j] == colours[k]]
                must = [(self.observed[t] == colours[k]) & ~np.any([r[t] for r in others], axis=0)
                        for t in range(frame)]
                if any((m != old).any() for m, old in zip(must, self.must[k])):
                    self.must[k] = must
                    changed.append(k)
            for k in changed:
                self.tracks[k] = self.track(k)
            shared = changed and shared

    def limits(self, k: int) -> tuple[int, int]:
        r8 = int(self.shapes[k].r * 8)
        return r8, 8 * self.size - r8

    def allowed(self, k: int, t: int) -> np.ndarray:
        """(m, 2) the lattice centres where shape k's mask fits frame t's pixels: inside U_t,
        covering L_t (see the module docstring), sorted by code."""
        shape, seen = self.shapes[k], self.observed[t]
        later = {COLOURS.index(s.color) for s in self.shapes[k:]}
        inside, must = np.isin(seen, list(later)), self.must[k][t]
        s = geometries(self.size, 0, self.size, (shape.kind,), (int(shape.r),), STEP)
        idx = np.flatnonzero(inside[s.y8 // 8, s.x8 // 8])  # a shape covers the pixel its centre lies in
        counts = s.count(idx, prefix_sums(np.stack([~inside, must])))
        idx = idx[(counts[0] == 0) & (counts[1] == must.sum())]
        places = np.stack([s.x8[idx], s.y8[idx]], 1)
        return places[np.argsort(self.code(places))]

    def code(self, places: np.ndarray) -> np.ndarray:
        """One integer per position (x, y) in eighths, for lookups."""
        return places[..., 0].astype(np.int64) * (16 * self.size) + places[..., 1]

    def find(self, places: np.ndarray, sorted_places: np.ndarray) -> np.ndarray:
        """The index of each position in sorted_places (sorted by code), -1 where absent."""
        codes, table = self.code(places), self.code(sorted_places)
        if len(table) == 0:
            return np.full(codes.shape, -1)
        at = np.minimum(np.searchsorted(table, codes), len(table) - 1)
        return np.where(table[at] == codes, at, -1)

    def track(self, k: int) -> Track:
        """Forward-filter shape k over the context frames. A kick to velocity u then moves the
        shape as keeping u would, so every (position, velocity) moves once, weighted by the
        chance to keep it plus the chance to be kicked to it."""
        (low, high), kick, n_v = self.limits(k), self.world.randomness, len(self.v)
        places = self.allowed(k, 0)
        tr = Track([places], [np.full((len(places), len(self.grid)), 1 / max(len(places) * len(self.grid), 1))])
        for t in range(1, self.frame):
            p = tr.probs[-1]
            w = (1 - kick) * p + kick * p.sum(1, keepdims=True) / len(self.grid)
            x, vx = bounce(tr.places[-1][:, :1], self.v[None], low, high)  # (m, n_v) per axis
            y, vy = bounce(tr.places[-1][:, 1:], self.v[None], low, high)
            nxt = self.allowed(k, t)
            at = self.find(np.stack(np.broadcast_arrays(x[:, :, None], y[:, None, :]), -1), nxt)  # (m, n_v, n_v)
            j = (np.searchsorted(self.v, vx)[:, :, None] * n_v + np.searchsorted(self.v, vy)[:, None, :])
            ok = at >= 0
            probs = np.bincount((at * len(self.grid) + j)[ok], w.reshape(ok.shape)[ok],
                                len(nxt) * len(self.grid)).reshape(len(nxt), len(self.grid))
            live = probs.sum(1) > 0
            tr.places.append(nxt[live])
            tr.probs.append(probs[live] / max(probs.sum(), 1e-300))
        if len(tr.places[-1]) == 0:
            raise UserError("the clip oracle found no state of the world that shows this context; "
                            "is the example from this world?")
        return tr

    def reach(self, k: int) -> list[np.ndarray]:
        """Per context frame, bool (S, S): the pixels shape k covers at some position its
        forward filter still allows there (a superset of where the whole context allows it)."""
        shape, out = self.shapes[k], []
        for places in self.tracks[k].places:
            covered = masks(np.full(len(places), KINDS.index(shape.kind)), shape.r, places[:, 0] / 8, places[:, 1] / 8,
                            False, np.arange(self.size), self.size)
            out.append(covered.any(0))
        return out

    def sources(self, x1: np.ndarray, v1: np.ndarray, low: int, high: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis, the (position, velocity) pairs a move takes to x1 leaving v1: straight,
        off the low wall, off the high wall; positions where impossible are -1."""
        out = []
        for x, u in ((x1 - v1, v1), (2 * low - x1 + v1, -v1), (2 * high - x1 + v1, -v1)):
            moved, after = bounce(x, u, low, high)
            out.append((np.where((moved == x1) & (after == v1), x, -1), u))
        return out

    def draw(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, frame, 4): trajectories of shape k over the context from π(· | E_k), sampled
        backwards: the last state from the filter, then each earlier one among the states
        that move onto the next (kept: that velocity; kicked: any, from the filter)."""
        tr, kick, (low, high), n_v = self.tracks[k], self.world.randomness, self.limits(k), len(self.v)
        out = np.zeros((n, self.frame, 4), int)
        flat = tr.probs[-1].ravel()
        pick = rng.choice(len(flat), n, p=flat / flat.sum())
        i, j = pick // len(self.grid), pick % len(self.grid)
        out[:, -1] = np.c_[tr.places[-1][i], self.grid[j]]
        for t in range(self.frame - 2, -1, -1):
            x1, y1, vx1, vy1 = out[:, t + 1].T
            options = []  # (position index, velocity index or -1 for a kick, weight), each (n,)
            p, beta = tr.probs[t], tr.probs[t].sum(1)
            sources = itertools.product(self.sources(x1, vx1, low, high), self.sources(y1, vy1, low, high))
            for (x, ux), (y, uy) in sources:
                at = np.where((x >= 0) & (y >= 0), self.find(np.stack([x, y], 1), tr.places[t]), -1)
                u = np.searchsorted(self.v, ux) * n_v + np.searchsorted(self.v, uy)
                safe = np.maximum(at, 0)
                options.append((at, u, np.where(at >= 0, (1 - kick) * p[safe, u], 0)))
                options.append((at, np.full(n, -1), np.where(at >= 0, kick * beta[safe] / len(self.grid), 0)))
            weights = np.stack([w for *_, w in options], 1)
            cum = weights.cumsum(1)
            choice = np.argmax(cum > rng.random((n, 1)) * cum[:, -1:], axis=1)
            at = np.stack([a for a, *_ in options], 1)[np.arange(n), choice]
            u = np.stack([v for _, v, _ in options], 1)[np.arange(n), choice]
            kicked = np.flatnonzero(u < 0)  # the velocity before a kick: any, from the filter
            if len(kicked):
                rows = p[at[kicked]].cumsum(1)
                u[kicked] = np.argmax(rows > rng.random((len(kicked), 1)) * rows[:, -1:], axis=1)
            out[:, t] = np.c_[tr.places[t][at], self.grid[u]]
        return out

    def states(self, paths: list[np.ndarray], b: int, t: int) -> State:
        return tuple(dataclasses.replace(s, x=p[b, t, 0] / 8, y=p[b, t, 1] / 8, vx=p[b, t, 2] / 8, vy=p[b, t, 3] / 8)
                     for s, p in zip(self.shapes, paths))

    def sample(self, n: int, rng: np.random.Generator, max_proposals: int = MAX_PROPOSALS
               ) -> tuple[list[list[State]], dict]:
        """n posterior draws of the context frames' states, and the sampler's statistics."""
        accepted, proposals = [], 0
        while len(accepted) < n:
            if proposals >= max_proposals:
                raise UserError(f"the clip oracle accepted {len(accepted)} of {proposals} proposals at frame "
                                f"{self.frame} (it needs {n}): this context is too unlikely to sample exactly "
                                f"within {max_proposals} proposals")
            rate = (len(accepted) + 1) / (proposals + 1)  # size the batch to finish in about one more
            count = int(min(1024, max_proposals - proposals, max(8, 1.5 * (n - len(accepted)) / rate)))
            paths = [self.draw(k, count, rng) for k in range(len(self.shapes))]
            proposals += count
            for b in range(count):
                states = [self.states(paths, b, t) for t in range(self.frame)]
                if all(np.array_equal(colour_map(render(s, self.size)), o) for s, o in zip(states, self.observed)):
                    accepted.append(states)
        last = self.truth[self.frame - 1]
        differs = np.mean([d[-1] != last for d in accepted[:n]])
        return accepted[:n], {"proposals": proposals, "accepted": len(accepted),
                              "acceptance": len(accepted) / proposals, "state_differs": float(differs)}

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
from halluscope.data.posterior import components, next_batch
from halluscope.data.shapes import KINDS, STEP, Shape, State, masks, render
from halluscope.errors import UserError

MAX_PROPOSALS = 100_000
MAX_ANCHORS = 3


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
    over them and the V velocities of the prior; and log π(E), the prior probability of its
    constraint (-inf: impossible)."""
    places: list[np.ndarray]
    probs: list[np.ndarray]
    log_mass: float = 0.0


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
        self.must = [(self.observed == c) if colours.count(c) == 1 else np.zeros_like(self.observed, bool)
                     for c in colours]  # per shape, bool (frames, S, S): L_t
        self.groups = [[k for k in range(len(colours)) if colours[k] == c] for c in dict.fromkeys(colours)]
        self.tracks = [self.track(k, self.must[k]) for k in range(len(self.shapes))]
        for group in self.groups:
            if len(group) > 1:
                self.tighten(group, self.must, self.tracks)
        if any(tr.log_mass == -np.inf for tr in self.tracks):
            raise UserError("the clip oracle found no state of the world that shows this context; "
                            "is the example from this world?")
        self.anchors = {g[0]: self.assignments(g) for g in self.groups if len(g) > 1}

    def tighten(self, group: list[int], must: list, tracks: list[Track]) -> None:
        """Raise the lower bounds (must, in place) of shapes sharing a colour until they settle:
        a pixel of their colour that no other of them can cover at any position its filter
        still allows is this one's to cover; refilter (tracks, in place) whoever changed."""
        colour, todo = COLOURS.index(self.shapes[group[0]].color), list(group)
        while todo:
            if any(tracks[k].log_mass == -np.inf for k in group):  # an impossible filter stops early: fewer frames
                return
            reach = {k: self.reach(self.shapes[k], tracks[k].places) for k in group}
            changed = []
            for k in group:
                others = np.any([reach[j] for j in group if j != k], axis=0)
                raised = must[k] | ((self.observed == colour) & ~others)
                if (raised != must[k]).any():
                    must[k] = raised
                    changed.append(k)
            for k in changed:
                tracks[k] = self.track(k, must[k])
            todo = changed

    def assignments(self, group: list[int]) -> list[tuple[list, list[Track], float]]:
        """Anchors for a group of shapes sharing a colour: up to MAX_ANCHORS pixels of frame 0
        that more than one of them could cover (one per component of such pixels). A draw
        that renders the context covers each with some shape of the group, so the draws lie
        in the union, over the assignments of anchors to shapes that can cover them, of the
        events "each shape covers its anchors", each tightened like the group's own bounds.
        Returns, per possible assignment, the shapes' lower bounds, filters and probability."""
        colour = COLOURS.index(self.shapes[group[0]].color)
        reach = np.stack([self.reach(self.shapes[k], self.tracks[k].places[:1])[0] for k in group])
        labels = components((reach.sum(0) > 1) & (self.observed[0] == colour))
        anchors = [tuple(np.argwhere(labels == i)[0]) for i in range(labels.max() + 1)][:MAX_ANCHORS]
        options = [[k for k, r in zip(group, reach) if r[a]] for a in anchors]
        out = []
        for owners in itertools.product(*options):
            must, tracks = list(self.must), list(self.tracks)
            for (y, x), k in zip(anchors, owners):
                must[k] = must[k].copy()
                must[k][0, y, x] = True
            for k in set(owners):
                tracks[k] = self.track(k, must[k])
            if all(tracks[k].log_mass > -np.inf for k in group):
                self.tighten(group, must, tracks)
            log_mass = sum(tracks[k].log_mass for k in group)
            if log_mass > -np.inf:
                out.append((must, tracks, log_mass))
        if not out:
            raise UserError("the clip oracle found no state of the world that shows this context; "
                            "is the example from this world?")
        top = max(m for *_, m in out)
        total = sum(np.exp(m - top) for *_, m in out)
        return [(must, tracks, float(np.exp(m - top) / total)) for must, tracks, m in out]

    def limits(self, k: int) -> tuple[int, int]:
        r8 = int(self.shapes[k].r * 8)
        return r8, 8 * self.size - r8

    def allowed(self, k: int, t: int, must: np.ndarray) -> np.ndarray:
        """(m, 2) the lattice centres where shape k's mask fits frame t's pixels: inside U_t,
        covering the pixels `must` (L_t, see the module docstring), sorted by code."""
        shape, seen = self.shapes[k], self.observed[t]
        later = {COLOURS.index(s.color) for s in self.shapes[k:]}
        inside = np.isin(seen, list(later))
        s = geometries(self.size, 0, self.size, (shape.kind,), (int(shape.r),), STEP)
        x, y = s.x8 // 8, s.y8 // 8  # the pixel each centre lies in
        near = inside[y, x]  # a shape covers the pixel its centre lies in
        if must.any():  # a centre more than r + 2 pixels from a pixel to cover cannot cover it: skip those early
            ys, xs = np.nonzero(must)
            reach = int(shape.r) + 2
            near &= (x >= xs.max() - reach) & (x <= xs.min() + reach)
            near &= (y >= ys.max() - reach) & (y <= ys.min() + reach)
        idx = np.flatnonzero(near)
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

    def track(self, k: int, must: np.ndarray) -> Track:
        """Forward-filter shape k over the context frames, its mask covering `must` (bool
        (frames, S, S)). A kick to velocity u then moves the shape as keeping u would, so
        every (position, velocity) moves once, weighted by the chance to keep it plus the
        chance to be kicked to it."""
        (low, high), kick, n_v = self.limits(k), self.world.randomness, len(self.v)
        places = self.allowed(k, 0, must[0])
        tr = Track([places], [np.full((len(places), len(self.grid)), 1 / max(len(places) * len(self.grid), 1))],
                   np.log(len(places) / ((high - low + 1) ** 2)) if len(places) else -np.inf)
        for t in range(1, self.frame):
            if tr.log_mass == -np.inf:
                break
            p = tr.probs[-1]
            w = (1 - kick) * p + kick * p.sum(1, keepdims=True) / len(self.grid)
            x, vx = bounce(tr.places[-1][:, :1], self.v[None], low, high)  # (m, n_v) per axis
            y, vy = bounce(tr.places[-1][:, 1:], self.v[None], low, high)
            nxt = self.allowed(k, t, must[t])
            at = self.find(np.stack(np.broadcast_arrays(x[:, :, None], y[:, None, :]), -1), nxt)  # (m, n_v, n_v)
            j = (np.searchsorted(self.v, vx)[:, :, None] * n_v + np.searchsorted(self.v, vy)[:, None, :])
            ok = at >= 0
            probs = np.bincount((at * len(self.grid) + j)[ok], w.reshape(ok.shape)[ok],
                                len(nxt) * len(self.grid)).reshape(len(nxt), len(self.grid))
            live, total = probs.sum(1) > 0, probs.sum()
            tr.places.append(nxt[live])
            tr.probs.append(probs[live] / total if total > 0 else probs[live])
            tr.log_mass += np.log(total) if total > 0 else -np.inf
        return tr

    def reach(self, shape: Shape, frames: list[np.ndarray]) -> np.ndarray:
        """bool (frames, S, S): the pixels the shape covers at some of the positions given per
        frame (for a filter's positions: a superset of where the whole context allows it)."""
        out = []
        for places in frames:
            covered = masks(np.full(len(places), KINDS.index(shape.kind)), shape.r, places[:, 0] / 8, places[:, 1] / 8,
                            False, np.arange(self.size), self.size)
            out.append(covered.any(0))
        return np.stack(out)

    def sources(self, x1: np.ndarray, v1: np.ndarray, low: int, high: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis, the (position, velocity) pairs a move takes to x1 leaving v1: straight,
        off the low wall, off the high wall; positions where impossible are -1."""
        out = []
        for x, u in ((x1 - v1, v1), (2 * low - x1 + v1, -v1), (2 * high - x1 + v1, -v1)):
            moved, after = bounce(x, u, low, high)
            out.append((np.where((moved == x1) & (after == v1), x, -1), u))
        return out

    def draw(self, k: int, tr: Track, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, frame, 4): trajectories of shape k over the context from π(· | E) of its filter
        tr, sampled backwards: the last state from the filter, then each earlier one among the
        states that move onto the next (kept: that velocity; kicked: any, from the filter)."""
        kick, (low, high), n_v = self.world.randomness, self.limits(k), len(self.v)
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

    def group_draw(self, group: list[int], paths: list, rng: np.random.Generator) -> float:
        """Draw, into paths, the shapes of a group sharing a colour: an assignment of its
        anchors with probability ∝ its mass, then each shape from its filter under it.
        Returns the probability to keep the draw: 1 / the number of assignments whose events
        hold it."""
        options = self.anchors[group[0]]
        _, tracks, _ = options[rng.choice(len(options), p=[w for *_, w in options])]
        for k in group:
            paths[k] = self.draw(k, tracks[k], 1, rng)[0]
        covers = {k: self.reach(self.shapes[k], [p[None, :2] for p in paths[k]]) for k in group}
        return 1 / sum(all((covers[k] >= must[k]).all() for k in group) for must, *_ in options)

    def states(self, paths: list[np.ndarray], t: int) -> State:
        return tuple(dataclasses.replace(s, x=p[t, 0] / 8, y=p[t, 1] / 8, vx=p[t, 2] / 8, vy=p[t, 3] / 8)
                     for s, p in zip(self.shapes, paths))

    def sample(self, n: int, rng: np.random.Generator, max_proposals: int = MAX_PROPOSALS
               ) -> tuple[list[list[State]], dict]:
        """n posterior draws of the context frames' states, and the sampler's statistics."""
        accepted, proposals = [], 0
        while len(accepted) < n:
            count = next_batch(n, len(accepted), proposals, max_proposals, f"clip oracle at frame {self.frame}",
                               most=1024, least=8, slack=1.5)
            alone = [g[0] for g in self.groups if len(g) == 1]
            drawn = {k: self.draw(k, self.tracks[k], count, rng) for k in alone}
            proposals += count
            for b in range(count):
                paths = [drawn[k][b] if k in drawn else None for k in range(len(self.shapes))]
                keep = np.prod([self.group_draw(g, paths, rng) for g in self.groups if len(g) > 1])
                if rng.random() >= keep:
                    continue
                states = [self.states(paths, t) for t in range(self.frame)]
                if all(np.array_equal(colour_map(render(s, self.size)), o) for s, o in zip(states, self.observed)):
                    accepted.append(states)
        last = self.truth[self.frame - 1]
        differs = np.mean([d[-1] != last for d in accepted[:n]])
        return accepted[:n], {"proposals": proposals, "accepted": len(accepted),
                              "acceptance": len(accepted) / proposals, "state_differs": float(differs)}

"""The exact posterior of an image world given the top rows of one of its images.

The world draws N_t ~ U{1..3} shapes t_1.. wholly in the top half and N_b ~ U{1..3} shapes
b_1.. wholly in the bottom half, all independently from their half's prior, and three coins
m_j ~ Bernoulli(dependence); the bottom's layer j is the mirror image of t_j if m_j (absent
if there is no t_j), else b_j (absent if there is no b_j). Given the visible rows [0, row)
of an image, the posterior is that prior π restricted to the set A of draws whose rendering
shows exactly those rows; the hidden pixels follow by rendering a posterior draw.

Plain rejection (draw from π until the visible rows match) is exact but hopeless: a visible
shape must come out with the right kind, colour, radius and position to the 1/8 pixel, about
1 draw in 10^5 per shape. So π is first restricted to an event E ⊇ A read off the visible
pixels, and rejection runs inside E.

Roles. In each half, the visible painted pixels split into *groups*: one colour within one
4-connected component. A shape's visible footprint is 4-connected (its rows are intervals
around one column), so a shape with a visible pixel and none on the background (it would
have painted it) lies within one component. Each unknown shape (a t_i, or a drawn b_j) gets a
role, a set of shapes:

    D       no pixel in its half's visible rows
    G       some, none on a visible background pixel (any colour)
    X1 g    g's colour; covers all of group g, nothing on the background
    Xm g    g's colour; covers some of g, nothing on the background
    X2 g    (two shapes) both in Xm g, together covering all of g

In a draw in A, the shapes whose pixels of group g stay on top are one (an X1 g), two (an
X2 g pair) or three (each Xm g); every other shape is D or G. So A lies in the union of the
product events E_k, k = (N_t, coins, N_b, a role for each unknown shape) with every group of
a half shown exactly so ("valid"). Mirror images are top shapes drawn again: the role of a
mirrored top shape also says what its image does in the bottom's visible rows (shows bottom
group g: "|g"; shows nothing and paints no background: "|x"; pair roles say nothing), and
the bottom pixels that the images of k's mirrored roles could show (in their colour) are
"wildcards" of k: the bottom's own shapes need only show its other pixels, by the same rule.

Exact sampling from π(· | A): draw k with probability π(E_k) / Σ_k' π(E_k') (π(E_k): the
count and coin probabilities times each role's prior mass, enumerated on the lattice), draw
the shapes from π restricted to their roles, and accept the draw x if it renders the visible
rows exactly, then with probability 1 / c(x), c(x) = the number of valid k with x ∈ E_k.
P(x proposed and accepted) = Σ_{k ∋ x} π(E_k)/Σπ(E) · π(x)/π(E_k) · 1/c(x) = π(x)/Σ_k π(E_k)
for every x in A, and 0 outside it: the accepted draws are exactly π(· | A), and the
acceptance rate (reported) is π(A) / Σ_k π(E_k).

Where the bottom half cannot depend on the top (dependence 0), the halves are independent
both a priori and given the context, so a fully visible top half is kept as drawn (any
consistent top shows the same pixels, and nothing else depends on it). The k are drawn in two
steps: k_top = (N_t, coins, top roles) with probability ∝ its mass times S(k_top), the mass of
the bottom's valid (N_b, own roles) given its wildcards; then those.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

from halluscope.data.lattice import COLOURS, Support, colour_map, geometries, prefix_sums
from halluscope.data.shapes import KINDS, Prior, Shape, State, from_dicts, masks, radii, render
from halluscope.errors import UserError

MAX_SHAPES = 3  # per half, and bottom layers
MAX_PROPOSALS = 4_000_000  # per call; beyond it the sampler says so instead of approximating
BATCH = 4096


def next_batch(n: int, accepted: int, proposals: int, max_proposals: int, sampler: str, most: int, least: int,
               slack: float) -> int:
    """How many proposals a rejection sampler draws next: `slack` times what the acceptance
    rate so far says finishes the n acceptances, within [least, most]; past its cap it stops
    with a clear message, never an approximation."""
    if proposals >= max_proposals:
        raise UserError(f"the {sampler} accepted {accepted} of {proposals} proposals (it needs {n}): this context is "
                        f"too unlikely under the world to sample exactly within {max_proposals} proposals")
    rate = (accepted + 1) / (proposals + 1)
    return int(min(most, max_proposals - proposals, max(least, slack * (n - accepted) / rate)))


def components(painted: np.ndarray) -> np.ndarray:
    """int (H, W): a label per 4-connected component of the True pixels, -1 elsewhere."""
    labels = np.full(painted.shape, -1)
    for start in zip(*np.nonzero(painted)):
        if labels[start] >= 0:
            continue
        label, todo = labels.max() + 1, deque([start])
        labels[start] = label
        while todo:
            y, x = todo.popleft()
            for p in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= p[0] < painted.shape[0] and 0 <= p[1] < painted.shape[1] and painted[p] and labels[p] < 0:
                    labels[p] = label
                    todo.append(p)
    return labels


def support(size: int, top: int, bottom: int, prior: Prior) -> Support:
    """The half [top, bottom)'s prior over geometries, enumerated on its lattice."""
    return geometries(size, top, bottom, prior.kinds, tuple(radii(size, top, bottom)), prior.step)


class Weighted:
    """Items with weights, drawn in proportion to them."""

    def __init__(self, items: np.ndarray, weights: np.ndarray):
        self.items, self.cum = items, np.cumsum(weights)
        self.mass = float(self.cum[-1]) if len(self.cum) else 0.0

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Positions in items."""
        return np.minimum(np.searchsorted(self.cum, rng.random(count) * self.mass, side="right"), len(self.items) - 1)


@dataclass
class Role:
    """One slot's set of shapes (name "D", "G", "X1 g", "Xm g"; "X2a g" / "X2b g": the first
    and second of a pair), its prior mass, and how to draw from π restricted to it."""
    name: str
    group: int | None
    colour: int | None  # its fixed PALETTE index, or None: see allowed
    mass: float
    shapes: Weighted | None = None  # geometries, for single roles, weighted by prior × share of colours allowed
    allowed: np.ndarray | None = None  # per geometry, a bitmask of the PALETTE colours it may have (colour None)
    pairs: Weighted | None = None  # pair ids, for X2a
    members: tuple | None = None  # pairs' classes; each class's range of geometries, their cumulative weights


class Half:
    """One half of the image: its prior, its visible rows [top, end) of the observed colour
    map, its groups, roles and valid role vectors."""

    def __init__(self, size: int, top: int, bottom: int, prior: Prior, observed: np.ndarray, end: int,
                 wildcard: np.ndarray | None = None):
        self.top, self.end, self.prior = top, max(top, end), prior
        self.support = s = support(size, top, bottom, prior)
        self.colour_ids = np.array([COLOURS.index(c) for c in prior.colors])
        self.palette_bits = int(np.bitwise_or.reduce(1 << self.colour_ids))
        seen = np.full((size, size), -2)  # -2: not visible, -1: background, -3: a wildcard, else a colour
        seen[self.top:self.end] = observed[self.top:self.end]
        painted = seen >= 0
        if wildcard is not None:
            seen[wildcard & painted] = -3
        labels = components(painted)
        self.groups = sorted({(int(seen[p]), int(labels[p])) for p in zip(*np.nonzero(seen >= 0))})
        self.pixels = [np.argwhere((seen == c) & (labels == k)) for c, k in self.groups]
        self.layers = np.stack([seen == -1] + [(seen == c) & (labels == k) for c, k in self.groups])
        self.prefix = prefix_sums(self.layers)
        hidden = np.flatnonzero(s.first_row >= self.end)
        roles = [self.single("D", None, None, hidden)]
        if painted.any():
            # A shape covers the pixel its centre lies in, so one with a visible pixel and none on
            # the background has its centre in a painted pixel or below the visible rows.
            row, col = s.y8 // 8, s.x8 // 8
            centred = (row >= self.end) | painted[np.minimum(row, size - 1), col]
            near = np.flatnonzero((s.first_row < self.end) & centred)
            fits = near[s.count(near, self.prefix[:1])[0] == 0]
            roles.append(self.single("G", None, None, fits))
            counts = s.count(fits, self.prefix[1:])
            for g, (c, _) in enumerate(self.groups):
                touching = fits[counts[g] > 0]
                roles.append(self.single(f"X1 {g}", g, c, fits[counts[g] == len(self.pixels[g])]))
                roles.append(self.single(f"Xm {g}", g, c, touching))
                roles.extend(self.pair(g, c, touching))
        self.roles = [r for r in roles if r.mass > 0]
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def share(self, colour: int | None) -> float:
        """The prior probability of a role's colour."""
        return 1.0 if colour is None else float(colour in self.colour_ids) / len(self.colour_ids)

    def single(self, label: str, group: int | None, colour: int | None, idx: np.ndarray,
               allowed: np.ndarray | None = None) -> Role:
        """A role of single shapes: of a fixed colour, or of the colours `allowed` per geometry
        (default: any of the prior's)."""
        if colour is not None:
            shapes = Weighted(idx, self.support.w[idx] * self.share(colour))
            return Role(label, group, colour, shapes.mass, shapes=shapes)
        if allowed is None:
            allowed, share = np.full(len(idx), self.palette_bits), 1.0
        else:
            allowed = allowed & self.palette_bits
            share = ((allowed[:, None] >> np.arange(len(COLOURS))) & 1).sum(1) / len(self.colour_ids)
        shapes = Weighted(idx, self.support.w[idx] * share)
        return Role(label, group, None, shapes.mass, shapes=shapes, allowed=allowed)

    def pair(self, g: int, colour: int, idx: np.ndarray) -> list[Role]:
        """X2a g and X2b g: ordered pairs of shapes of Xm g whose footprints together cover g,
        found among the classes of shapes that cover the same pixels of g."""
        if len(idx) == 0:
            return []
        packed = np.ascontiguousarray(np.packbits(self.support.cover(idx, self.pixels[g]), axis=1))
        _, first, which = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_index=True,
                                    return_inverse=True)
        classes, which = packed[first], which.ravel()
        weight = np.bincount(which, self.support.w[idx], len(classes))
        full = np.packbits(np.ones(len(self.pixels[g]), bool))
        # One of a covering pair covers g's least-covered pixel: search pairs from those classes.
        covered = np.unpackbits(classes, axis=1, count=len(self.pixels[g])).astype(bool)
        first = np.flatnonzero(covered[:, np.argmin(covered.sum(0))])
        found = np.argwhere(((classes[first, None] | classes[None]) == full).all(-1))
        one, other = first[found[:, 0]], found[:, 1]
        pairs = np.unique(np.concatenate([np.c_[one, other], np.c_[other, one]]), axis=0)
        chosen = Weighted(np.arange(len(pairs)), weight[pairs[:, 0]] * weight[pairs[:, 1]])
        order = np.argsort(which, kind="stable")  # geometries by class, so a class is a range of them
        starts = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=len(classes)))])
        cum = np.concatenate([[0], np.cumsum(self.support.w[idx][order])])
        a = Role(f"X2a {g}", g, colour, chosen.mass * self.share(colour) ** 2, pairs=chosen,
                 members=(pairs, starts, cum, idx[order]))
        return [a, Role(f"X2b {g}", g, colour, 1.0)] if a.mass > 0 else []

    def valid(self, vector: tuple[int, ...]) -> bool:
        """Pairs whole and in order, and every group shown by exactly one X1, one pair, or
        three Xm."""
        names = [self.roles[i].name for i in vector]
        for g in range(len(self.groups)):
            a = [i for i, n in enumerate(names) if n == f"X2a {g}"]
            b = [i for i, n in enumerate(names) if n == f"X2b {g}"]
            if len(a) != len(b) or len(a) > 1 or (a and a[0] > b[0]):
                return False
            shown = (names.count(f"X1 {g}"), len(a), names.count(f"Xm {g}"))
            if shown not in ((1, 0, 0), (0, 1, 0), (0, 0, 3)):
                return False
        return True

    def vectors(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The valid role vectors of n unknown shapes (V, n) and their prior masses (V,)."""
        if n not in self.cache:
            vectors = [v for v in itertools.product(range(len(self.roles)), repeat=n) if self.valid(v)]
            mass = np.array([np.prod([self.roles[i].mass for i in v]) for v in vectors])
            self.cache[n] = np.array(vectors, int).reshape(len(vectors), n), mass
        return self.cache[n]

    def total(self, n: int) -> float:
        return float(self.vectors(n)[1].sum())

    def members(self, role: Role) -> np.ndarray:
        """The geometries a role's shapes can have (for a pair role, either member's)."""
        if role.shapes is not None:
            return role.shapes.items
        return next(r for r in self.roles if r.name == f"Xm {role.group}").shapes.items

    def draw(self, chosen: np.ndarray, rng: np.random.Generator, roles: list[Role] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Shapes for role vectors (count, n) of `roles` (default: the half's), each from π
        restricted to its role: geometries (count, n) and PALETTE colours (count, n)."""
        roles = self.roles if roles is None else roles
        count, n = chosen.shape
        idx, colour = np.zeros((count, n), int), np.zeros((count, n), int)
        for slot, role_id in itertools.product(range(n), range(len(roles))):
            rows = np.flatnonzero(chosen[:, slot] == role_id)
            role = roles[role_id]
            if len(rows) == 0 or role.name.startswith("X2b"):
                continue
            if role.shapes is not None:
                at = role.shapes.draw(len(rows), rng)
                idx[rows, slot] = role.shapes.items[at]
                colour[rows, slot] = role.colour if role.colour is not None else pick_colour(role.allowed[at], rng)
                continue
            second = np.argmax(chosen[rows] == role_id + 1, axis=1)  # where its X2b sits
            pairs, starts, cum, geometry = role.members
            for k, cls in enumerate(pairs[role.pairs.items[role.pairs.draw(len(rows), rng)]].T):
                u = cum[starts[cls]] + rng.random(len(rows)) * (cum[starts[cls + 1]] - cum[starts[cls]])
                at = np.clip(np.searchsorted(cum, u, side="right") - 1, starts[cls], starts[cls + 1] - 1)
                idx[rows, slot if k == 0 else second] = geometry[at]  # a geometry of each class, by prior
            colour[rows, slot] = colour[rows, second] = role.colour
        return idx, colour

    def held(self, idx: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """bool (n, roles): which of the half's roles hold each shape (pairs: each member's part)."""
        s = self.support
        hidden = s.first_row[idx] >= self.end
        bg, *groups = s.count(idx, self.prefix)
        held = np.zeros((len(idx), len(self.roles)), bool)
        for i, role in enumerate(self.roles):
            kind, g = role.name.split()[0], role.group
            if kind == "D":
                held[:, i] = hidden
            elif kind == "G":
                held[:, i] = ~hidden & (bg == 0)
            else:
                right = (colour == role.colour) & ~hidden & (bg == 0) & (groups[g] > 0)
                held[:, i] = right & (groups[g] == len(self.pixels[g])) if kind == "X1" else right
        return held

    def pairs_hold(self, vector: np.ndarray, idx: np.ndarray) -> bool:
        """Whether the shapes in each X2a/X2b pair of a role vector cover their group together."""
        names = [self.roles[r].name for r in vector]
        return all(self.support.cover(idx[[i, names.index(f"X2b {self.roles[r].group}")]],
                                      self.pixels[self.roles[r].group]).any(0).all()
                   for i, r in enumerate(vector) if names[i].startswith("X2a"))

    def multiplicity(self, idx: np.ndarray, colour: np.ndarray) -> int:
        """How many valid role vectors hold these shapes (one draw's n unknown shapes)."""
        vectors, _ = self.vectors(len(idx))
        held = self.held(idx, colour)
        ok = held[np.arange(len(idx)), vectors].all(1)
        return sum(self.pairs_hold(v, idx) for v in vectors[ok])


def pick_colour(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour drawn uniformly from each bitmask of PALETTE indices."""
    options = (allowed[:, None] >> np.arange(len(COLOURS))) & 1
    cum = options.cumsum(1)
    return np.argmax(cum > rng.random(len(allowed))[:, None] * cum[:, -1:], axis=1)


class ImagePosterior:
    """Draws from the exact posterior of an ImageWorld's image given its rows [0, row), by
    the scheme of the module docstring. A draw x is proposed with probability ∝ π(x) ×
    (Σ over the valid k_top holding its top of the number of valid bottom role vectors, for
    k_top's wildcards, holding its own bottom shapes), and accepted, if it renders the
    visible rows exactly, with probability 1 / that sum."""

    def __init__(self, world, meta: dict, row: int):
        self.world, self.row, self.size = world, row, world.size
        self.mid = self.size // 2
        top, bottom = from_dicts(meta["top"]), from_dicts(meta["bottom"])
        self.observed = colour_map(render(top + bottom, self.size))
        p = world.dependence
        self.known_top = top if p == 0 and row >= self.mid else None  # the halves are independent; it is seen whole
        self.bottoms: dict[bytes, Half] = {}  # the bottom half, per pattern of wildcards
        self.plain = self.bottom(np.zeros((self.size, self.size), bool))
        self.mirror_prefix = prefix_sums(self.plain.layers[:, ::-1])  # a top shape's mirror image, counted in place
        self.group_colour = np.array([c for c, _ in self.plain.groups], int)
        coins = [np.array(c, bool) for c in itertools.product((0, 1), repeat=MAX_SHAPES)]
        self.coins = [(c, float(np.prod(np.where(c, p, 1 - p)))) for c in coins]
        self.coins = [c for c in self.coins if c[1] > 0]  # (coins, probability)
        if self.known_top is None:
            self.top = Half(self.size, 0, self.mid, world.prior, self.observed, min(row, self.mid))
            # Mirror images matter only where the bottom shows rows; elsewhere mirrored slots take top roles.
            self.slot_roles = list(self.top.roles) + (self.combined_roles() if row > self.mid else [])
            names = [r.name for r in self.top.roles]
            self.bases = np.array([names.index(r.name.split("|")[0]) for r in self.slot_roles])
            self.tags = [r.name.split("|")[1] if "|" in r.name else None for r in self.slot_roles]
            self.shows: dict[int, np.ndarray] = {}
            self.choices = []  # (N_t, coins id, role vector, weight, bottom half)
            for n_top, c in itertools.product(range(1, MAX_SHAPES + 1), range(len(self.coins))):
                for vector, mass in self.top_vectors(n_top, self.coins[c][0]):
                    half = self.bottom(self.wildcards(vector, self.coins[c][0]))
                    weight = self.coins[c][1] * mass * self.bottom_sum(half, c) / MAX_SHAPES
                    if weight > 0:
                        self.choices.append((n_top, c, vector, weight, half))
            weights = np.array([ch[3] for ch in self.choices])
        else:
            weights = np.array([prob * self.bottom_sum(self.plain, c) for c, (_, prob) in enumerate(self.coins)])
        if weights.sum() <= 0:
            raise UserError("the image oracle found no draw of the world that shows this context; "
                            "is the example from this world?")
        self.weights = weights / weights.sum()

    def bottom(self, wildcard: np.ndarray) -> Half:
        """The bottom half whose own shapes need not show the wildcard pixels (kept per pattern)."""
        key = np.packbits(wildcard).tobytes()
        if key not in self.bottoms:
            self.bottoms[key] = Half(self.size, self.mid, self.size, self.world.prior, self.observed, self.row,
                                     wildcard)
        return self.bottoms[key]

    def effect(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For top shapes (support indices), their mirror images in the bottom's visible rows:
        bool (n, groups) which groups each touches, and bool (n,) which paint no background."""
        counts = self.top.support.count(idx, self.mirror_prefix)
        return (counts[1:] > 0).T, counts[0] == 0

    def combined_roles(self) -> list[Role]:
        """Single top roles split by what the shape's mirror image would do: "|g" shows bottom
        group g (in its colour), "|x" shows none and paints no background."""
        out = []
        for role in self.top.roles:
            if role.shapes is None:
                continue
            idx = role.shapes.items
            touch, clean = self.effect(idx)
            if role.colour is not None:
                mine = touch & (self.group_colour == role.colour)
                out.append(self.top.single(f"{role.name}|x", role.group, role.colour, idx[clean & ~mine.any(1)]))
                out += [self.top.single(f"{role.name}|{g}", role.group, role.colour, idx[clean & mine[:, g]])
                        for g in range(len(self.group_colour))]
                continue
            touched = touch.astype(int) @ (1 << self.group_colour).astype(int)  # bitmask of the groups' colours
            out.append(self.top.single(f"{role.name}|x", role.group, None, idx[clean],
                                       role.allowed[clean] & ~touched[clean]))
            out += [self.top.single(f"{role.name}|{g}", role.group, None, idx[clean & touch[:, g]],
                                    np.full(int((clean & touch[:, g]).sum()), 1 << int(c)))
                    for g, c in enumerate(self.group_colour)]
        return [r for r in out if r.mass > 0]

    def top_vectors(self, n_top: int, coins: np.ndarray):
        """(role vector over slot_roles, mass) of the valid k_top for N_t, coins: where mirror
        images matter, a mirrored slot takes a combined role or a pair role, another slot a top role."""
        plain = range(len(self.top.roles))
        mixed = [i for i in plain if self.top.roles[i].shapes is None] + list(range(len(self.top.roles),
                                                                                    len(self.slot_roles)))
        alphabets = [mixed if coins[j] and self.row > self.mid else plain for j in range(n_top)]
        valid: dict[tuple, bool] = {}
        for vector in itertools.product(*alphabets):
            base = tuple(self.bases[list(vector)])
            if base not in valid:
                valid[base] = self.top.valid(base)
            if valid[base]:
                yield np.array(vector), float(np.prod([self.slot_roles[r].mass for r in vector]))

    def wildcards(self, vector: np.ndarray, coins: np.ndarray) -> np.ndarray:
        """bool (S, S): the bottom pixels that the mirror image of some shape of a mirrored
        slot's role could show."""
        out = np.zeros((self.size, self.size), bool)
        for j, r in enumerate(vector):
            if coins[j] and self.row > self.mid and self.tags[r] != "x":
                out |= self.can_show(r)
        return out

    def can_show(self, r: int) -> np.ndarray:
        """bool (S, S): the bottom pixels the mirror images of slot role r's shapes cover and
        could show: those of its group ("|g") or, for a pair role, of its colour (kept per role)."""
        if r not in self.shows:
            role, tag, s = self.slot_roles[r], self.tags[r], self.top.support
            idx, rows = self.top.members(role), np.arange(self.mid, self.row)
            cover = np.zeros((len(rows), self.size), bool)
            for at in range(0, len(idx), 4096):
                part = idx[at:at + 4096]
                cover |= masks(s.kind[part], s.r[part], s.x8[part] / 8, self.size - s.y8[part] / 8, True, rows,
                               self.size).any(0)
            mine = self.plain.layers[1 + int(tag)] if tag is not None else self.observed == role.colour
            self.shows[r] = np.zeros((self.size, self.size), bool)
            self.shows[r][rows] = cover & mine[rows]
        return self.shows[r]

    def bottom_sum(self, half: Half, c: int) -> float:
        """Σ over N_b of π(N_b) × the mass of the valid role vectors of the own shapes, for
        coins c."""
        coins = self.coins[c][0]
        return sum(half.total(int((~coins & (np.arange(MAX_SHAPES) < n_b)).sum()))
                   for n_b in range(1, MAX_SHAPES + 1)) / MAX_SHAPES

    def propose(self, count: int, rng: np.random.Generator) -> Draws:
        """count draws from π restricted to E, in the order drawn, as arrays."""
        picks = rng.choice(len(self.weights), count, p=self.weights)
        top_idx, top_colour = np.full((count, MAX_SHAPES), -1), np.full((count, MAX_SHAPES), -1)
        if self.known_top is None:
            n_top, c = np.array([self.choices[k][0] for k in picks]), np.array([self.choices[k][1] for k in picks])
            for n in range(1, MAX_SHAPES + 1):
                rows = np.flatnonzero(n_top == n)
                if len(rows):
                    vectors = np.array([self.choices[picks[k]][2] for k in rows])
                    top_idx[rows, :n], top_colour[rows, :n] = self.top.draw(vectors, rng, self.slot_roles)
            halves = [self.choices[k][4] for k in picks]
        else:
            n_top, c, halves = np.full(count, len(self.known_top)), picks, [self.plain] * count
        d = Draws(top_idx, top_colour, n_top, c, halves)
        # Then N_b and the bottom's own shapes, for each (coins, bottom half) alike.
        d.n_bottom = np.zeros(count, int)
        d.own_idx, d.own_colour = np.full((count, MAX_SHAPES), -1), np.full((count, MAX_SHAPES), -1)
        which = np.array([id(h) for h in halves])
        for k, half in {(k, id(h)): (k, h) for k, h in zip(c.tolist(), halves)}.values():
            rows = np.flatnonzero((c == k) & (which == id(half)))
            coins = self.coins[k][0]
            sizes = [int((~coins & (np.arange(MAX_SHAPES) < n_b)).sum()) for n_b in range(1, MAX_SHAPES + 1)]
            totals = np.array([half.total(n) for n in sizes])
            d.n_bottom[rows] = 1 + rng.choice(MAX_SHAPES, len(rows), p=totals / totals.sum())
            for n_b, n in zip(range(1, MAX_SHAPES + 1), sizes):
                these = rows[d.n_bottom[rows] == n_b]
                if len(these) and n:
                    vectors, mass = half.vectors(n)
                    chosen = vectors[rng.choice(len(vectors), len(these), p=mass / mass.sum())]
                    d.own_idx[these, :n], d.own_colour[these, :n] = half.draw(chosen, rng)
        return d

    def layers(self, d: Draws) -> dict[str, np.ndarray]:
        """Each draw's layers as arrays (B, 6): top ranks 0-2, then bottom ranks 0-2."""
        count = len(d.c)
        out = {k: np.zeros((count, 2 * MAX_SHAPES), t) for k, t in
               (("kind", int), ("r", float), ("x", float), ("y", float), ("flip", bool), ("colour", int), ("on", bool))}
        if self.known_top is None:
            put(out, slice(0, MAX_SHAPES), self.top.support, d.top_idx, d.top_colour)
        else:
            for i, s in enumerate(self.known_top):
                for k, v in (("kind", KINDS.index(s.kind)), ("r", s.r), ("x", s.x), ("y", s.y), ("flip", s.flip),
                             ("colour", COLOURS.index(s.color)), ("on", True)):
                    out[k][:, i] = v
        slots = np.arange(MAX_SHAPES)
        coins = np.array([self.coins[k][0] for k in d.c]).reshape(count, MAX_SHAPES)
        mirrored = coins & (slots < d.n_top[:, None])
        own = ~coins & (slots < d.n_bottom[:, None])
        rank = np.maximum(np.cumsum(own, 1) - 1, 0)  # a bottom rank's place among the own shapes
        own_idx = np.where(own, np.take_along_axis(d.own_idx, rank, 1), -1)
        put(out, slice(MAX_SHAPES, None), self.plain.support, own_idx, np.take_along_axis(d.own_colour, rank, 1))
        for k in out:
            out[k][:, MAX_SHAPES:] = np.where(mirrored, out[k][:, :MAX_SHAPES], out[k][:, MAX_SHAPES:])
        out["y"][:, MAX_SHAPES:] = np.where(mirrored, self.size - out["y"][:, :MAX_SHAPES], out["y"][:, MAX_SHAPES:])
        out["flip"][:, MAX_SHAPES:] ^= mirrored
        return out

    def matches(self, layers: dict[str, np.ndarray]) -> np.ndarray:
        """bool (B,): which draws render the visible rows exactly; the top half's rows are
        checked first, and only the draws that pass are painted further."""
        ok = np.ones(len(layers["on"]), bool)
        for rows, cols in ((np.arange(min(self.row, self.mid)), range(MAX_SHAPES)),
                           (np.arange(self.mid, self.row), range(MAX_SHAPES, 2 * MAX_SHAPES))):
            live = np.flatnonzero(ok)
            if len(rows) == 0 or len(live) == 0:
                continue
            seen = np.full((len(live), len(rows), self.size), -1)
            for c in cols:  # in drawing order; a half's layers cannot reach the other half
                on = np.flatnonzero(layers["on"][live, c])
                if len(on):
                    sel = live[on]
                    covered = masks(*(layers[k][sel, c] for k in ("kind", "r", "x", "y", "flip")), rows, self.size)
                    seen[on] = np.where(covered, layers["colour"][sel, c][:, None, None], seen[on])
            ok[live] = (seen == self.observed[rows]).all((1, 2))
        return ok

    def sample(self, n: int, rng: np.random.Generator, max_proposals: int = MAX_PROPOSALS) -> tuple[list[State], dict]:
        """n posterior draws (each its layers in drawing order) and the sampler's statistics."""
        accepted, proposals = [], 0
        while len(accepted) < n:
            count = next_batch(n, len(accepted), proposals, max_proposals, f"image oracle at row {self.row}",
                               most=BATCH, least=16, slack=2)
            draws = self.propose(count, rng)
            proposals += count
            layers = self.layers(draws)
            for b in np.flatnonzero(self.matches(layers)):
                if rng.random() * self.multiplicity(draws, b) < 1:
                    accepted.append(state(layers, b))
        return accepted[:n], {"proposals": proposals, "accepted": len(accepted),
                              "acceptance": len(accepted) / proposals}


    def multiplicity(self, d: Draws, b: int) -> int:
        """Σ over the valid k_top (same N_t and coins) holding draw b's top of the number of
        valid role vectors of its bottom half holding b's own shapes."""
        own = int((d.own_idx[b] >= 0).sum())
        own_idx, own_colour = d.own_idx[b, :own], d.own_colour[b, :own]
        if self.known_top is not None:
            return self.plain.multiplicity(own_idx, own_colour)
        idx, colour = d.top_idx[b, :d.n_top[b]], d.top_colour[b, :d.n_top[b]]
        base = self.top.held(idx, colour)
        if self.row > self.mid:
            touch, clean = self.effect(idx)
        else:  # nothing visible below: mirror images do nothing there
            touch, clean = np.zeros((len(idx), 0), bool), np.ones(len(idx), bool)
        mine = touch & (colour[:, None] == self.group_colour)
        held = base[:, self.bases]
        for r, tag in enumerate(self.tags):
            if tag is not None:
                held[:, r] &= clean & (~mine.any(1) if tag == "x" else mine[:, int(tag)])
        return sum(half.multiplicity(own_idx, own_colour) for n_top, ch, vector, _, half in self.choices
                   if n_top == len(idx) and ch == d.c[b] and held[np.arange(len(idx)), vector].all()
                   and self.top.pairs_hold(self.bases[vector], idx))

@dataclass
class Draws:
    """A batch of proposals as arrays: the top shapes (B, 3) (-1: none); N_t; the coins id;
    each draw's bottom half (its wildcards); and N_b and the bottom's own shapes (B, 3) by
    rank among them."""
    top_idx: np.ndarray
    top_colour: np.ndarray
    n_top: np.ndarray
    c: np.ndarray
    halves: list
    n_bottom: np.ndarray | None = None
    own_idx: np.ndarray | None = None
    own_colour: np.ndarray | None = None


def put(out: dict[str, np.ndarray], cols: slice, s: Support, idx: np.ndarray, colour: np.ndarray) -> None:
    """Fill layer columns from support geometries (-1: no layer)."""
    on, safe = idx >= 0, np.maximum(idx, 0)
    for k, v in (("kind", s.kind[safe]), ("r", s.r[safe]), ("x", s.x8[safe] / 8), ("y", s.y8[safe] / 8),
                 ("flip", False), ("colour", colour), ("on", on)):
        out[k][:, cols] = v


def state(layers: dict[str, np.ndarray], b: int) -> State:
    """Draw b's layers as shapes, in drawing order."""
    return tuple(Shape(KINDS[layers["kind"][b, c]], COLOURS[layers["colour"][b, c]], float(layers["r"][b, c]),
                       float(layers["x"][b, c]), float(layers["y"][b, c]), flip=bool(layers["flip"][b, c]))
                 for c in range(2 * MAX_SHAPES) if layers["on"][b, c])



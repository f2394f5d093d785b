"""The oracles are exact posteriors given the context, checked against brute force on tiny
worlds. Images: every draw of a 16-pixel world with two kinds, two colours and a 2-pixel
lattice is enumerated, and the oracle's hidden rows must match the enumerated posterior
(Pearson chi-square), which the old fixed-count sampler fails. Clips: the drawn states
render the context frames exactly, and one shape's drawn state matches a brute-force
search over the prior (initial states, kicks) that renders whole frames. Known answers:
the clip world's conditional entropy rises strictly with its randomness. Shapes of one colour
(the hard case for the clip oracle) match the plain rejection sampler."""

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2

from halluscope.data import ImageWorld, VideoWorld
from halluscope.data.answers import kick_entropy, known_answer
from halluscope.data.lattice import COLOURS, colour_map
from halluscope.data.shapes import KINDS, Shape, from_dicts, masks, mirror, move, random_shape, render
from halluscope.data.tracking import ClipPosterior
from halluscope.errors import UserError

TINY = dict(size=16, kinds=("square", "triangle"), colors=("red", "blue"), step=2.0)


def half_shapes(world: ImageWorld, top: int) -> list[Shape]:
    """Every shape a tiny world draws in the half from row `top`: radius 2 (the only one at
    16 px), centres on even pixels, wholly inside."""
    return [Shape(k, c, 2.0, float(x), float(y)) for k, c in itertools.product(world.kinds, world.colors)
            for y in range(top + 2, top + 7, 2) for x in range(2, 15, 2)]


def layered(layers: list[list[Shape]], rows: np.ndarray) -> np.ndarray:
    """int8 (draws, len(rows) * 16): the colour map of every draw taking one shape from each
    layer's options, painted in order (-1: background)."""
    out = np.full((1, len(rows) * 16), -1, np.int8)
    for options in layers:
        m = masks(np.array([KINDS.index(s.kind) for s in options]), np.array([s.r for s in options]),
                  np.array([s.x for s in options]), np.array([s.y for s in options]),
                  np.array([s.flip for s in options]), rows, 16).reshape(len(options), -1)
        colour = np.array([COLOURS.index(s.color) for s in options], np.int8)
        out = np.where(m[None], colour[None, :, None], out[:, None]).reshape(-1, m.shape[1])
    return out


def half_posterior(world: ImageWorld, top: int, observed: np.ndarray, row: int) -> dict[bytes, float]:
    """The posterior of the hidden rows [row, top + 8) of a half from enumeration: 1-3 shapes,
    each uniform over half_shapes (so every draw of N shapes weighs 84^-N / 3)."""
    shapes, rows, seen = half_shapes(world, top), np.arange(top, top + 8), (row - top) * 16
    dist = Counter()
    for n in (1, 2, 3):
        maps = layered([shapes] * n, rows)
        for pattern in maps[(maps[:, :seen] == observed[top:row].ravel()).all(1), seen:]:
            dist[pattern.tobytes()] += len(shapes) ** -n / 3
    return normalized(dist)


def joint_posterior(world: ImageWorld, observed: np.ndarray, row: int) -> dict[bytes, float]:
    """The posterior of hidden rows [row, 16) for row >= 8 with dependence: the top's draws
    showing the top half, then the bottom's layers for every coin toss and own draw."""
    p, tops, own = world.dependence, half_shapes(world, 0), half_shapes(world, 8)
    dist = Counter()
    for n in (1, 2, 3):
        maps = layered([tops] * n, np.arange(8))
        for flat in np.flatnonzero((maps == observed[:8].ravel()).all(1)):
            top = [tops[i] for i in np.unravel_index(flat, (len(tops),) * n)]
            for coins, n_own in itertools.product(itertools.product((0, 1), repeat=3), (1, 2, 3)):
                layers = [[mirror(top[j], 16)] if c else own for j, c in enumerate(coins)
                          if (c and j < n) or (not c and j < n_own)]
                weight = len(tops) ** -n / 3 * np.prod([p if c else 1 - p for c in coins]) / 3
                weight *= len(own) ** -sum(len(options) > 1 for options in layers)
                bottom = layered(layers, np.arange(8, 16))
                for pattern in bottom[(bottom[:, :(row - 8) * 16] == observed[8:row].ravel()).all(1), (row - 8) * 16:]:
                    dist[pattern.tobytes()] += weight
    return normalized(dist)


def normalized(dist: Counter) -> dict[bytes, float]:
    total = sum(dist.values())
    return {k: v / total for k, v in dist.items()}


def chi_square_p(dist: dict, samples: list) -> float:
    """Pearson's test of samples against dist: categories with fewer than 5 expected pooled,
    the pool (which also gets any sample outside dist's support) merged into the smallest
    category if it is itself that small."""
    n, counts = len(samples), Counter(samples)
    big = sorted((k for k in dist if dist[k] * n >= 5), key=dist.get, reverse=True)
    assert len(big) >= 3, "the posterior is too concentrated to test anything"
    observed, expected = [counts[k] for k in big], [dist[k] * n for k in big]
    rest = (n - sum(observed), n - sum(expected))
    if rest[1] >= 5:
        observed, expected = observed + [rest[0]], expected + [rest[1]]
    else:
        observed[-1], expected[-1] = observed[-1] + rest[0], expected[-1] + rest[1]
    return float(chi2.sf(sum((o - e) ** 2 / e for o, e in zip(observed, expected)), len(observed) - 1))


def colours_of(images) -> list[np.ndarray]:
    """int8 colour maps of float images, like layered's."""
    return [colour_map(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).astype(np.int8)
            for x in images]


def fixed_count(world: ImageWorld, meta: dict, row: int, n: int, seed: int) -> list[np.ndarray]:
    """The old oracle (ImageWorld.resample_below before issue 17): every shape the cut does not
    leave wholly hidden kept, the others redrawn below the cut, their number fixed."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        shapes = ()
        for name, top, bottom in world.halves():
            if top >= row:
                shapes += world.draw_half(rng, top, bottom)
            else:
                shapes += tuple(random_shape(rng, world.size, row, bottom, False, world.prior) if s.y - s.r >= row
                                else s for s in from_dicts(meta[name]))
        out.append(colour_map(render(shapes, world.size)).astype(np.int8))
    return out


@pytest.mark.parametrize("index, row, top", [(1, 4, 0), (4, 12, 8)])
def test_image_oracle_is_the_enumerated_posterior_and_the_fixed_count_sampler_is_not(index, row, top):
    world = ImageWorld(seed=0, **TINY)
    _, meta = world.example(index)
    observed = colour_map(render(from_dicts(meta["top"]) + from_dicts(meta["bottom"]), 16))
    dist = half_posterior(world, top, observed, row)
    images, stats = world.continue_from(meta, row, 3000, seed=1)
    assert chi_square_p(dist, [c[row:top + 8].tobytes() for c in colours_of(images)]) > 0.01
    assert 0.5 < stats["acceptance"] <= 1
    old = fixed_count(world, meta, row, 3000, seed=1)
    assert chi_square_p(dist, [c[row:top + 8].tobytes() for c in old]) < 1e-6


@pytest.mark.parametrize("index, row", [(1, 12), (3, 8)])
def test_image_oracle_with_dependence_is_the_enumerated_posterior(index, row):
    world = ImageWorld(seed=0, dependence=0.5, **{**TINY, "kinds": ("triangle",)})  # upside-down mirror images
    _, meta = world.example(index)
    observed = colour_map(render(from_dicts(meta["top"]) + from_dicts(meta["bottom"]), 16))
    dist = joint_posterior(world, observed, row)
    images, _ = world.continue_from(meta, row, 3000, seed=5)
    assert chi_square_p(dist, [c[row:].tobytes() for c in colours_of(images)]) > 0.01


def test_too_unlikely_contexts_stop_with_a_clear_message():
    world = ImageWorld(seed=0, **TINY)
    _, meta = world.example(1)
    with pytest.raises(UserError, match="too unlikely .* within 10 proposals"):
        world.continue_from(meta, 4, 100, seed=0, max_proposals=10)


def test_clip_oracle_handles_shapes_of_one_colour():
    # Three green shapes (two identical squares) and a yellow one: which green pixels are
    # whose is ambiguous, and drawing shapes one by one rarely tiles them (issue 17's hard case).
    world = VideoWorld(size=32, frames=8, randomness=0.3, seed=0)
    _, meta = world.example(13)
    assert [s["color"] for s in meta["states"][0]] == ["green"] * 3 + ["yellow"]
    draws, stats = ClipPosterior(world, meta, 4).sample(8, np.random.default_rng(0))
    for states in draws:
        for t, state in enumerate(states):
            assert np.array_equal(render(state, 32), render(clip_shapes(meta["states"][t]), 32))
    assert stats["acceptance"] > 0.05


def plain_rejection(post: ClipPosterior, n: int, rng: np.random.Generator) -> list:
    """The simple exact clip sampler: every shape independently from its own constraint
    (lower bounds only for colours it alone has), kept if the frames render exactly."""
    colours = [s.color for s in post.shapes]
    tracks = [post.track(k, post.observed == COLOURS.index(c) if colours.count(c) == 1
                         else np.zeros_like(post.observed, bool)) for k, c in enumerate(colours)]
    out = []
    while len(out) < n:
        paths = [post.draw(k, tr, 1000, rng) for k, tr in enumerate(tracks)]
        for b in range(1000):
            states = [post.states([p[b] for p in paths], t) for t in range(post.frame)]
            if all(np.array_equal(colour_map(render(s, post.size)), o) for s, o in zip(states, post.observed)):
                out.append(states)
    return out[:n]


def test_clip_oracle_with_a_shared_colour_matches_plain_rejection():
    world = VideoWorld(size=16, frames=4, randomness=0.3, seed=4)
    _, meta = world.example(1)
    post = ClipPosterior(world, meta, 2)
    assert [s.color for s in post.shapes] == ["cyan", "purple", "cyan"] and len(post.anchors[0]) == 2
    def last(draw):  # both cyan shapes' states at the last context frame
        return tuple((draw[-1][k].x, draw[-1][k].y, draw[-1][k].vx, draw[-1][k].vy) for k in (0, 2))
    mine = Counter(last(d) for d in post.sample(600, np.random.default_rng(1))[0])
    plain = Counter(last(d) for d in plain_rejection(post, 600, np.random.default_rng(2)))
    keys = [k for k in mine | plain if mine[k] + plain[k] >= 10]
    table = np.array([[c[k] for k in keys] + [600 - sum(c[k] for k in keys)] for c in (mine, plain)], float)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    assert table.shape[1] > 10 and chi2.sf(((table - expected) ** 2 / expected).sum(), table.shape[1] - 1) > 0.01


def clip_shapes(states: list[dict]) -> tuple[Shape, ...]:
    return tuple(Shape(**s) for s in states)


@pytest.mark.parametrize("randomness", [0.0, 0.4])
def test_clip_oracle_states_render_the_context_exactly(randomness):
    world = VideoWorld(size=32, frames=8, randomness=randomness, seed=0)
    shared = 0
    for i in range(6):
        _, meta = world.example(i)
        shared += len({s["color"] for s in meta["states"][0]}) < len(meta["states"][0])
        post = ClipPosterior(world, meta, 4)
        draws, stats = post.sample(5, np.random.default_rng(i))
        for states in draws:
            for t, state in enumerate(states):
                assert np.array_equal(render(state, 32), render(clip_shapes(meta["states"][t]), 32))
                assert all((8 * s.x).is_integer() and (8 * s.y).is_integer() and s.vx != 0 for s in state)
        assert 0 <= stats["state_differs"] <= 1 and 0 < stats["acceptance"] <= 1
    assert shared  # the hard case, two shapes of one colour, is among them


def one_shape_posterior(world: VideoWorld, meta: dict, k: int, frames: int) -> dict[tuple, float]:
    """Brute force: shape k's state at frame `frames` - 1 given frames [0, frames), the other
    shapes as recorded, by following every initial state and every kick of the prior and
    rendering whole frames (paths merged by state, weights summed)."""
    size, kick = world.size, world.randomness
    speeds = [s * v / 8 for s in (-1, 1) for v in range(1, 5)]  # 16 px: 0.5..2 px/frame scaled by 1/4
    truth = [clip_shapes(s) for s in meta["states"][:frames]]
    shape = truth[0][k]
    lattice = np.arange(8 * shape.r, 8 * (size - shape.r) + 1) / 8

    def fits(t: int, candidates: list[Shape]) -> np.ndarray:
        frame = np.array([render(truth[t][:k] + (c,) + truth[t][k + 1:], size) for c in candidates])
        return (frame == render(truth[t], size)).all((1, 2, 3))

    places = [Shape(shape.kind, shape.color, shape.r, x, y) for x, y in itertools.product(lattice, lattice)]
    places = [p for p, ok in zip(places, fits(0, places)) if ok]
    alive = {(p.x, p.y, vx, vy): 1.0 for p in places for vx, vy in itertools.product(speeds, speeds)}
    for t in range(1, frames):
        nxt = Counter()
        for (x, y, vx, vy), w in alive.items():
            options = [((vx, vy), 1 - kick)] + [(v, kick / len(speeds) ** 2) for v in itertools.product(speeds, speeds)]
            for (a, b), q in options:
                if q > 0:
                    s = move(Shape(shape.kind, shape.color, shape.r, x, y, a, b), size)
                    nxt[s.x, s.y, s.vx, s.vy] += w * q
        states = list(nxt)
        ok = fits(t, [Shape(shape.kind, shape.color, shape.r, *s) for s in states])
        alive = {s: nxt[s] for s, good in zip(states, ok) if good}
    return normalized(Counter(alive))


@pytest.mark.parametrize("randomness, frames", [(0.0, 2), (0.5, 3)])
def test_clip_oracle_state_is_the_enumerated_posterior(randomness, frames):
    world = VideoWorld(size=16, frames=4, randomness=randomness, seed=2)
    _, meta = world.example(1)
    colours = [s["color"] for s in meta["states"][0]]
    assert len(set(colours)) == len(colours)  # distinct colours: shapes' posteriors are independent
    dist = one_shape_posterior(world, meta, 0, frames)
    draws, _ = ClipPosterior(world, meta, frames).sample(2000, np.random.default_rng(0))
    s = [(d[-1][0].x, d[-1][0].y, d[-1][0].vx, d[-1][0].vy) for d in draws]
    assert chi_square_p(dist, s) > 0.01
    recorded = meta["states"][frames - 1][0]  # the old oracle restarted from the recorded state
    assert chi_square_p(dist, [(recorded["x"], recorded["y"], recorded["vx"], recorded["vy"])] * 2000) < 1e-6


def test_known_answers():
    levels = [0.0, 0.1, 0.3, 0.6, 1.0]
    bits = [known_answer(VideoWorld(size=32, frames=8, randomness=r), 4)["conditional_entropy_bits"] for r in levels]
    assert bits[0] == 0 and all(a < b for a, b in itertools.pairwise(bits)), bits
    assert bits[-1] == pytest.approx(3 * 4 * np.log2(14 ** 2))  # every velocity redrawn: uniform over 14 x 14
    assert kick_entropy(64, 1.0) == pytest.approx(np.log2(26 ** 2))
    assert known_answer(VideoWorld(frames=8), 8)["conditional_entropy_bits"] == 0
    image = ImageWorld(size=32)
    assert known_answer(image, 16)["mutual_information_bits"] == 0
    assert known_answer(ImageWorld(size=32, dependence=1.0), 16)["conditional_entropy_bits"] == 0
    unknown = known_answer(ImageWorld(size=32, dependence=0.5), 16)
    assert unknown["conditional_entropy_bits"] is None and unknown["mutual_information_bits"] is None
    assert "not computed" in unknown["note"]

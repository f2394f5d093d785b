"""The state of a synthetic world and its pure functions: draw shapes from a prior, render a
state to pixels, advance a state by one frame.

Positions, sizes and velocities are multiples of 1/8 pixel. Sums and reflections of such
numbers are exact in floating point, so a trajectory replayed from any recorded state
(written to JSON and read back) is bit-identical to the original, and the JSON stays short.
Shapes do not interact: each moves at constant velocity and bounces off the walls, and
later shapes are drawn over earlier ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

PALETTE = {
    "red": (230, 50, 50), "orange": (245, 140, 30), "yellow": (245, 215, 40), "green": (50, 180, 80),
    "cyan": (60, 200, 220), "blue": (50, 90, 230), "purple": (160, 70, 210), "white": (240, 240, 240),
}
BACKGROUND = (20, 20, 28)
KINDS = ("circle", "square", "triangle")
STEP = 1 / 8  # the grid every coordinate lives on


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    color: str  # a PALETTE name
    r: float  # half the side of its bounding box, pixels
    x: float  # centre, pixels from the left edge
    y: float  # centre, pixels from the top edge
    vx: float = 0.0  # pixels per frame
    vy: float = 0.0
    visible: bool = True


State = tuple[Shape, ...]


def on_grid(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform over the multiples of STEP in [lo, hi]."""
    return float(rng.integers(math.ceil(lo / STEP), math.floor(hi / STEP) + 1)) * STEP


def radius_range(size: int) -> tuple[int, int]:
    """Shape radii for a canvas of `size`: 4..8 pixels at 64."""
    low = max(2, size // 16)
    return low, max(low, size // 8)


def random_velocity(rng: np.random.Generator, size: int) -> tuple[float, float]:
    """Each axis 0.5..2 pixels per frame at size 64 (scaled with size), random sign: every
    shape moves, none crosses the canvas in a few frames."""
    scale = size / 64
    vx, vy = (on_grid(rng, 0.5 * scale, 2.0 * scale) * rng.choice((-1, 1)) for _ in range(2))
    return vx, vy


def random_shape(rng: np.random.Generator, size: int, top: float, bottom: float, moving: bool) -> Shape:
    """A shape from the prior, lying wholly within rows [top, bottom) and columns [0, size)."""
    low, high = radius_range(size)
    r = float(rng.integers(low, min(high, int((bottom - top) // 2)) + 1))
    vx, vy = random_velocity(rng, size) if moving else (0.0, 0.0)
    return Shape(kind=str(rng.choice(KINDS)), color=str(rng.choice(list(PALETTE))), r=r,
                 x=on_grid(rng, r, size - r), y=on_grid(rng, top + r, bottom - r), vx=vx, vy=vy)


@functools.lru_cache(maxsize=8)
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of every pixel centre, each (size, size); made once per size."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return y, x


def mask(shape: Shape, size: int) -> np.ndarray:
    """bool (size, size): the pixels whose centres the shape covers."""
    y, x = pixel_centres(size)
    dx, dy = x - shape.x, y - shape.y
    if shape.kind == "circle":
        return dx ** 2 + dy ** 2 <= shape.r ** 2
    if shape.kind == "square":
        return (np.abs(dx) <= shape.r) & (np.abs(dy) <= shape.r)
    # triangle: apex at the top of the bounding box, base along its bottom
    return (dy <= shape.r) & (np.abs(dx) <= (dy + shape.r) / 2)


def render(state: State, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the visible shapes over the background, in order."""
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = BACKGROUND
    for shape in state:
        if shape.visible:
            canvas[mask(shape, size)] = PALETTE[shape.color]
    return canvas


def bounce(position: float, velocity: float, low: float, high: float) -> tuple[float, float]:
    """Move one axis by one frame, reflecting off [low, high]; speeds are below the width of
    the free range, so one reflection is enough."""
    position += velocity
    if position < low:
        return 2 * low - position, -velocity
    if position > high:
        return 2 * high - position, -velocity
    return position, velocity


def move(shape: Shape, size: int) -> Shape:
    """The shape one frame later under constant velocity with elastic walls."""
    x, vx = bounce(shape.x, shape.vx, shape.r, size - shape.r)
    y, vy = bounce(shape.y, shape.vy, shape.r, size - shape.r)
    return dataclasses.replace(shape, x=x, y=y, vx=vx, vy=vy)


def step(state: State, size: int, rng: np.random.Generator, randomness: float) -> State:
    """The state one frame later: each shape's velocity is first redrawn from the prior with
    probability `randomness` (a kick), then every shape moves. At randomness 0 the rng is
    never used, so the future is a function of the present state alone."""
    kicked = []
    for shape in state:
        if randomness > 0 and rng.random() < randomness:
            vx, vy = random_velocity(rng, size)
            shape = dataclasses.replace(shape, vx=vx, vy=vy)
        kicked.append(move(shape, size))
    return tuple(kicked)


def simulate(state: State, frames: int, size: int, rng: np.random.Generator, randomness: float) -> list[State]:
    """`frames` states, the first being `state` itself."""
    states = [state]
    while len(states) < frames:
        states.append(step(states[-1], size, rng, randomness))
    return states


def to_dicts(state: State) -> list[dict]:
    return [dataclasses.asdict(s) for s in state]


def from_dicts(shapes: list[dict]) -> State:
    return tuple(Shape(**s) for s in shapes)

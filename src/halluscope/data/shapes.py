"""The state of a synthetic world and its pure functions: draw shapes from a prior, render a
state to pixels, advance a state by one frame.

Positions, sizes and velocities are multiples of 1/8 pixel. Sums and reflections of such
numbers are exact in floating point, so a trajectory replayed from any recorded state
(written to JSON and read back) is bit-identical to the original, and the JSON stays short;
squares of them are exact too, so every mask below is computed without rounding.
Shapes do not interact: each moves at constant velocity and bounces off the walls, and
later shapes are drawn over earlier ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from halluscope.errors import UserError

PALETTE = {
    "red": (230, 50, 50), "orange": (245, 140, 30), "yellow": (245, 215, 40), "green": (50, 180, 80),
    "cyan": (60, 200, 220), "blue": (50, 90, 230), "purple": (160, 70, 210), "white": (240, 240, 240),
}
BACKGROUND = (20, 20, 28)
KINDS = ("circle", "square", "triangle")
STEP = 1 / 8  # the grid every coordinate lives on


@dataclass(frozen=True)
class Prior:
    """What a shape's kind, colour and position are drawn from, each uniformly. The default
    is every world's; smaller ones (a few kinds and colours, a coarse lattice) make worlds
    whose posteriors can be enumerated by brute force in tests."""
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(PALETTE)
    step: float = STEP  # positions are the multiples of step (itself a multiple of STEP)

    def __post_init__(self) -> None:
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise UserError(f"kinds must be some of {', '.join(KINDS)}, got {list(self.kinds)}")
        if not self.colors or set(self.colors) - set(PALETTE):
            raise UserError(f"colors must be some of {', '.join(PALETTE)}, got {list(self.colors)}")
        if self.step <= 0 or not (self.step / STEP).is_integer():
            raise UserError(f"the position step must be a positive multiple of 1/8, got {self.step}")


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
    flip: bool = False  # drawn upside down (a mirror image across a horizontal line)


State = tuple[Shape, ...]


def on_grid(rng: np.random.Generator, lo: float, hi: float, step: float = STEP) -> float:
    """Uniform over the multiples of step in [lo, hi]."""
    return float(rng.integers(math.ceil(lo / step), math.floor(hi / step) + 1)) * step


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


def radii(size: int, top: float, bottom: float) -> range:
    """The radii a shape lying wholly within rows [top, bottom) is drawn from."""
    low, high = radius_range(size)
    return range(low, min(high, int((bottom - top) // 2)) + 1)


def random_shape(rng: np.random.Generator, size: int, top: float, bottom: float, moving: bool,
                 prior: Prior = Prior()) -> Shape:
    """A shape from the prior, lying wholly within rows [top, bottom) and columns [0, size)."""
    options = radii(size, top, bottom)
    r = float(rng.integers(options.start, options.stop))
    vx, vy = random_velocity(rng, size) if moving else (0.0, 0.0)
    return Shape(kind=str(rng.choice(prior.kinds)), color=str(rng.choice(prior.colors)), r=r,
                 x=on_grid(rng, r, size - r, prior.step), y=on_grid(rng, top + r, bottom - r, prior.step), vx=vx, vy=vy)



def masks(kind: np.ndarray, r: np.ndarray, x: np.ndarray, y: np.ndarray, flip: np.ndarray, rows: np.ndarray,
          width: int) -> np.ndarray:
    """bool (B, len(rows), width): for each of B shapes (kind as an index into KINDS, the
    rest as arrays of B), the pixels of `rows` x [0, width) whose centres it covers."""
    shape = (-1, 1, 1)
    kind, r, x, y, flip = (np.asarray(a).reshape(shape) for a in (kind, r, x, y, flip))
    dx = np.arange(width) + 0.5 - x
    dy = np.where(flip, -1, 1) * (np.asarray(rows).reshape(1, -1, 1) + 0.5 - y)
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    triangle = (dy <= r) & (np.abs(dx) <= (dy + r) / 2)  # apex at the top of the bounding box, base along its bottom
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


def mask(shape: Shape, size: int) -> np.ndarray:
    """bool (size, size): the pixels whose centres the shape covers."""
    return masks(KINDS.index(shape.kind), shape.r, shape.x, shape.y, shape.flip, np.arange(size), size)[0]


def render(state: State, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the visible shapes over the background, in order."""
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = BACKGROUND
    for shape in state:
        if shape.visible:
            canvas[mask(shape, size)] = PALETTE[shape.color]
    return canvas


def mirror(shape: Shape, size: int) -> Shape:
    """The shape's mirror image across the canvas's horizontal midline: its mask is the
    vertical flip of the original's, pixel for pixel."""
    return dataclasses.replace(shape, y=size - shape.y, flip=not shape.flip)


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
    """JSON-ready shapes; `flip` only where set, so files of worlds without mirror images
    stay as they were."""
    return [{k: v for k, v in dataclasses.asdict(s).items() if k != "flip" or v} for s in state]


def from_dicts(shapes: list[dict]) -> State:
    return tuple(Shape(**s) for s in shapes)

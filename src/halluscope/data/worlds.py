"""Synthetic worlds whose randomness is known, in memory and on disk.

Image world: 1-3 shapes lying wholly in the top half and 1-3 lying wholly in the bottom
half, drawn independently, so the bottom half is genuinely unpredictable from the top; with
`dependence` P, each bottom layer is instead, with probability P, the mirror image of a top
shape, so that P = 1 makes the bottom half a function of the top.
Video world: 2-4 shapes moving at constant velocity and bouncing off the walls; with
probability `randomness` per frame per shape a velocity is redrawn (a kick). At randomness
0 the whole clip follows from its first frame's state; at 1 every frame brings new kicks.

Every example is a pure function of (seed, index), and its meta dict records the state it
was rendered from (shapes, positions, velocities, per frame for clips). The oracle samplers
`ImageWorld.continue_from` and `VideoWorld.continue_from` draw continuations from the
world's posterior given the rendered context (halluscope.data.posterior, .tracking).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from halluscope.data.media import write_png, write_video
from halluscope.data.pixels import to_float
from halluscope.data.posterior import MAX_PROPOSALS, MAX_SHAPES, ImagePosterior
from halluscope.data.shapes import (
    BACKGROUND,
    KINDS,
    PALETTE,
    STEP,
    Prior,
    State,
    from_dicts,
    mirror,
    move,
    on_grid,
    random_shape,
    random_velocity,
    render,
    simulate,
    to_dicts,
)
from halluscope.data.tracking import MAX_PROPOSALS as CLIP_PROPOSALS
from halluscope.data.tracking import ClipPosterior
from halluscope.errors import UserError
from halluscope.io import atomic_path, write_json

VIOLATIONS = ("teleport", "vanish", "recolor")


def check_size(size: int) -> None:
    if size < 16:
        raise UserError(f"world size must be at least 16 pixels, got {size}")


def render_clip(states: list[State], size: int) -> torch.Tensor:
    """States, one per frame -> float (3, T, size, size) in [-1, 1]."""
    frames = to_float(np.stack([render(s, size) for s in states]))  # (T, 3, H, W)
    return rearrange(frames, "t c h w -> c t h w")


POSTERIORS_KEPT = 128


def kept_posterior(world, make, meta: dict, cut: int):
    """make(world, meta, cut), built once per example and cut among the world's last
    POSTERIORS_KEPT: a probe's oracle and its shuffled twin condition on the same contexts,
    and building is most of an oracle draw's cost. Posteriors are not changed by sampling."""
    kept = world.__dict__.setdefault("_posteriors", {})  # not a field: world.json and == ignore it
    key = (make.__name__, json.dumps(meta, sort_keys=True), cut)
    if key not in kept:
        if len(kept) >= POSTERIORS_KEPT:
            kept.pop(next(iter(kept)))  # the oldest
        kept[key] = make(world, meta, cut)
    return kept[key]


@dataclass
class ImageWorld:
    """1-3 shapes wholly in the top half, then three bottom layers: with probability
    `dependence` each is the mirror image of the top shape of the same rank (none if there is
    no such shape), otherwise the bottom half's own shape of that rank, of 1-3 drawn like the
    top's. At dependence 0 the halves are independent; at 1 the bottom half is the pixel-exact
    mirror of the top. `kinds`, `colors` and `step` narrow the shape prior (tests)."""
    size: int = 64
    seed: int = 0
    dependence: float = 0.0
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(PALETTE)
    step: float = STEP

    kind: ClassVar[str] = "image"
    folder: ClassVar[str] = "images"
    suffix: ClassVar[str] = ".png"

    def __post_init__(self) -> None:
        check_size(self.size)
        if not 0.0 <= self.dependence <= 1.0:
            raise UserError(f"dependence is a probability in [0, 1], got {self.dependence}")
        self.kinds, self.colors = tuple(self.kinds), tuple(self.colors)  # lists when read back from JSON
        Prior(self.kinds, self.colors, self.step)  # a UserError for a prior the world cannot draw from

    @property
    def prior(self) -> Prior:
        return Prior(self.kinds, self.colors, self.step)

    def halves(self) -> tuple[tuple[str, int, int], ...]:
        """(name, first row, end row) of the two halves."""
        return ("top", 0, self.size // 2), ("bottom", self.size // 2, self.size)

    def draw_half(self, rng: np.random.Generator, top: int, bottom: int) -> State:
        """The prior of one half: 1-MAX_SHAPES shapes, each wholly within rows [top, bottom)."""
        count = rng.integers(1, MAX_SHAPES + 1)
        return tuple(random_shape(rng, self.size, top, bottom, moving=False, prior=self.prior) for _ in range(count))

    def bottom_layers(self, top: State, own: State, mirrored: list[bool]) -> State:
        """The bottom half's layers, in drawing order: rank j is the mirror of top[j] where
        mirrored[j], else own[j] (absent where that shape does not exist)."""
        layers = [mirror(top[j], self.size) if m and j < len(top) else own[j] if not m and j < len(own) else None
                  for j, m in enumerate(mirrored)]
        return tuple(s for s in layers if s is not None)

    def example(self, i: int) -> tuple[torch.Tensor, dict]:
        """Image i: float (3, S, S) in [-1, 1], and its meta: the top shapes, the bottom
        layers, and which ranks are mirror images."""
        rng = np.random.default_rng([self.seed, i])
        (_, _, half), (_, _, end) = self.halves()
        top, own = self.draw_half(rng, 0, half), self.draw_half(rng, half, end)
        mirrored = [bool(c) for c in rng.random(MAX_SHAPES) < self.dependence]  # last: dependence 0 is the old world
        meta = {"kind": self.kind, "index": i, "seed": self.seed, "size": self.size, "top": to_dicts(top),
                "bottom": to_dicts(self.bottom_layers(top, own, mirrored)), "mirrored": mirrored}
        return self.render(meta), meta

    def render(self, meta: dict) -> torch.Tensor:
        """float (3, S, S): the top shapes, then the bottom ones over them."""
        state = sum((from_dicts(meta[name]) for name, _, _ in self.halves()), ())
        return to_float(render(state, self.size)[None])[0]

    def continue_from(self, meta: dict, row: int, n: int, seed: int,
                      max_proposals: int = MAX_PROPOSALS) -> tuple[torch.Tensor, dict]:
        """n images (n, 3, S, S) drawn from the exact posterior of the world given rows
        [0, row) of `meta`'s image (so those rows are the example's own), and the sampler's
        statistics: {"proposals", "accepted", "acceptance"}. See halluscope.data.posterior."""
        if not 0 <= row <= self.size:
            raise ValueError(f"row must be in [0, {self.size}], got {row}")
        posterior = kept_posterior(self, ImagePosterior, meta, row)
        states, stats = posterior.sample(n, np.random.default_rng(seed), max_proposals)
        return torch.stack([to_float(render(s, self.size)[None])[0] for s in states]), stats

    def write(self, x: torch.Tensor, path: Path) -> None:
        write_png(x, path)


@dataclass
class VideoWorld:
    size: int = 64
    frames: int = 16
    randomness: float = 0.0
    seed: int = 0
    fps: float = 16

    kind: ClassVar[str] = "video"
    folder: ClassVar[str] = "clips"
    suffix: ClassVar[str] = ".mp4"

    def __post_init__(self) -> None:
        check_size(self.size)
        if self.frames < 2:
            raise UserError(f"a world clip needs at least 2 frames, got {self.frames}")
        if not 0.0 <= self.randomness <= 1.0:
            raise UserError(f"randomness is a probability in [0, 1], got {self.randomness}")
        if self.fps <= 0:
            raise UserError(f"fps must be positive, got {self.fps}")

    def first_state(self, rng: np.random.Generator) -> State:
        """The prior of a clip's first frame: 2-4 moving shapes anywhere on the canvas."""
        return tuple(random_shape(rng, self.size, 0, self.size, moving=True) for _ in range(rng.integers(2, 5)))

    def example(self, i: int) -> tuple[torch.Tensor, dict]:
        """Clip i: float (3, T, S, S) in [-1, 1], and its meta, whose "states" holds every
        shape's position and velocity at every frame."""
        rng = np.random.default_rng([self.seed, i])
        states = simulate(self.first_state(rng), self.frames, self.size, rng, self.randomness)
        meta = {"kind": self.kind, "index": i, "seed": self.seed, "size": self.size, "frames": self.frames,
                "fps": self.fps, "randomness": self.randomness, "violation": None,
                "states": [to_dicts(s) for s in states]}
        return render_clip(states, self.size), meta

    def violation(self, i: int) -> tuple[torch.Tensor, dict]:
        """Clip i's twin whose second half breaks physics: from a frame in [T/2, T) one shape
        teleports (then moves on from there), vanishes, or changes color. meta["violation"]
        says which, where and when; meta["states"] is what is shown. The break is redrawn
        (deterministically) until it changes the picture, e.g. not a vanish behind a shape."""
        _, meta = self.example(i)
        states = [from_dicts(s) for s in meta["states"]]
        rng = np.random.default_rng([self.seed, i, 1])  # a stream of its own: example(i) stays as it is
        for _ in range(16):
            broken, violation = break_physics(states, self.size, rng)
            frame = violation["frame"]
            if not np.array_equal(render(broken[frame], self.size), render(states[frame], self.size)):
                break
        meta = {**meta, "violation": violation, "states": [to_dicts(s) for s in broken]}
        return render_clip(broken, self.size), meta

    def control(self, meta: dict, violation: dict) -> tuple[torch.Tensor, dict]:
        """The lawful counterpart of a violation: clip `meta`'s twin where the shape that
        `violation` (its violating twin's meta["violation"]) breaks gets, on the step into the
        same frame, a kick (a new velocity drawn as the world draws its kicks) and moves on under
        the world's dynamics. Lawful wherever the world's randomness is above 0; at 0 a kick is
        itself a break. meta["control"] says what was done; redrawn (deterministically) until
        it changes the picture."""
        states = [from_dicts(s) for s in meta["states"]]
        frame, k = violation["frame"], violation["shape"]
        rng = np.random.default_rng([self.seed, meta["index"], 2])  # a stream of its own, beside violation(i)'s
        for _ in range(16):
            kicked, control = kick(states, frame, k, self.size, rng)
            if any(not np.array_equal(render(kicked[t], self.size), render(states[t], self.size))
                   for t in range(frame, self.frames)):
                break
        return render_clip(kicked, self.size), {**meta, "control": control, "states": [to_dicts(s) for s in kicked]}

    def render(self, meta: dict) -> torch.Tensor:
        """float (3, T, S, S) from meta["states"]."""
        return render_clip([from_dicts(s) for s in meta["states"]], self.size)

    def continue_from(self, meta: dict, frame: int, n: int, seed: int,
                      max_proposals: int = CLIP_PROPOSALS) -> tuple[torch.Tensor, dict]:
        """n continuations (n, 3, T - frame, S, S) of the clip given its first `frame` frames
        (the oracle sampler), and the sampler's statistics. Each draws the shapes' states over
        those frames from their posterior given the rendered frames and the shapes' recorded
        kinds, colours, radii and order (halluscope.data.tracking), then runs the world's own
        dynamics on from the last. Frame 0 draws whole clips from the prior. The statistics
        say how often the drawn state at frame - 1 differs from the recorded one."""
        if not 0 <= frame <= self.frames:
            raise ValueError(f"frame must be in [0, {self.frames}], got {frame}")
        rng = np.random.default_rng(seed)
        stats = {"proposals": 0, "accepted": n, "acceptance": 1.0, "state_differs": None}
        if frame == self.frames:  # nothing to continue
            return torch.empty(n, 3, 0, self.size, self.size), stats
        if frame == 0:  # nothing to condition on
            clips = [simulate(self.first_state(rng), self.frames, self.size, rng, self.randomness) for _ in range(n)]
        else:
            draws, stats = kept_posterior(self, ClipPosterior, meta, frame).sample(n, rng, max_proposals)
            clips = [simulate(d[-1], self.frames - frame + 1, self.size, rng, self.randomness)[1:] for d in draws]
        return torch.stack([render_clip(states, self.size) for states in clips]), stats

    def write(self, x: torch.Tensor, path: Path) -> None:
        write_video(x, path, self.fps, lossless=True)


def break_physics(states: list[State], size: int, rng: np.random.Generator) -> tuple[list[State], dict]:
    """A copy of `states` where, from a random frame of the second half on, a random shape
    teleports, vanishes or changes color; and the record of what was done."""
    frames = len(states)
    frame, k = int(rng.integers(frames // 2, frames)), int(rng.integers(len(states[0])))
    kind = str(rng.choice(VIOLATIONS))
    shape = states[frame][k]
    if kind == "teleport":  # to the farthest of a few random spots, then on at its old velocity
        spots = [(on_grid(rng, shape.r, size - shape.r), on_grid(rng, shape.r, size - shape.r)) for _ in range(8)]
        x, y = max(spots, key=lambda p: (p[0] - shape.x) ** 2 + (p[1] - shape.y) ** 2)
        after = [s[0] for s in simulate((dataclasses.replace(shape, x=x, y=y),), frames - frame, size, rng, 0.0)]
        details = {"to": [x, y]}
    elif kind == "vanish":
        after = [dataclasses.replace(s[k], visible=False) for s in states[frame:]]
        details = {}
    else:
        color = str(rng.choice([c for c in PALETTE if c != shape.color]))
        after = [dataclasses.replace(s[k], color=color) for s in states[frame:]]
        details = {"color": color}
    broken = states[:frame] + [s[:k] + (a,) + s[k + 1:] for s, a in zip(states[frame:], after)]
    return broken, {"kind": kind, "frame": frame, "shape": k, **details}


def kick(states: list[State], frame: int, k: int, size: int, rng: np.random.Generator) -> tuple[list[State], dict]:
    """A copy of `states` where shape k's velocity is redrawn from the prior on the step into
    `frame` (frame >= 1), after which it moves on with no further kick; and the record of it."""
    vx, vy = random_velocity(rng, size)
    start = move(dataclasses.replace(states[frame - 1][k], vx=vx, vy=vy), size)
    after = [s[0] for s in simulate((start,), len(states) - frame, size, rng, 0.0)]
    kicked = states[:frame] + [s[:k] + (a,) + s[k + 1:] for s, a in zip(states[frame:], after)]
    return kicked, {"kind": "kick", "frame": frame, "shape": k, "velocity": [vx, vy]}


def entries(world: ImageWorld | VideoWorld, i: int, violations: bool) -> Iterator[tuple[str, torch.Tensor, dict]]:
    """(file name relative to the world folder, pixels, meta) of example i and its twin."""
    name = f"{world.folder}/{i:06d}{world.suffix}"
    x, meta = world.example(i)
    yield name, x, meta
    if violations:
        x, meta = world.violation(i)
        yield f"violations/{i:06d}{world.suffix}", x, {**meta, "twin": name}


def write_world(world: ImageWorld | VideoWorld, out: str | os.PathLike, n: int, violations: bool = False) -> list[Path]:
    """Write examples 0..n-1 of `world` (and with `violations`, each clip's physics-breaking
    twin) into the new folder `out`, and return the media files written:

        images/000000.png ... or clips/000000.mp4 ... (+ violations/000000.mp4 ...)
        examples.jsonl   one line per file: {"file": ..., **meta}
        world.json       the world's parameters, written last: a folder with one is complete

    A non-empty `out` is refused: files left from an earlier run would be read as data."""
    out = Path(out)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if violations and world.kind != "video":
        raise UserError("violations exist for video worlds only")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} is not empty; choose a new one or remove it")
    written = []
    with atomic_path(out / "examples.jsonl") as tmp, open(tmp, "w") as lines:
        for i in tqdm(range(n), desc=f"writing {out}", unit=world.kind):
            for name, x, meta in entries(world, i, violations):
                world.write(x, out / name)
                lines.write(json.dumps({"file": name, **meta}) + "\n")
                written.append(out / name)
    write_json(out / "world.json", {"kind": world.kind, **dataclasses.asdict(world), "n": n,
                                    "violations": violations, "files": len(written),
                                    "palette": PALETTE, "background": BACKGROUND})
    return written

"""Synthetic worlds whose randomness is known, in memory and on disk.

Image world: 1-3 shapes lying wholly in the top half and, drawn independently, 1-3 lying
wholly in the bottom half, so the bottom half is genuinely unpredictable from the top.
Video world: 2-4 shapes moving at constant velocity and bouncing off the walls; with
probability `randomness` per frame per shape a velocity is redrawn (a kick). At randomness
0 the whole clip follows from its first frame's state; at 1 every frame brings new kicks.

Every example is a pure function of (seed, index), and its meta dict records the state it
was rendered from (shapes, positions, velocities, per frame for clips), so that the world's
own generative process can serve as an oracle sampler: `ImageWorld.resample_below` and
`VideoWorld.continue_from` draw continuations from the true distribution given a context.
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
from halluscope.data.shapes import (
    BACKGROUND,
    PALETTE,
    State,
    from_dicts,
    on_grid,
    random_shape,
    render,
    simulate,
    to_dicts,
)
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


@dataclass
class ImageWorld:
    size: int = 64
    seed: int = 0

    kind: ClassVar[str] = "image"
    folder: ClassVar[str] = "images"
    suffix: ClassVar[str] = ".png"

    def __post_init__(self) -> None:
        check_size(self.size)

    def halves(self) -> tuple[tuple[str, int, int], ...]:
        """(name, first row, end row) of the two independent halves."""
        return ("top", 0, self.size // 2), ("bottom", self.size // 2, self.size)

    def draw_half(self, rng: np.random.Generator, top: int, bottom: int) -> State:
        """The prior of one half: 1-3 shapes, each wholly within rows [top, bottom)."""
        return tuple(random_shape(rng, self.size, top, bottom, moving=False) for _ in range(rng.integers(1, 4)))

    def example(self, i: int) -> tuple[torch.Tensor, dict]:
        """Image i: float (3, S, S) in [-1, 1], and its meta (the shapes of each half)."""
        rng = np.random.default_rng([self.seed, i])
        meta = {"kind": self.kind, "index": i, "seed": self.seed, "size": self.size}
        meta.update({name: to_dicts(self.draw_half(rng, top, bottom)) for name, top, bottom in self.halves()})
        return self.render(meta), meta

    def render(self, meta: dict) -> torch.Tensor:
        """float (3, S, S): the top shapes, then the bottom ones over them."""
        state = sum((from_dicts(meta[name]) for name, _, _ in self.halves()), ())
        return to_float(render(state, self.size)[None])[0]

    def resample_below(self, meta: dict, row: int, n: int, seed: int) -> torch.Tensor:
        """n images (n, 3, S, S) that keep rows [0, row) of `meta`'s image and draw the rest
        from the world's prior: the oracle continuation of an image given its top rows.

        A half lying wholly at or below `row` is redrawn whole (count and shapes), which is
        exact because the halves are independent: at row = S/2 these are draws from the
        true distribution of the bottom half given the top. Inside a half that `row` cuts,
        the shapes lying wholly below `row` are redrawn within rows [row, end of half) and
        the others kept, an approximation that keeps their number fixed."""
        rng = np.random.default_rng(seed)
        images = []
        for _ in range(n):
            redrawn = dict(meta)
            for name, top, bottom in self.halves():
                if top >= row:
                    shapes = self.draw_half(rng, top, bottom)
                else:
                    shapes = tuple(random_shape(rng, self.size, row, bottom, moving=False) if s.y - s.r >= row else s
                                   for s in from_dicts(meta[name]))
                redrawn[name] = to_dicts(shapes)
            images.append(self.render(redrawn))
        return torch.stack(images)

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

    def render(self, meta: dict) -> torch.Tensor:
        """float (3, T, S, S) from meta["states"]."""
        return render_clip([from_dicts(s) for s in meta["states"]], self.size)

    def continue_from(self, meta: dict, frame: int, n: int, seed: int) -> torch.Tensor:
        """n continuations (n, 3, T - frame, S, S) of the clip given its first `frame`
        frames: the oracle sampler. Each runs the world's own dynamics on from the recorded
        state (positions and velocities) of frame `frame - 1`, which the context shows up to
        pixel rounding. At randomness 0 every continuation equals the true one; frame 0
        draws whole clips from the prior."""
        if not 0 <= frame <= self.frames:
            raise ValueError(f"frame must be in [0, {self.frames}], got {frame}")
        rng = np.random.default_rng(seed)
        clips = []
        for _ in range(n):
            if frame == 0:
                states = simulate(self.first_state(rng), self.frames, self.size, rng, self.randomness)
            else:
                last = from_dicts(meta["states"][frame - 1])
                states = simulate(last, self.frames - frame + 1, self.size, rng, self.randomness)[1:]
            clips.append(render_clip(states, self.size) if states else torch.empty(3, 0, self.size, self.size))
        return torch.stack(clips)

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

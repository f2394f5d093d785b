"""Known answers: what a world's own definition says exactly about a continuation given a
context, in bits, for the probe report to print beside a model's figures.

Clips: given the state (positions, velocities) at the last context frame, the continuation's
state is driven by the velocity each shape keeps or redraws at each later frame: with
probability 1 - R + R/m its current one, R/m each of the m - 1 others (m velocities in the
prior). Those draws' entropy, shapes × frames × H(keep-or-redraw), is the conditional
entropy of the continuation's state trajectory given that state (less only where a shape
starting on a wall could reach one place two ways). It rises strictly with R, from 0 at R = 0.
What it does not count: the uncertainty the context leaves about the state itself, and what
rendering to pixels removes.

Images: at the midline, the halves' mutual information is 0 at dependence 0 (they are drawn
independently) and the bottom's conditional entropy is 0 at dependence 1 (it is the top's
mirror image); with no context, the mutual information is 0, and with the whole image, the
conditional entropy is 0. The other cases involve the entropy of rendered pixels under
occlusion, which has no closed form here: None, with the reason.
"""

from __future__ import annotations

import math

from halluscope.data.tracking import speeds
from halluscope.data.worlds import ImageWorld, VideoWorld

MEAN_SHAPES = 3  # clips have 2-4 shapes, uniformly


def kick_entropy(size: int, randomness: float) -> float:
    """Bits per shape per frame: the entropy of the velocity a shape moves with next, given
    the one it has, in a world of this size and randomness."""
    m = len(speeds(size)) ** 2
    keep, other = 1 - randomness + randomness / m, randomness / m
    return -sum(p * math.log2(p) * count for p, count in ((keep, 1), (other, m - 1)) if p > 0)


def known_answer(world: ImageWorld | VideoWorld, context: int, shapes: int | None = None) -> dict:
    """{"conditional_entropy_bits", "mutual_information_bits", "note"} for a context of
    `context` leading rows (images) or frames (clips); a number where the world's definition
    gives it exactly, else None. `shapes`: a clip's shape count (default the mean, 3)."""
    if isinstance(world, VideoWorld):
        if not 0 <= context <= world.frames:
            raise ValueError(f"context must be in [0, {world.frames}] frames, got {context}")
        if context == 0:
            return answer(None, 0.0, "no context: the continuation is the whole clip, drawn from the prior")
        k = MEAN_SHAPES if shapes is None else shapes
        bits = k * (world.frames - context) * kick_entropy(world.size, world.randomness)
        return answer(bits, None, f"entropy of the velocities {k} shapes move with over the {world.frames - context} "
                                  "frames after the context, given the state at its last frame")
    if not 0 <= context <= world.size:
        raise ValueError(f"context must be in [0, {world.size}] rows, got {context}")
    if context == 0:
        return answer(None, 0.0, "no context")
    if context == world.size:
        return answer(0.0, None, "nothing hidden")
    if 2 * context == world.size and world.dependence == 0:
        return answer(None, 0.0, "the halves are drawn independently")
    if 2 * context == world.size and world.dependence == 1:
        return answer(0.0, None, "the bottom half is the mirror image of the top")
    return answer(None, None, "not computed exactly: the entropy of rendered pixels under occlusion has no closed form")


def answer(entropy: float | None, information: float | None, note: str) -> dict:
    return {"conditional_entropy_bits": entropy, "mutual_information_bits": information, "note": note}

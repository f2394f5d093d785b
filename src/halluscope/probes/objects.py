"""Objects in the continuations of a synthetic world, independent of the tokenizer: each
decoded continuation is segmented by the world's palette, its objects are matched to the
truth's, and the objects it invented, dropped and recoloured are counted, with the position
error of those it kept. The world's pictures are flat shapes of palette colours on one
background colour (data/shapes.py), so segmentation needs no learning.

Segmentation, per image or clip frame: a pixel is foreground when it is farther from the
background colour than half the distance from the background to the closest palette colour
(RGB distance > FOREGROUND); each 8-connected foreground region of at least MIN_AREA pixels is
an object, of the palette colour most of its pixels are nearest to, at its centroid. Touching
shapes are one object, in the truth and in a sample alike.

Matching, per frame: the distance between two objects is ‖centroid a − centroid b‖ / c + [colours
differ], c the world's largest shape radius; the distance between two object sets A and B is
GOSPA (Rahmathullah, García-Fernández & Svensson 2017; p = 1, α = 2, cut-off 2):

    d(A, B) = min over assignments π of Σ_i min(d(a_i, b_π(i)), 2) + | |A| − |B| |

a metric on sets of objects: an unmatched object costs 1, a pair at distance 2 or more is no
match. A matched pair is the same object (same colour within 2c pixels, or another colour
within c); the sample's unmatched objects are invented, the truth's dropped, matched pairs of
different colours recoloured. A clip's figures are the mean over its frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, optimize

from halluscope.data.shapes import BACKGROUND, PALETTE, radius_range
from halluscope.probes import calibration

COLOURS = np.asarray(list(PALETTE.values()), dtype=np.float64)  # (K, 3) RGB, 0..255
BACK = np.asarray(BACKGROUND, dtype=np.float64)
FOREGROUND = 0.5 * float(np.linalg.norm(COLOURS - BACK, axis=1).min())  # halfway to the closest colour
MIN_AREA = 4  # pixels: smaller specks (a decoder's noise) are no object
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = True  # 8-connected within a frame, never across frames


def planes(x: torch.Tensor, clip: bool) -> np.ndarray:
    """Pixels in [-1, 1], (..., 3, H, W) or clips (..., 3, T, H, W) -> RGB 0..255 frames
    (P, H, W, 3), leading axes first."""
    x = x.detach().float().cpu()
    if clip:  # the frame axis joins the leading ones
        x = x.movedim(-4, -3)
    return ((x.reshape(-1, 3, *x.shape[-2:]) + 1) * 127.5).permute(0, 2, 3, 1).numpy().astype(np.float64)


def is_foreground(rgb: np.ndarray) -> np.ndarray:
    """bool (...): the pixels (..., 3) that belong to a shape."""
    return ((rgb - BACK) ** 2).sum(-1) > FOREGROUND ** 2


def segment(frames: np.ndarray) -> list[np.ndarray]:
    """The objects of each frame (P, H, W, 3): per frame an array (n, 4) of (colour index,
    centroid row, centroid column, area), centroids in pixels from the frame's top-left corner.
    An object is an 8-connected region of foreground pixels; its colour the palette colour
    most of its pixels are nearest to (a blurred edge's intermediate colours do not split it)."""
    shape = is_foreground(frames)
    labels, count = ndimage.label(shape, IN_PLANE)
    if count == 0:
        return [np.zeros((0, 4)) for _ in frames]
    flat = labels[shape]  # the foreground pixels' objects, 1..count
    nearest = ((frames[shape][:, None, :] - COLOURS) ** 2).sum(-1).argmin(1)  # their nearest palette colour
    area = np.bincount(flat, minlength=count + 1)[1:]
    plane, row, col = (np.bincount(flat, weights=v[shape], minlength=count + 1)[1:] / area
                       for v in np.indices(labels.shape))
    votes = np.bincount(flat * len(COLOURS) + nearest, minlength=(count + 1) * len(COLOURS))
    colour = votes.reshape(count + 1, len(COLOURS))[1:].argmax(1)
    objects = np.stack([colour, plane, row + 0.5, col + 0.5, area], 1)[area >= MIN_AREA]
    return [objects[objects[:, 1] == p][:, [0, 2, 3, 4]] for p in range(len(frames))]


@dataclass
class Match:
    distance: float  # GOSPA
    invented: int
    dropped: int
    recoloured: int
    errors: np.ndarray  # centroid distance (pixels) of each matched pair


def match(truth: np.ndarray, sample: np.ndarray, scale: float) -> Match:
    """Match a sample's objects (n, 4) to the truth's (m, 4) at position scale `scale` pixels."""
    m, n = len(truth), len(sample)
    if m == 0 or n == 0:
        return Match(float(m + n), n, m, 0, np.zeros(0))
    position = np.linalg.norm(truth[:, None, 1:3] - sample[None, :, 1:3], axis=-1)
    recolour = truth[:, None, 0] != sample[None, :, 0]
    cost = np.minimum(position / scale + recolour, 2.0)
    rows, cols = optimize.linear_sum_assignment(cost)
    distance = float(cost[rows, cols].sum()) + abs(m - n)
    kept = cost[rows, cols] < 2  # a pair at the cut-off costs what two unmatched objects do: no match
    rows, cols = rows[kept], cols[kept]
    return Match(distance, n - len(rows), m - len(rows), int(recolour[rows, cols].sum()), position[rows, cols])


def compare(truth: list[np.ndarray], sample: list[np.ndarray], scale: float) -> dict:
    """Frame by frame: the mean GOSPA distance and counts per frame, and the pooled position
    errors, of a sample's objects against the truth's."""
    matches = [match(t, s, scale) for t, s in zip(truth, sample)]
    return {"distance": float(np.mean([m.distance for m in matches])),
            "invented": float(np.mean([m.invented for m in matches])),
            "dropped": float(np.mean([m.dropped for m in matches])),
            "recoloured": float(np.mean([m.recoloured for m in matches])),
            "errors": np.concatenate([m.errors for m in matches])}


def summary(comparisons: list[dict], prefix: str) -> dict[str, float]:
    """Means over samples of the counts; the position error over every matched pair."""
    errors = np.concatenate([c["errors"] for c in comparisons])
    out = {f"{prefix}_{k}": float(np.mean([c[k] for c in comparisons])) for k in ("invented", "dropped", "recoloured")}
    out[f"{prefix}_position_error"] = float(errors.mean()) if len(errors) else float("nan")
    return out


@dataclass
class Segmented:
    """The objects of one example's truth, its N samples and its raw pixels, frame by frame,
    matched once: what the object figures and the detection scores (detection.py) both read."""
    truth: list[np.ndarray]  # per frame (n, 4): the reconstruction's objects
    samples: list[list[np.ndarray]]  # per sample, per frame
    raw: list[np.ndarray]  # per frame: the raw truth's objects
    scale: float  # pixels: the world's largest shape radius
    versus_truth: list[dict]  # compare(truth, sample) of each sample
    distances: np.ndarray  # (N + 1, N + 1) GOSPA per frame among the truth (row 0) and the samples


def segment_members(truth: torch.Tensor, samples: torch.Tensor, raw: torch.Tensor) -> Segmented:
    """Segment and match the decoded truth tokens `truth` (3, ...), N decoded samples (N, 3, ...)
    and the raw truth `raw` (3, ...)."""
    members = torch.cat([truth[None], samples, raw[None]])  # truth, N samples, raw
    frames = planes(members, clip=members.dim() == 5)
    per = len(frames) // len(members)
    found = segment(frames)
    found = [found[i * per:(i + 1) * per] for i in range(len(members))]
    scale = float(radius_range(frames.shape[2])[1])
    ensemble = found[:-1]
    d = np.zeros((len(ensemble), len(ensemble)))
    for i in range(len(ensemble)):
        for j in range(i + 1, len(ensemble)):
            d[i, j] = d[j, i] = compare(ensemble[i], ensemble[j], scale)["distance"]
    return Segmented(found[0], found[1:-1], found[-1], scale, [compare(found[0], s, scale) for s in found[1:-1]], d)


def object_metrics(seg: Segmented, rng: np.random.Generator) -> dict[str, float]:
    """Object figures of N decoded continuations against the decoded truth tokens (the
    reconstruction, so that the tokenizer's own errors are not the sampler's), and of that
    reconstruction against the raw truth (the tokenizer's floor):

    objects_{invented,dropped,recoloured}   mean over samples of the count per frame
    objects_position_error                  mean centroid distance (pixels) over matched pairs
    objects_truth                           objects per frame in the truth (raw pixels)
    tokenizer_objects_*                     the same four of the reconstruction against the raw truth
    skill_objects, spread_objects, energy_objects, rank_objects   calibration.py with d = GOSPA"""
    out = summary(seg.versus_truth, "objects")
    out.update(summary([compare(seg.raw, seg.truth, seg.scale)], "tokenizer_objects"))
    out["objects_truth"] = float(np.mean([len(o) for o in seg.raw]))
    out.update(calibration.ensemble_from_distances(torch.from_numpy(seg.distances), "objects", rng))
    return out


def foreground_pixels(x: torch.Tensor, clip: bool) -> torch.Tensor:
    """bool (H, W) or clips (T, H, W): the pixels of x ((3, H, W) or (3, T, H, W) in [-1, 1])
    that belong to a shape. For a world example, rendered exactly from its recorded state, this
    is the state's own answer."""
    mask = torch.from_numpy(is_foreground(planes(x, clip)))
    return mask if clip else mask[0]


def foreground_tokens(pixels: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """bool (*grid): the token positions whose patch of the truth `pixels` ((3, H, W) or
    (3, T, H, W)) holds any shape pixel."""
    shape = foreground_pixels(pixels, clip=len(grid) == 3)
    if len(grid) == 2:
        h, w = grid
        return shape.view(h, shape.shape[0] // h, w, -1).any(3).any(1)
    t, h, w = grid
    return shape.view(t, shape.shape[0] // t, h, shape.shape[1] // h, w, -1).any(5).any(3).any(1)

"""`halluscope world image|video`: write a synthetic world to a folder of PNG or MP4 files
that ImageFolder / VideoFolder read back, with a JSON line describing each example."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from halluscope.data.worlds import ImageWorld, VideoWorld, write_world


def register(subparsers: argparse._SubParsersAction) -> None:
    world = subparsers.add_parser("world", help="write a synthetic world (images or clips with known randomness)",
                                  description=__doc__)
    kinds = world.add_subparsers(dest="world", metavar="KIND", required=True)
    image = kinds.add_parser("image", help="shapes in each half, the bottom half independent of the top or "
                                            "mirroring it (PNG)")
    video = kinds.add_parser("video", help="shapes bouncing off the walls, with random kicks (MP4)")
    for parser in (image, video):
        parser.add_argument("--out", required=True, help="new or empty folder to write into")
        parser.add_argument("--n", type=int, default=8, help="number of examples (default 8)")
        parser.add_argument("--size", type=int, default=64, help="width and height in pixels (default 64)")
        parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default 0)")
    image.add_argument("--dependence", type=float, default=0.0,
                       help="probability that each bottom-half layer is the mirror image of a top-half shape, "
                            "in [0, 1] (default 0: the halves are independent; 1: the bottom half is a function "
                            "of the top)")
    video.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    video.add_argument("--fps", type=float, default=16, help="frame rate written into the files (default 16)")
    video.add_argument("--randomness", type=float, default=0.0,
                       help="probability per frame per shape of a random velocity kick, in [0, 1] (default 0: "
                            "the second half of a clip is fixed by the first)")
    video.add_argument("--violations", action="store_true",
                       help="also write, for each clip, a twin whose second half breaks physics (violations/)")
    image.set_defaults(func=run_image)
    video.set_defaults(func=run_video)


def run_image(args: argparse.Namespace) -> int:
    world = ImageWorld(size=args.size, seed=args.seed, dependence=args.dependence)
    return report(write_world(world, args.out, args.n), args.out)


def run_video(args: argparse.Namespace) -> int:
    world = VideoWorld(size=args.size, frames=args.frames, randomness=args.randomness, seed=args.seed, fps=args.fps)
    return report(write_world(world, args.out, args.n, violations=args.violations), args.out)


def report(files: list[Path], out: str) -> int:
    """Say where the files went, e.g. "wrote 4 clips, 4 violations to D (...)"."""
    counts = Counter(path.parent.name for path in files)
    written = ", ".join(f"{n} {folder}" for folder, n in counts.items())
    print(f"wrote {written} to {out} (each described in examples.jsonl; parameters in world.json)")
    return 0

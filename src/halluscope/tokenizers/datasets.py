"""The data folders a tokenizer reads: images or clips at its input size."""

from __future__ import annotations

import os

from halluscope.data import ImageFolder, VideoFolder


def open_dataset(root: str | os.PathLike, spec) -> ImageFolder | VideoFolder:
    """The data folder `root` at the input size of `spec` (a tokenizer or its config)."""
    if spec.kind == "image":
        return ImageFolder(root, spec.resolution)
    return VideoFolder(root, spec.resolution, spec.frames)


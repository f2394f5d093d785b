"""Writing pixels to files: PNG images, MP4 clips (PyAV), animated GIFs, and grids of images
or clips for looking at many samples at once. Every file is written to a temporary name and
renamed into place.

Two MP4 flavours. Data (`lossless=True`, the worlds' clips): H.264 at qp 0 in 4:4:4, so the
only loss is the RGB <-> YUV rounding (at most 2 levels of 255 per channel, measured on the
worlds' saturated colors); such files play in ffmpeg-based tools, not in browsers. For
looking (`lossless=False`, sample grids): H.264 4:2:0 at crf 18, which every browser plays.
Without libx264 in the PyAV build, MPEG-4 part 2 is used, at its best quantizer.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from halluscope.data.pixels import to_uint8
from halluscope.errors import UserError
from halluscope.io import atomic_path


def grid(x: torch.Tensor, nrow: int, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Items (N, 3, H, W) or clips (N, 3, T, H, W) laid out `nrow` to a row with `pad` pixels
    of `pad_value` around each: (3, H', W') or (3, T, H', W')."""
    n = x.shape[0]
    cols = max(1, min(nrow, n))
    x = F.pad(x, (pad, pad, pad, pad), value=pad_value)
    blank = x.new_full((math.ceil(n / cols) * cols - n, *x.shape[1:]), pad_value)  # fill the last row
    return rearrange(torch.cat([x, blank]), "(r c) ch ... h w -> ch ... (r h) (c w)", c=cols)


def write_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Float (3, H, W) in [-1, 1] -> PNG file."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    return Path(path)


def write_gif(clip: torch.Tensor, path: str | os.PathLike, fps: float) -> Path:
    """Float (3, T, H, W) in [-1, 1] -> looping animated GIF."""
    frames = [Image.fromarray(f) for f in to_uint8(rearrange(clip, "c t h w -> t c h w"))]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=round(1000 / fps), loop=0)
    return Path(path)


def encoder(lossless: bool) -> tuple[str, str, dict[str, str]]:
    """(codec, pixel format, codec options) for the two MP4 flavours (see the module doc)."""
    if "libx264" not in av.codecs_available:
        return "mpeg4", "yuv420p", {"qscale": "1"}
    if lossless:
        return "libx264", "yuv444p", {"qp": "0"}
    return "libx264", "yuv420p", {"crf": "18"}


def write_video(clip: torch.Tensor, path: str | os.PathLike, fps: float, lossless: bool = True) -> Path:
    """Float (3, T, H, W) in [-1, 1] -> MP4 at `fps`, frame t at time t / fps."""
    frames = to_uint8(rearrange(clip, "c t h w -> t c h w"))  # (T, H, W, 3)
    codec, pix_fmt, codec_options = encoder(lossless)
    if pix_fmt == "yuv420p":  # chroma is halved, so both sides must be even: repeat the last row/column
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        # faststart (the index before the data) lets browsers play while loading; data files
        # keep the index at the end, so a truncated copy fails loudly instead of half-reading.
        options = {} if lossless else {"movflags": "faststart"}
        with av.open(str(tmp), "w", format="mp4", options=options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt, stream.options = pix_fmt, codec_options
            for t, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = t
                container.mux(stream.encode(frame))
            container.mux(stream.encode())  # flush the encoder's delayed frames
    return Path(path)


def write_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Float (N, 3, H, W) in [-1, 1] -> one PNG, `nrow` images to a row."""
    return write_png(grid(images, nrow), path)


def write_clip_grid(clips: torch.Tensor, path: str | os.PathLike, nrow: int = 8, fps: float = 8) -> Path:
    """Float (N, 3, T, H, W) in [-1, 1] -> one animated grid, `nrow` clips to a row: a GIF,
    or a browser-playable MP4 when `path` ends in .mp4."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(grid(clips, nrow), path, fps)
    if suffix == ".mp4":
        return write_video(grid(clips, nrow), path, fps, lossless=False)
    raise UserError(f"cannot write a clip grid to {path}: use a .gif or .mp4 name")

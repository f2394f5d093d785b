"""Image files: one image -> float (3, R, R) in [-1, 1], whatever its mode.

Transparency is composited onto white, because the color under a fully transparent pixel
is arbitrary (often black, sometimes leftovers of an edit) and white is what a viewer
shows. 16-bit grayscale is scaled to 8 bits (v * 255 / 65535, rounded), not clipped, which
would turn almost every pixel white. EXIF orientation is applied, so phone pictures come
out upright. A file's content decides how it is decoded, not its suffix: a JPEG named .png
is read; a text file named .png is skipped. An animated GIF gives its first frame.

Only the formats the suffixes promise are ever parsed (FORMATS): an EPS file named .png would
otherwise make Pillow run Ghostscript on it, and TIFF, PSD or FITS parsers would see files
nobody meant them to. Images over MAX_PIXELS are refused from their header, before a pixel is
decoded; JPEGs far larger than needed are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's own
reduction), which saves memory and time without going below the size asked for.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from halluscope.data.folder import BadFile, MediaFolder, read_single
from halluscope.data.pixels import square

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # Pillow's names for what IMAGE_SUFFIXES promise
# 8192 x 8192: a 61-megapixel camera's photo fits; decoding one takes about 7 bytes a pixel
# (450 MB), which bounds what one small, highly compressed upload can make us allocate.
MAX_PIXELS = 8192 * 8192
WHITE = (255, 255, 255, 255)


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """PIL's lazily decoded image for `path` (the header is read, pixels wait for `load()`),
    parsed only as one of FORMATS. Every way a user's file can fail, here or in the `with`
    body, becomes BadFile with a reason. Images over MAX_PIXELS (or PIL's own decompression-bomb
    limit, where PIL itself would only warn) are refused before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=FORMATS) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise BadFile(f"too large to decode safely: {width}x{height} is {width * height / 1e6:.0f} "
                                  f"megapixels, the limit is {MAX_PIXELS / 1e6:.0f}")
                yield img
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadFile(f"too large to decode safely: {e}") from None
        except UnidentifiedImageError:
            raise BadFile("not an image (content not recognized)") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise BadFile(f"unreadable image: {e}") from None


def rgb_array(img: Image.Image) -> np.ndarray:
    """The pixels of a decoded PIL image of any mode as uint8 (H, W, 3)."""
    if img.mode.startswith("I"):  # "I;16", "I;16B" (16-bit PNG) or "I" (32-bit ints holding them)
        gray = np.clip(np.asarray(img).astype(np.int64, copy=False), 0, 65535)
        gray = ((gray * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535): never a tie
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, WHITE), img.convert("RGBA"))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def read_rgb(path: Path, least: int | None = None) -> np.ndarray:
    """Decode the image at `path` fully: uint8 (H, W, 3), upright. With `least`, a JPEG may be
    decoded at a reduced scale that keeps both sides at least `least` pixels. Raises BadFile."""
    with open_image(path) as img:
        if least is not None and img.format == "JPEG":
            img.draft("RGB", (least, least))
        img.load()  # where a truncated file fails
        return rgb_array(ImageOps.exif_transpose(img))


def probe_image(path: Path) -> None:
    """The scan's header check: recognizable, not empty, not a decompression bomb."""
    with open_image(path) as img:
        if min(img.size) < 1:
            raise BadFile(f"image has no pixels ({img.size[0]}x{img.size[1]})")


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """One image file -> float (3, R, R) in [-1, 1]; an unreadable file is a UserError."""
    return read_single(path, lambda p: square(read_rgb(p, resolution)[None], resolution)[0])


class ImageFolder(MediaFolder):
    """Every .jpg/.jpeg/.png/.webp/.bmp/.gif file under `root` (recursively, any case), each
    center-cropped and resized to (3, R, R) in [-1, 1]. Unusable files are skipped as
    `halluscope.data.folder` describes."""

    kind = "image"
    item_name = "images"
    suffixes = IMAGE_SUFFIXES

    def probe(self, path: Path) -> tuple[None, tuple[int]]:
        probe_image(path)
        return None, (0,)

    def load(self, path: Path, info: None, start: int) -> torch.Tensor:
        return square(read_rgb(path, self.resolution)[None], self.resolution)[0]  # (3, R, R)

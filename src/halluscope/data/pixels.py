"""Pixels between the file edge (uint8, channels last) and the code (float in [-1, 1],
channels first), and the one resize rule every loader uses: center-crop to a square, then
resize that square to the target resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange


def to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    return rearrange(x, "n h w c -> n c h w").float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounding to the nearest level
    so that to_uint8(to_float(p)) == p exactly."""
    x = ((x.detach().cpu().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "... c h w -> ... h w c").numpy()


def square(pixels: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> float (N, 3, R, R) in [-1, 1].

    The central square (side = the shorter side) is kept, which is the same picture as
    "resize the shorter side to R, then center-crop", but resizes fewer pixels. Bilinear
    with antialiasing: it averages properly when shrinking and never overshoots (bicubic
    would). The resize runs on the uint8 pixels, rounding to the nearest level, and only its
    result becomes float: a large frame never exists as float32 (4 bytes a channel). A square
    already of side R is returned untouched, bit for bit.
    """
    n, h, w, _ = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.require(pixels[:, top:top + side, left:left + side], requirements=["C", "W"])
    x = rearrange(torch.from_numpy(crop), "n h w c -> n c h w")  # uint8, a view (channels last in memory)
    if side != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.float() / 127.5 - 1.0

"""Convolutions that pad their input themselves, and what makes an encoder causal along the
first axis of its grid (rows of an image, time of a clip).

A causal encoder's latent row (or frame) i depends only on the pixel rows (frames) up to the
end of its band, i < (i+1)·f: every convolution pads that axis in front only, each strided
one sees its own window and none of the next, norms never pool over the axis, and attention
looks only at positions at or before its own along it. Then a context's tokens are the same
whatever follows it: a probe's context carries nothing of the answer.

Parameters keep their names (`conv1.weight`, `norm1.weight`, `attn_1.q.weight`, ...): a causal
model's state dict has the layout of its non-causal twin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import AttnBlock, Downsample
from torch import nn
from torch.nn.utils import skip_init


def pads(kernel: tuple[int, ...], stride: tuple[int, ...], causal: bool) -> tuple[int, ...]:
    """F.pad's amounts (last axis first) that let a convolution output size // stride along each
    axis: k - s in all. Causal: all of it in front along the first axis, so output j sees input
    up to s·j + s - 1, the end of its own window. Otherwise as taming's: split evenly, the odd
    one behind (a strided 3×3 pads (0, 1))."""
    out = []
    for axis, (k, s) in enumerate(zip(kernel, stride)):
        total = k - s
        front = total if causal and axis == 0 else total // 2
        out.append((front, total - front))
    return tuple(p for pair in reversed(out) for p in pair)


class _Padded:
    """A convolution (nn.ConvNd with padding 0) that pads its input by `self.pad` in `self.mode`."""

    pad: tuple[int, ...]
    mode: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad, mode=self.mode))


class PaddedConv2d(_Padded, nn.Conv2d):
    pass


class PaddedConv3d(_Padded, nn.Conv3d):
    pass


def padded_conv(conv: nn.Conv2d | nn.Conv3d, padding: str, causal: bool) -> PaddedConv2d | PaddedConv3d:
    """`conv` (the same parameters) padding its input itself as `pads` says, by `padding`
    ("zeros" | "replicate", see config.PADDINGS)."""
    cls = PaddedConv2d if isinstance(conv, nn.Conv2d) else PaddedConv3d
    # skip_init: no draw from the global RNG, so the modules built after this one start alike
    new = skip_init(cls, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None)
    new.weight, new.bias = conv.weight, conv.bias
    new.pad = pads(conv.kernel_size, conv.stride, causal)
    new.mode = "constant" if padding == "zeros" else padding  # F.pad's name for zeros
    return new


class PaddedDownsample(nn.Module):
    """A strided convolution that pads itself (see `padded_conv`); `conv` keeps taming's
    Downsample parameter names."""

    def __init__(self, conv: PaddedConv2d | PaddedConv3d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SliceGroupNorm(nn.GroupNorm):
    """GroupNorm computed separately on each slice along the first axis after the channels (each
    row of an image, each frame of a clip): no statistic mixes two rows (frames)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[2]
        y = super().forward(x.transpose(1, 2).flatten(0, 1))  # (B·n, C, ...)
        return y.unflatten(0, (b, n)).transpose(1, 2)


def slice_group_norm(norm: nn.GroupNorm) -> SliceGroupNorm:
    new = SliceGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
    new.weight, new.bias = norm.weight, norm.bias
    return new


def leading_axis_mask(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(L, L) attention mask over positions of a grid of `sizes` flattened in raster order: True
    where the key's index along the first axis is at most the query's."""
    first = torch.arange(sizes[0], device=device).repeat_interleave(math.prod(sizes[1:]))
    return first[None, :] <= first[:, None]


class RowCausalAttention(nn.Module):
    """taming's AttnBlock (its parameters, its scale) where a position attends only to the rows
    at or above its own."""

    def __init__(self, block: AttnBlock):
        super().__init__()
        self.norm, self.q, self.k, self.v, self.proj_out = block.norm, block.q, block.k, block.v, block.proj_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (f(h).flatten(2).transpose(1, 2) for f in (self.q, self.k, self.v))  # (B, h·w, C)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=leading_axis_mask(x.shape[2:], x.device))
        return x + self.proj_out(out.transpose(1, 2).reshape(x.shape))


def make_row_causal(encoder: nn.Module, padding: str) -> None:
    """Make a taming Encoder row-causal in place (see the module docstring): 3×3 convolutions pad
    two rows on top and none below, each Downsample pads one row on top instead of one below,
    GroupNorms work row by row, attention blocks (mid.attn_1, attn_resolutions') look up only."""
    for name, module in list(encoder.named_modules()):  # parents come before their children
        if isinstance(module, nn.Conv2d) and module.padding != (0, 0):
            new = padded_conv(module, padding, causal=True)
        elif isinstance(module, Downsample) and module.with_conv:
            new = PaddedDownsample(padded_conv(module.conv, padding, causal=True))
        elif isinstance(module, nn.GroupNorm):
            new = slice_group_norm(module)
        elif isinstance(module, AttnBlock):
            new = RowCausalAttention(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent), child, new)

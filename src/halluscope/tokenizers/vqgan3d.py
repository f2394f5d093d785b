"""A spatiotemporal VQGAN for clips: taming's encoder/decoder design (ResNet blocks with
GroupNorm and swish, strided downsampling, nearest upsampling) in 3D convolutions, with a
per-axis downsampling (dt, dh, dw), quantized by taming's VectorQuantizer2.

Shapes: clip (B, 3, T, H, W) -> latents (B, D, T/dt, H/dh, W/dw) -> tokens (B, T/dt, H/dh, W/dw).

With `causal` the encoder is causal in time (causal.py): its convolutions pad time in front
only, its downsampling windows are aligned to the frames, its norms work frame by frame and
its attention looks back only, so latent frame j depends only on frames < (j+1)·dt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from halluscope.tokenizers.causal import PaddedDownsample, SliceGroupNorm, leading_axis_mask, padded_conv
from halluscope.tokenizers.config import VQGAN3DConfig
from halluscope.tokenizers.vqgan import VQTokenizer


def conv3(c_in: int, c_out: int, padding: str, causal: bool = False) -> nn.Conv3d:
    """A 3×3×3 convolution keeping the size, padded as the config says (see config.PADDINGS);
    causal: two frames in front, none behind."""
    if causal:
        return padded_conv(nn.Conv3d(c_in, c_out, 3), padding, causal=True)
    return nn.Conv3d(c_in, c_out, 3, padding=1, padding_mode=padding)


def norm(channels: int, causal: bool = False) -> nn.GroupNorm:
    # taming uses 32 groups; small presets have fewer channels than that.
    return (SliceGroupNorm if causal else nn.GroupNorm)(min(32, channels // 4) or 1, channels, eps=1e-6)


class ResBlock3D(nn.Module):
    def __init__(self, c_in: int, c_out: int, cfg: VQGAN3DConfig, causal: bool = False):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in, causal), conv3(c_in, c_out, cfg.padding, causal)
        self.norm2, self.conv2 = norm(c_out, causal), conv3(c_out, c_out, cfg.padding, causal)
        self.dropout = nn.Dropout(cfg.dropout)
        self.shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class Attention3D(nn.Module):
    """Single-head self-attention over all t*h*w latent positions; causal: over those of the
    same latent frame or earlier ones."""

    def __init__(self, c: int, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.norm, self.qkv, self.proj = norm(c, causal), nn.Conv3d(c, 3 * c, 1), nn.Conv3d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) t h w -> n b 1 (t h w) c", n=3)
        mask = leading_axis_mask((t, h, w), x.device) if self.causal else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.proj(rearrange(out, "b 1 (t h w) c -> b c t h w", t=t, h=h, w=w))


def downsample3(c: int, stride: tuple[int, int, int], padding: str, causal: bool = False) -> PaddedDownsample:
    """Like taming's 2D Downsample: a strided 3×3×3 convolution padded (0, 1) on a strided axis
    so a size halves exactly, (1, 1) on an unstrided one; causal: time padded in front only."""
    return PaddedDownsample(padded_conv(nn.Conv3d(c, c, 3, stride=stride), padding, causal))


class Upsample3D(nn.Module):
    def __init__(self, c: int, scale: tuple[int, int, int], padding: str):
        super().__init__()
        self.scale = scale
        self.conv = conv3(c, c, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


def middle(c: int, cfg: VQGAN3DConfig, causal: bool = False) -> nn.Sequential:
    attn = Attention3D(c, causal) if cfg.mid_attention else nn.Identity()
    return nn.Sequential(ResBlock3D(c, c, cfg, causal), attn, ResBlock3D(c, c, cfg, causal))


class Encoder3D(nn.Module):
    def __init__(self, cfg: VQGAN3DConfig):
        super().__init__()
        self.patch = tuple(cfg.patch)
        pt, ph, pw = self.patch
        widths = [cfg.ch * m for m in cfg.ch_mult]
        causal = cfg.causal
        self.conv_in = conv3(cfg.in_channels * pt * ph * pw, cfg.ch, cfg.padding, causal)
        layers, c = [], cfg.ch
        strides = cfg.level_strides() + [None]
        for width, stride in zip(widths, strides):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock3D(c, width, cfg, causal))
                c = width
            if stride is not None:
                layers.append(downsample3(c, stride, cfg.padding, causal))
        self.down = nn.Sequential(*layers)
        self.mid = middle(c, cfg, causal)
        self.norm_out, self.conv_out = norm(c, causal), conv3(c, cfg.z_channels, cfg.padding, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        x = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (c pt ph pw) t h w", pt=pt, ph=ph, pw=pw)
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder3D(nn.Module):
    """The encoder mirrored, with one more ResNet block per level as in taming's Decoder."""

    def __init__(self, cfg: VQGAN3DConfig):
        super().__init__()
        self.patch = tuple(cfg.patch)
        pt, ph, pw = self.patch
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c = widths[-1]
        self.conv_in = conv3(cfg.z_channels, c, cfg.padding)
        self.mid = middle(c, cfg)
        layers = []
        strides = [None] + cfg.level_strides()[::-1]
        for width, stride in zip(widths[::-1], strides):
            if stride is not None:
                layers.append(Upsample3D(c, stride, cfg.padding))
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock3D(c, width, cfg))
                c = width
        self.up = nn.Sequential(*layers)
        self.norm_out = norm(c)
        self.conv_out = conv3(c, cfg.in_channels * pt * ph * pw, cfg.padding)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        h = self.up(self.mid(self.conv_in(z)))
        x = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(x, "b (c pt ph pw) t h w -> b c (t pt) (h ph) (w pw)", pt=pt, ph=ph, pw=pw)


class VQGAN3D(VQTokenizer):
    def __init__(self, config: VQGAN3DConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)
        self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=config.beta, legacy=config.legacy)
        self.quant_conv = nn.Conv3d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv3d(config.embed_dim, config.z_channels, 1)

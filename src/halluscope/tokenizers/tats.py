"""TATS's 3D VQGAN (SongweiGe/TATS, and eminorhan/vqgan-gpt-video, a fork of it), built to
hold its checkpoints' weights under their own names, for import (tats_import.py).

    clip (B, 3, T, H, W) in [-1, 1]
      -> /2: TATS's pixels are in [-0.5, 0.5] (a power of two: exact in floating point)
      -> encoder: conv_first (k3); per level a strided conv (k4) + a ResBlock; norm + SiLU
      -> pre_vq_conv (k1): latents (B, D, T/dt, H/dh, W/dw)
      -> nearest code in squared L2: tokens (B, T/dt, H/dh, W/dw)
    tokens -> code vectors -> post_vq_conv (k1)
      -> decoder: norm + SiLU first; per level a transposed conv (k4) + two ResBlocks; conv_last (k3)
      -> ×2: pixels in [-1, 1] (not clamped)

Every convolution pads "same" itself: F.pad by (ceil((k-s)/2), floor((k-s)/2)) per axis, then
no padding in the convolution, so k4 s1 pads (2, 1): asymmetric. Only conv_first and the
encoder's strided convolutions use the checkpoint's `padding_type`; TATS builds its ResBlocks
and its whole decoder with the default, replicate. A ResBlock keeps its width, so it has no
shortcut convolution. The level strides are config.TATSConfig.level_strides(), in the same
order in the decoder: time is upsampled in its first, deepest levels.

The encoder is not causal in time (its convolutions look ahead and GroupNorm pools over the
whole clip), so a clip's first latent frames depend on its later frames; probes get
leak-free context tokens by encoding the shown frames alone (`--context-encoding visible`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from halluscope.tokenizers.config import TATSConfig

TATS_SCALE = 2.0  # halluscope's [-1, 1] pixels = 2 × TATS's [-0.5, 0.5]


def same_pad(kernel: int, stride: tuple[int, int, int]) -> tuple[int, ...]:
    """F.pad's argument (last axis first) that keeps size/stride on every axis: k - s pixels per
    axis, the larger half in front."""
    pads = [(kernel - s + 1) // 2 for s in stride], [(kernel - s) // 2 for s in stride]
    return tuple(p for axis in reversed(range(3)) for p in (pads[0][axis], pads[1][axis]))


class SamePadConv3d(nn.Module):
    """Conv3d(padding=0) after F.pad(mode=padding): TATS's parameter names (`.conv`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int, int] = (1, 1, 1),
                 padding: str = "replicate"):
        super().__init__()
        self.pad, self.mode = same_pad(kernel, stride), padding
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, mode=self.mode))


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d(padding=k-1) after the same replicate F.pad: each axis grows by its
    stride exactly (TATS's names: `.convt`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int, int]):
        super().__init__()
        self.pad = same_pad(kernel, stride)
        self.convt = nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convt(F.pad(x, self.pad, mode="replicate"))


def norm(channels: int, kind: str) -> nn.Module:
    """TATS's Normalize: GroupNorm(32 groups, eps 1e-6), or (Sync)BatchNorm, which in eval mode
    is BatchNorm3d with its running statistics (eps 1e-5)."""
    return nn.GroupNorm(32, channels, eps=1e-6) if kind == "group" else nn.BatchNorm3d(channels)


class ResBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))) at a constant width, replicate-padded."""

    def __init__(self, c: int, norm_type: str):
        super().__init__()
        self.norm1, self.conv1 = norm(c, norm_type), SamePadConv3d(c, c, 3)
        self.norm2, self.conv2 = norm(c, norm_type), SamePadConv3d(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, n_hiddens·2^levels, T/dt, H/dh, W/dw); width doubles per level."""

    def __init__(self, cfg: TATSConfig):
        super().__init__()
        n = cfg.n_hiddens
        self.conv_first = SamePadConv3d(3, n, 3, padding=cfg.padding_type)
        self.conv_blocks = nn.ModuleList()
        for i, stride in enumerate(cfg.level_strides()):
            block = nn.Module()  # TATS's names: conv_blocks.{i}.down / .res
            block.down = SamePadConv3d(n * 2 ** i, n * 2 ** (i + 1), 4, stride, padding=cfg.padding_type)
            block.res = ResBlock(n * 2 ** (i + 1), cfg.norm_type)
            self.conv_blocks.append(block)
        self.final_block = nn.Sequential(norm(n * 2 ** cfg.levels, cfg.norm_type), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_first(x)
        for block in self.conv_blocks:
            h = block.res(block.down(h))
        return self.final_block(h)


class Decoder(nn.Module):
    """(B, n_hiddens·2^levels, t, h, w) -> (B, 3, t·dt, h·dh, w·dw); width halves per level."""

    def __init__(self, cfg: TATSConfig):
        super().__init__()
        n, levels = cfg.n_hiddens, cfg.levels
        self.final_block = nn.Sequential(norm(n * 2 ** levels, cfg.norm_type), nn.SiLU())  # applied first
        self.conv_blocks = nn.ModuleList()
        for i, stride in enumerate(cfg.level_strides()):
            c_in, c_out = n * 2 ** (levels - i + (i > 0)), n * 2 ** (levels - i)  # the first keeps its width
            block = nn.Module()  # TATS's names: conv_blocks.{i}.up / .res1 / .res2
            block.up = SamePadConvTranspose3d(c_in, c_out, 4, stride)
            block.res1, block.res2 = ResBlock(c_out, cfg.norm_type), ResBlock(c_out, cfg.norm_type)
            self.conv_blocks.append(block)
        self.conv_last = SamePadConv3d(2 * n, 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.final_block(z)
        for block in self.conv_blocks:
            h = block.res2(block.res1(block.up(h)))
        return self.conv_last(h)


class Codebook(nn.Module):
    """The code vectors, a buffer as in TATS (its EMA statistics N and z_avg only train it)."""

    def __init__(self, n_codes: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(n_codes, dim))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, *grid) -> index of the nearest code (B, *grid), in squared L2 expanded as
        TATS computes it (|z|² - 2 z·e + |e|²), so near-ties fall the same way."""
        flat = rearrange(z, "b d ... -> (b ...) d")
        e = self.embeddings
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.t().pow(2).sum(0, keepdim=True)
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, *grid) -> code vectors as latents (B, D, *grid)."""
        return rearrange(F.embedding(tokens, self.embeddings), "b ... d -> b d ...").contiguous()


class TATSVQGAN(nn.Module):
    """The Tokenizer contract (encode / decode / features, grid, kind, ...) over TATS's VQGAN."""

    kind = "video"
    causal = False  # see the module docstring: context tokens come from the shown frames alone

    def __init__(self, config: TATSConfig):
        super().__init__()
        self.config = config
        width = config.n_hiddens * 2 ** config.levels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.pre_vq_conv = SamePadConv3d(width, config.embedding_dim, 1, padding=config.padding_type)
        self.post_vq_conv = SamePadConv3d(config.embedding_dim, width, 1)
        self.codebook = Codebook(config.n_codes, config.embedding_dim)

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.config.grid

    @property
    def vocab_size(self) -> int:
        return self.config.n_codes

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def frames(self) -> int:
        return self.config.frames

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents (B, embedding_dim, *grid) of pixels x (B, 3, T, H, W) in [-1, 1]."""
        return self.pre_vq_conv(self.encoder(x / TATS_SCALE))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> tokens LongTensor (B, *grid)."""
        return self.codebook.nearest(self.features(x))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, *grid) -> pixels (B, 3, T, H, W) in [-1, 1] (not clamped)."""
        return self.decoder(self.post_vq_conv(self.codebook.lookup(tokens))) * TATS_SCALE

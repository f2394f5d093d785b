"""VQ tokenizers: encoder → quant_conv → vector quantizer → post_quant_conv → decoder.

`VQTokenizer` holds that pipeline once, for any number of latent axes; `VQGAN` fills it with
taming-transformers' own Encoder / Decoder / VectorQuantizer2, with the parameter names of
taming's `VQModel` (`encoder.*`, `decoder.*`, `quantize.embedding.weight`, `quant_conv.*`,
`post_quant_conv.*`) so that taming checkpoints load as they are; LlamaGen's VQ tokenizers are
the same modules under other names with an L2-normalised codebook (`L2Quantizer`). The 3D clip VQGAN
(vqgan3d.py) reuses the pipeline with its own convolutions. With `causal` in the config the
encoder is causal along the grid's first axis (causal.py); the decoders never are.
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.diffusionmodules.model import Decoder, Downsample, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn

from halluscope.tokenizers.causal import PaddedDownsample, make_row_causal, padded_conv
from halluscope.tokenizers.config import VQGANConfig


class VQTokenizer(nn.Module):
    """The Tokenizer contract over an encoder/decoder pair that subclasses build.

    Latents are (B, D, *grid); the quantizer sees them folded to (B, D, prod(grid[:-1]), w),
    which is exactly how taming's 2D quantizer flattens an image latent.
    """

    config: VQGANConfig
    encoder: nn.Module
    decoder: nn.Module
    quant_conv: nn.Module
    post_quant_conv: nn.Module
    quantize: nn.Module

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.config.grid)

    @property
    def vocab_size(self) -> int:
        return self.config.n_embed

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def frames(self) -> int | None:
        return getattr(self.config, "frames", None)

    @property
    def causal(self) -> bool:
        """Whether token row (latent frame) i depends only on the pixel rows (frames) up to the
        end of its band, so that a context's tokens do not depend on what follows it."""
        return self.config.causal

    @property
    def codebook(self) -> torch.Tensor:
        """(vocab_size, embed_dim) stored code vectors, the parameter training updates (an l2
        quantizer decodes from them normalised: `code_vectors`)."""
        q = self.quantize
        return q.embed.weight if isinstance(q, GumbelQuantize) else q.embedding.weight

    @property
    def code_vectors(self) -> torch.Tensor:
        """(vocab_size, embed_dim) the vectors tokens decode to."""
        return self.quantize.vectors if isinstance(self.quantize, L2Quantizer) else self.codebook

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents (B, embed_dim, *grid) of pixels x in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    def quantize_features(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_q with straight-through gradients, codebook + commitment loss, tokens (B, *grid))."""
        grid = z.shape[2:]
        flat = z.reshape(*z.shape[:2], -1, grid[-1])  # (B, D, prod(grid[:-1]), w)
        if isinstance(self.quantize, GumbelQuantize):
            # Deterministic tokens: the most likely code, which taming's hard sampling draws
            # only up to Gumbel noise. Training a Gumbel model is not supported here.
            idx = self.quantize.proj(flat).argmax(1)
            return self.embed(idx.reshape(z.shape[0], *grid)), z.new_zeros(()), idx.reshape(z.shape[0], *grid)
        z_q, loss, (_, _, idx) = self.quantize(flat)
        return z_q.reshape(z.shape), loss, idx.reshape(z.shape[0], *grid)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Code vectors of tokens (B, *grid) as latents (B, embed_dim, *grid)."""
        return rearrange(self.code_vectors[tokens], "b ... d -> b d ...").contiguous()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, codebook loss, tokens, pre-quantization latents)."""
        z = self.features(x)
        z_q, loss, tokens = self.quantize_features(z)
        return self.decoder(self.post_quant_conv(z_q)), loss, tokens, z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) or (B, 3, T, H, W) in [-1, 1] -> tokens LongTensor (B, *grid)."""
        return self.quantize_features(self.features(x))[2].long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, *grid) -> pixels in [-1, 1] (not clamped: the decoder's raw output)."""
        return self.decoder(self.post_quant_conv(self.embed(tokens)))


class VQGAN(VQTokenizer):
    """taming's image VQGAN (VQModel / GumbelVQ without their losses)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        dd = dict(ch=config.ch, out_ch=config.out_ch, ch_mult=tuple(config.ch_mult), num_res_blocks=config.num_res_blocks,
                  attn_resolutions=tuple(config.attn_resolutions), dropout=config.dropout, in_channels=config.in_channels,
                  resolution=config.resolution, z_channels=config.z_channels, double_z=False)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints its latent shape
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        if config.causal:
            make_row_causal(self.encoder, config.padding)
        elif config.padding == "replicate":
            replicate_borders(self.encoder)
        if config.padding == "replicate":
            replicate_borders(self.decoder)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantize(config.z_channels, config.embed_dim, n_embed=config.n_embed)
        elif config.quantizer == "l2":
            self.quantize = L2Quantizer(config.n_embed, config.embed_dim, beta=config.beta)
        else:
            self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=config.beta, legacy=config.legacy)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)


class L2Quantizer(nn.Module):
    """LlamaGen's quantizer (codebook_l2_norm): the nearest code by direction. z and the codes
    are L2-normalised over the embedding dim before the search, and z_q is the unit code. Its
    one weight is `embedding.weight`, as VectorQuantizer2's; the interface is that class's."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.beta = beta

    @property
    def vectors(self) -> torch.Tensor:
        """(n_embed, embed_dim) unit code vectors: what a token decodes to."""
        return F.normalize(self.embedding.weight, dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[None, None, torch.Tensor]]:
        """z (B, D, h, w) -> (z_q (B, D, h, w) with straight-through gradients, codebook +
        commitment loss, (None, None, tokens (B*h*w,)))."""
        z = F.normalize(rearrange(z, "b d h w -> b h w d"), dim=-1)
        flat, codes = z.reshape(-1, z.shape[-1]), self.vectors
        # The full squared distance, both norms ~1 included, as LlamaGen sums it: near-ties
        # then round, and break, the same way.
        distance = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        tokens = distance.argmin(1)
        z_q = codes[tokens].view(z.shape)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()
        return rearrange(z_q, "b h w d -> b d h w"), loss, (None, None, tokens)


def replicate_borders(net: nn.Module) -> None:
    """Make every convolution of a taming Encoder / Decoder pad by replication; the parameters
    (and so the state-dict layout) stay as they are."""
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d) and module.padding != (0, 0):
            module.padding_mode = "replicate"
        elif isinstance(module, Downsample) and module.with_conv:
            parent, _, child = name.rpartition(".")
            new = PaddedDownsample(padded_conv(module.conv, "replicate", causal=False))
            setattr(net.get_submodule(parent), child, new)

"""A clip tokenizer made of an image VQGAN applied to each frame, so that any image
checkpoint (a trained one, an imported taming one) also tokenizes clips: grid (T, h, w)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from halluscope.tokenizers.config import FramewiseConfig
from halluscope.tokenizers.vqgan import VQGAN


class Framewise(nn.Module):
    kind = "video"

    def __init__(self, config: FramewiseConfig):
        super().__init__()
        self.config = config
        self.image = VQGAN(config.image)

    @classmethod
    def wrap(cls, image: VQGAN, frames: int) -> "Framewise":
        """A clip tokenizer sharing the weights of an image VQGAN."""
        model = cls(FramewiseConfig(image=image.config, frames=frames))
        model.image = image
        return model

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.config.grid

    @property
    def vocab_size(self) -> int:
        return self.image.vocab_size

    @property
    def resolution(self) -> int:
        return self.image.resolution

    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def causal(self) -> bool:
        """Always causal in time, the clip's context axis: each frame is encoded on its own, so
        latent frame j depends on frame j alone (whether or not its image VQGAN is row-causal)."""
        return True

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, embed_dim, T, h, w)."""
        z = self.image.features(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(z, "(b t) d h w -> b d t h w", b=x.shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> tokens (B, T, h, w)."""
        tokens = self.image.encode(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(tokens, "(b t) h w -> b t h w", b=x.shape[0])

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, h, w) -> (B, 3, T, H, W)."""
        x = self.image.decode(rearrange(tokens, "b t h w -> (b t) h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", b=tokens.shape[0])

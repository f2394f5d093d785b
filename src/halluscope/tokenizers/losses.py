"""Tokenizer training losses: L1 (+ optional L2) reconstruction + codebook/commitment, an optional perceptual
term, and an optional hinge PatchGAN (taming's NLayerDiscriminator; applied per frame for
clips) whose weight adapts to the ratio of reconstruction and adversarial gradients at the
decoder's last layer, switched on after `gan_start` steps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from torch import nn

from halluscope.tokenizers.perceptual import Perceptual


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example PSNR in dB of y against x, both in [-1, 1] (y is clamped first): (B,)."""
    mse = ((x - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def frames_as_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W); images pass through."""
    return rearrange(x, "b c t h w -> (b t) c h w") if x.dim() == 5 else x


class TokenizerLoss(nn.Module):
    def __init__(self, gan_start: int | None = None, disc_weight: float = 0.5, codebook_weight: float = 1.0,
                 perceptual: Perceptual | None = None, perceptual_weight: float = 1.0, resolution: int = 256,
                 l2_weight: float = 0.0):
        super().__init__()
        self.l2_weight = l2_weight
        self.gan_start = gan_start
        self.disc_weight, self.codebook_weight = disc_weight, codebook_weight
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight
        self.discriminator = None
        if gan_start is not None:
            # taming's 3 layers need 32² inputs at least; smaller frames get fewer.
            n_layers = max(1, min(3, int(math.log2(resolution)) - 2))
            self.discriminator = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=n_layers)
            self.discriminator.apply(weights_init)

    def gan_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.gan_start

    def generator_loss(self, x: torch.Tensor, xrec: torch.Tensor, codebook_loss: torch.Tensor, step: int,
                       last_layer: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss and its terms for logging."""
        rec = (x - xrec).abs().mean()
        logs = {"l1": rec.item(), "codebook": codebook_loss.item()}
        if self.l2_weight:
            # L1 alone learns small bright shapes on a dark background slowly (its gradient
            # ignores how wrong a pixel is); a squared term pulls colors in early.
            rec = rec + self.l2_weight * (x - xrec).pow(2).mean()
        if self.perceptual is not None:
            p = self.perceptual(frames_as_images(x), frames_as_images(xrec)).mean()
            rec = rec + self.perceptual_weight * p
            logs["perceptual"] = p.item()
        total = rec + self.codebook_weight * codebook_loss
        if self.gan_on(step):
            g = -self.discriminator(frames_as_images(xrec)).mean()
            weight = self.adaptive_weight(rec, g, last_layer)
            total = total + weight * g
            logs.update(g_loss=g.item(), d_weight=weight.item())
        logs["loss"] = total.item()
        return total, logs

    def adaptive_weight(self, rec: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """Scale the adversarial term so its gradient at the last layer is as large as the
        reconstruction's (times disc_weight): the GAN sharpens without swamping the L1."""
        rec_grad = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
        return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach() * self.disc_weight

    def discriminator_loss(self, x: torch.Tensor, xrec: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss on real images vs detached reconstructions."""
        real = self.discriminator(frames_as_images(x))
        fake = self.discriminator(frames_as_images(xrec.detach()))
        loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        return loss, {"d_loss": loss.item(), "logits_real": real.mean().item(), "logits_fake": fake.mean().item()}

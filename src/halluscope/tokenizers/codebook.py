"""Codebook health during training: which codes the encoder picked over the last K steps
(usage, perplexity), and restarting dead codes at recent encoder outputs so that a codebook
does not collapse onto a handful of entries."""

from __future__ import annotations

import torch
from einops import rearrange


class CodebookTracker:
    """Per-step code counts over a window of the last `window` steps, and a ring buffer of
    the last `keep` pre-quantization latents to restart dead codes from."""

    def __init__(self, n_codes: int, dim: int, window: int = 100, keep: int = 4096):
        self.counts = torch.zeros(window, n_codes, dtype=torch.long)  # row = one step, ring buffer
        self.born = torch.zeros(n_codes, dtype=torch.long)  # step of each code's last restart
        self.latents = torch.zeros(keep, dim)  # ring buffer of recent encoder outputs
        self.steps = 0  # updates seen
        self.seen = 0  # latents seen

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, z: torch.Tensor) -> None:
        """tokens (B, *grid); z (B, D, *grid) the latents that were quantized."""
        self.counts[self.steps % len(self.counts)] = torch.bincount(tokens.flatten().cpu(), minlength=self.counts.shape[1])
        self.steps += 1
        flat = rearrange(z.detach().float().cpu(), "b d ... -> (b ...) d")[-len(self.latents):]
        slots = (self.seen + torch.arange(len(flat))) % len(self.latents)
        self.latents[slots] = flat
        self.seen += len(flat)

    def window_counts(self) -> torch.Tensor:
        return self.counts.sum(0)

    def usage(self) -> float:
        """Fraction of codes used at least once in the window."""
        return (self.window_counts() > 0).float().mean().item()

    def perplexity(self) -> float:
        """exp(entropy) of the code distribution in the window: the number of codes in
        effective use (1 = collapsed, n_codes = uniform)."""
        counts = self.window_counts().float()
        p = counts / counts.sum().clamp(min=1)
        return torch.exp(-(p * p.clamp(min=1e-12).log()).sum()).item()

    @torch.no_grad()
    def restart_dead(self, codebook: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                     generator: torch.Generator) -> int:
        """Restart every code left unpicked for a whole window since its (re)start; returns how many."""
        dead = ((self.window_counts() == 0) & (self.steps - self.born >= len(self.counts))).nonzero().flatten()
        return self.reseed(codebook, optimizer, generator, dead)

    @torch.no_grad()
    def reseed(self, codebook: torch.Tensor, optimizer: torch.optim.Optimizer | None, generator: torch.Generator,
               codes: torch.Tensor | None = None) -> int:
        """Move `codes` (default: all, a data-dependent initialization) onto distinct random
        recent latents, and reset their optimizer moments so that stale momentum does not drag
        them away. Returns how many codes moved."""
        codes = torch.arange(len(codebook)) if codes is None else codes
        available = min(self.seen, len(self.latents))
        pick = torch.randperm(available, generator=generator)[: len(codes)]
        codes = codes[: len(pick)]
        if len(codes) == 0:
            return 0
        codebook[codes] = self.latents[pick].to(codebook)
        state = optimizer.state.get(codebook, {}) if optimizer is not None else {}
        for moment in state.values():
            if torch.is_tensor(moment) and moment.shape == codebook.shape:
                moment[codes] = 0
        self.born[codes] = self.steps
        return len(codes)

    def state_dict(self) -> dict:
        return {"counts": self.counts, "born": self.born, "latents": self.latents, "steps": self.steps, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.counts, self.born, self.latents = (state[k].clone() for k in ("counts", "born", "latents"))
        self.steps, self.seen = int(state["steps"]), int(state["seen"])

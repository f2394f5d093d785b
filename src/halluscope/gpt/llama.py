"""LlamaGPT: the Llama-style block family (LlamaGen's): RMSNorm before attention and before a
SwiGLU feed-forward, projections without biases, and rotary positions over the token grid's
axes instead of position tables.

Rotary positions: a head's D/2 (even, odd) pairs are shared out among the grid's axes in
order, as evenly as possible (first axes get the remainder); the pairs of an axis with d of
the head's dimensions turn by position · base^(−2j/d), j = 0 .. d/2 − 1. For a 2D grid and
D/2 even this is LlamaGen's 2D RoPE exactly: the first half of the pairs follows the token's
row, the second its column. Condition slots (a class token) are not rotated but zeroed — their
(cos, sin) is (0, 0), LlamaGen's convention — so their queries and keys are 0 and they are
attended to with score 0.

The forward pass, KV cache (holding rotated keys), sampling and scoring are TokenModel's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from halluscope.gpt.attention import CausalSelfAttention
from halluscope.gpt.base import TokenModel
from halluscope.gpt.config import GPTConfig
from halluscope.gpt.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 whatever x's dtype: a bf16 mean of squares loses the small features.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.swiglu_hidden
        self.gate = nn.Linear(config.n_embd, hidden, bias=False)
        self.up = nn.Linear(config.n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, config.n_embd, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))


class LlamaBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, bias=False)
        self.ln2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: int | torch.Tensor = 0,
                rotation: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, pos, rotation)
        return x + self.mlp(self.ln2(x))


def axis_frequencies(head_dim: int, axes: int, base: float) -> list[torch.Tensor]:
    """Each grid axis's rotation frequencies (its share of the head's D/2 pairs)."""
    pairs = head_dim // 2
    shares = [pairs // axes + (i < pairs % axes) for i in range(axes)]
    # float32 throughout, the way LlamaGen computes them, so imported models rotate identically.
    return [1.0 / (base ** (torch.arange(0, 2 * n, 2).float() / (2 * n))) for n in shares]


class LlamaGPT(TokenModel):
    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        if c.n_cond:
            self.cond_emb = nn.Embedding(c.cond_vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layer))
        self.ln_f = RMSNorm(c.n_embd, c.norm_eps)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.reset_parameters()

    @property
    def rope_grid(self) -> tuple[int, ...]:
        """The axes positions are rotated along: the token grid, or one axis of block_size."""
        return tuple(self.config.grid) if self.config.grid else (self.config.block_size,)

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights (LlamaGen's initialiser range), RMSNorm gains 1, and the two
        projections that write into the residual stream scaled by 1/sqrt(2·n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def embed(self, idx: torch.Tensor, cond: torch.Tensor | None, pos: int | torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)  # (B, T, C): positions enter through the rotation alone
        return x if cond is None else torch.cat([self.cond_emb(cond), x], dim=1)

    def rotation(self, start: int | torch.Tensor, length: int) -> torch.Tensor:
        """(length, D/2, 2) cos and sin of sequence positions [start, start+length): condition
        slots (0, 0), then grid positions turned along each axis."""
        c = self.config
        seq = start + torch.arange(length, device=self.device)
        grid_pos = (seq - c.n_cond).clamp(min=0)
        coords = torch.stack(torch.unravel_index(grid_pos, self.rope_grid), dim=-1)  # (length, axes)
        freqs = axis_frequencies(c.head_dim, len(self.rope_grid), c.rope_base)
        angles = torch.cat([coords[:, i, None].float() * f.to(self.device) for i, f in enumerate(freqs)], dim=-1)
        table = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (length, D/2, 2)
        return table.masked_fill((seq < c.n_cond)[:, None, None], 0.0)

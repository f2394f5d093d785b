"""The GPT: a decoder-only, pre-LayerNorm minGPT-style transformer over flattened token grids
(LayerNorm, GELU MLP, biases, learned position tables), as taming, TATS and VQGAN-GPT train it.

The forward pass, KV cache, sampling and scoring are TokenModel's (base.py); this file says
how this family embeds its tokens and positions and builds its blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from halluscope.gpt.attention import CausalSelfAttention
from halluscope.gpt.base import TokenModel
from halluscope.gpt.config import GPTConfig
from halluscope.gpt.kv_cache import KVCache


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()  # exact erf GELU, as in minGPT / taming, so imported weights match
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: int | torch.Tensor = 0,
                rotation: None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, pos)
        return x + self.mlp(self.ln2(x))


class GPT(TokenModel):
    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        if c.factorized_pos:
            self.pos_emb = nn.ParameterList(nn.Parameter(torch.zeros(n, c.n_embd)) for n in c.grid)
        else:
            self.pos_emb = nn.Parameter(torch.zeros(c.block_size, c.n_embd))
        if c.n_cond:
            self.cond_emb = nn.Embedding(c.cond_vocab_size, c.n_embd)
            self.cond_pos = nn.Parameter(torch.zeros(c.n_cond, c.n_embd))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, zero biases, and the two projections
        that write into the residual stream scaled by 1/sqrt(2·n_layer), so the stream's
        variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for p in self._position_tables():
            nn.init.normal_(p, std=0.02)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def _position_tables(self) -> list[nn.Parameter]:
        tables = list(self.pos_emb) if self.config.factorized_pos else [self.pos_emb]
        return tables + ([self.cond_pos] if self.config.n_cond else [])

    def position_embedding(self, pos: int | torch.Tensor, length: int) -> torch.Tensor:
        """Embeddings of grid positions [pos, pos+length): (length, C); `pos` may be a 0-dim
        device tensor (the static decode step), never read on the host."""
        if not self.config.factorized_pos and not isinstance(pos, torch.Tensor):
            return self.pos_emb[pos:pos + length]  # a view: training's common case
        p = pos + torch.arange(length, device=self.tok_emb.weight.device)
        if not self.config.factorized_pos:
            return self.pos_emb[p]
        out, stride = 0, math.prod(self.config.grid)
        for size, table in zip(self.config.grid, self.pos_emb):  # (t,) h, w: outermost axis first
            stride //= size
            out = out + table[(p // stride) % size]
        return out

    def embed(self, idx: torch.Tensor, cond: torch.Tensor | None, pos: int | torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.position_embedding(pos, idx.shape[1])  # (B, T, C)
        if cond is None:
            return x
        return torch.cat([self.cond_emb(cond) + self.cond_pos, x], dim=1)  # (B, n_cond + T, C)

"""The GPT: a decoder-only, pre-LayerNorm transformer over flattened token grids.

One forward serves training (whole sequences, causal attention), prefill (a context written
into a KV cache) and decoding (one new token per row, attending to the cache).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from halluscope.gpt import sampling, scoring
from halluscope.gpt.attention import attend, attend_decode, resolve_backend
from halluscope.gpt.config import ATTENTION_BACKENDS, GPTConfig
from halluscope.gpt.kv_cache import KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)
        self.backend = config.attention

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: int = 0) -> torch.Tensor:
        # x (B, T, C); with a cache, x holds positions [pos, pos+T) of each row.
        qkv = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        q, k, v = qkv
        if cache is not None:
            k_all, v_all = cache.write(layer, qkv[1:], pos)  # (B, H, pos+T, D) each
        if cache is not None and pos > 0:
            # Decoding: the new query sees every cached key, so no mask is needed. One token
            # per step keeps this exact; a longer chunk would need an offset causal mask.
            # Every backend decodes the same way: reading the cache is the cost, see attend_decode.
            assert x.shape[1] == 1, "decode one position at a time after the prefill"
            y = attend_decode(q, k_all, v_all, cache.shared, cache.group)
        else:  # training, or a prefill from position 0: causal attention within the chunk
            p = self.dropout if self.training else 0.0
            y = attend(q, k, v, causal=True, backend=resolve_backend(self.backend, x.device), dropout=p)
        return self.resid_drop(self.proj(rearrange(y, "b h t d -> b t (h d)")))


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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, pos)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
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
        self.gradient_checkpointing = False  # recompute block activations in backward (training)
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

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_attention(self, backend: str) -> None:
        """Switch every layer to another attention backend (the weights are unchanged)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
        self.config.attention = backend
        for block in self.blocks:
            block.attn.backend = backend

    def position_embedding(self, pos: int, length: int) -> torch.Tensor:
        """Embeddings of grid positions [pos, pos+length): (length, C)."""
        if not self.config.factorized_pos:
            return self.pos_emb[pos:pos + length]
        p = torch.arange(pos, pos + length, device=self.pos_emb[0].device)
        out, stride = 0, math.prod(self.config.grid)
        for size, table in zip(self.config.grid, self.pos_emb):  # (t,) h, w: outermost axis first
            stride //= size
            out = out + table[(p // stride) % size]
        return out

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty KV cache for `batch` rows and `length` grid positions (default: all),
        in the dtype attention will run in (the autocast dtype when autocast is on)."""
        c = self.config
        device = self.tok_emb.weight.device
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else self.tok_emb.weight.dtype)
        positions = c.n_cond + (c.block_size if length is None else length)
        return KVCache(c.n_layer, batch, c.n_head, positions, c.head_dim, device, dtype)

    def forward(self, idx: torch.Tensor, cond: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Next-token logits.

        idx (B, T): grid tokens. Without a cache, or with an empty one (which this call fills:
        the prefill), they are positions [0, T) and a conditional model needs cond (B, n_cond),
        read before them. With a filled cache, idx (B, 1) is the next position of each row.

        Returns (B, R, V), one row per position that predicts a grid token: row i follows
        idx[:, i]; a call that reads the condition starts with one extra row, the
        condition's own prediction of idx[:, 0]. last_only keeps only the final row (B, 1, V).
        """
        c = self.config
        cache_pos = 0 if cache is None else cache.length
        pos = max(0, cache_pos - c.n_cond)  # grid position of idx[:, 0]
        if pos + idx.shape[1] > c.block_size:
            raise ValueError(f"positions up to {pos + idx.shape[1]} exceed block_size {c.block_size}")
        with_cond = c.n_cond > 0 and cache_pos == 0
        if with_cond != (cond is not None):
            raise ValueError("cond (B, n_cond) is required by a conditional model when a sequence starts, "
                             "and only then")
        x = self.tok_emb(idx) + self.position_embedding(pos, idx.shape[1])  # (B, T, C)
        if with_cond:
            x = torch.cat([self.cond_emb(cond) + self.cond_pos, x], dim=1)  # (B, n_cond + T, C)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, layer, cache_pos)
        if cache is not None:
            cache.length = cache_pos + x.shape[1]
        if with_cond:
            x = x[:, c.n_cond - 1:]  # the condition's last position predicts idx[:, 0]
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_f(x))

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """No dropout, no autograd; the previous train/eval mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def generate(self, prefix: torch.Tensor, steps: int, num_samples: int = 1, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                 cond: torch.Tensor | None = None, use_cache: bool = True,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_samples` continuations of `steps` tokens after each prefix row: (tokens, logprobs),
        each (B·N, steps). See `halluscope.gpt.sampling.generate`."""
        with self.inference():
            return sampling.generate(self, prefix, steps, num_samples, temperature, top_k, top_p, generator,
                                     cond=cond, use_cache=use_cache, progress=progress)

    def score(self, tokens: torch.Tensor, start: int, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced log-probability, entropy and rank of tokens[:, start:], each (B, L-start).
        See `halluscope.gpt.scoring.score`."""
        with self.inference():
            return scoring.score(self, tokens, start, cond)

"""TokenModel: the one interface sampling, scoring, training and the probes type against.

A block family (the minGPT-style `GPT` in model.py, the Llama-style `LlamaGPT` in llama.py)
says only how tokens and condition tokens become the first hidden states (`embed`), what its
blocks need besides them (`rotation`: rotary angles, or None) and how it initialises; the
forward pass over blocks and the KV cache, generation and scoring are written once, here.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from halluscope.gpt import sampling, scoring
from halluscope.gpt.config import ATTENTION_BACKENDS, GPTConfig
from halluscope.gpt.kv_cache import KVCache
from halluscope.gpt.settings import SamplingSettings


class TokenModel(nn.Module):
    """Subclasses build `tok_emb` (the token embedding: it fixes the device and dtype),
    `drop`, `blocks` (each called as block(x, cache, layer, pos, rotation) with an `attn`
    whose `backend` can be switched), `ln_f` and `head`, and define `embed`."""
    config: GPTConfig
    tok_emb: nn.Embedding
    blocks: nn.ModuleList

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # recompute block activations in backward (training)

    def embed(self, idx: torch.Tensor, cond: torch.Tensor | None, pos: int | torch.Tensor) -> torch.Tensor:
        """(B, T) grid tokens at grid positions [pos, pos+T) (pos an int, or a 0-dim device
        tensor in the static decode step), preceded by cond (B, n_cond) when given, -> hidden
        states (B, [n_cond +] T, C)."""
        raise NotImplementedError

    def rotation(self, start: int | torch.Tensor, length: int) -> torch.Tensor | None:
        """What attention rotates queries and keys by at sequence positions [start, start+length)
        (condition slots first, then the grid), or None for a family without rotary positions."""
        return None

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_attention(self, backend: str) -> None:
        """Switch every layer to another attention backend (the weights are unchanged)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
        self.config.attention = backend
        for block in self.blocks:
            block.attn.backend = backend

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty KV cache for `batch` rows and `length` grid positions (default: all),
        in the dtype attention will run in (the autocast dtype when autocast is on)."""
        c = self.config
        device = self.device
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
        cache_pos = 0 if cache is None else cache.length  # sequence position of x[:, 0]
        pos = max(0, cache_pos - c.n_cond)  # grid position of idx[:, 0]
        if pos + idx.shape[1] > c.block_size:
            raise ValueError(f"positions up to {pos + idx.shape[1]} exceed block_size {c.block_size}")
        with_cond = c.n_cond > 0 and cache_pos == 0
        if with_cond != (cond is not None):
            raise ValueError("cond (B, n_cond) is required by a conditional model when a sequence starts, "
                             "and only then")
        x = self.drop(self.embed(idx, cond, pos))  # (B, T', C)
        rotation = self.rotation(cache_pos, x.shape[1])
        for layer, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, None, layer, 0, rotation, use_reentrant=False)
            else:
                x = block(x, cache, layer, cache_pos, rotation)
        if cache is not None:
            cache.length = cache_pos + x.shape[1]
        if with_cond:
            x = x[:, c.n_cond - 1:]  # the condition's last position predicts idx[:, 0]
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_f(x))

    def decode_step(self, idx: torch.Tensor, cache: KVCache, seq_pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the token after idx (B, 1), which sits at the sequence position held
        in the 0-dim device tensor `seq_pos` of a prefilled cache: shapes and host values never
        change from step to step, so the step can be captured once as a CUDA graph and replayed
        (gpt/static_decode.py). Same arithmetic as forward's decoding, over the whole cache."""
        x = self.embed(idx, None, seq_pos - self.config.n_cond)  # (B, 1, C)
        rotation = self.rotation(seq_pos, 1)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, seq_pos, rotation)
        return self.head(self.ln_f(x))[:, -1]

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

    def generate(self, prefix: torch.Tensor, steps: int, num_samples: int = 1,
                 settings: SamplingSettings = SamplingSettings(), generator: torch.Generator | None = None,
                 cond: torch.Tensor | None = None, use_cache: bool = True, static: bool | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_samples` continuations of `steps` tokens after each prefix row: (tokens, logprobs),
        each (B·N, steps). See `halluscope.gpt.sampling.generate`."""
        with self.inference():
            return sampling.generate(self, prefix, steps, num_samples, settings, generator,
                                     cond=cond, use_cache=use_cache, static=static, progress=progress)

    def score(self, tokens: torch.Tensor, start: int, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced log-probability, entropy and rank of tokens[:, start:], each (B, L-start).
        See `halluscope.gpt.scoring.score`."""
        with self.inference():
            return scoring.score(self, tokens, start, cond)

"""Scaled dot-product attention behind one function, with three interchangeable backends, and
the causal self-attention layer over a KV cache that every block family uses.

- "xformers": `xformers.ops.memory_efficient_attention` (CUDA only; it takes (B, L, H, D)).
- "sdpa": torch's `scaled_dot_product_attention` (CPU and GPU; it takes (B, H, L, D)).
- "math": softmax(q kᵀ / √d + mask) v written out, the reference the others are tested against.
- "auto": xformers when it is installed, its kernels load and the tensors are on CUDA; else sdpa.

Each xformers wheel is built against one torch release, so an installed xformers may import
fine and still have no kernels; asking for it then falls back to sdpa with one warning per
process rather than failing or warning at every layer of every step.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from halluscope.gpt.config import ATTENTION_BACKENDS, GPTConfig
from halluscope.gpt.kv_cache import KVCache

_fallback_warned = False


@functools.cache
def xformers_problem(device_type: str) -> str | None:
    """Why xformers cannot run on this device type, or None when it can. Cached: the check
    runs one tiny attention call, because importing xformers succeeds even when its
    compiled kernels do not match the installed torch."""
    if device_type != "cuda":
        return f"xformers needs CUDA tensors, these are on {device_type}"
    try:
        import xformers.ops as xops
    except ImportError as e:
        return f"xformers is not installed ({e})"
    try:
        q = torch.zeros(1, 8, 1, 16, device=device_type, dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q, attn_bias=xops.LowerTriangularMask())
    except Exception as e:  # any failure here means "no usable kernel", whatever its type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"xformers kernels do not load ({first})"
    return None


def resolve_backend(requested: str, device: torch.device) -> str:
    """The backend that will actually run for tensors on `device`: "xformers", "sdpa" or "math"."""
    global _fallback_warned
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {ATTENTION_BACKENDS}")
    if requested in ("sdpa", "math"):
        return requested
    if requested == "auto" and device.type != "cuda":
        return "sdpa"  # xformers is CUDA-only: nothing to try, nothing to warn about
    problem = xformers_problem(device.type)
    if problem is None:
        return "xformers"
    # `auto` without xformers installed is the ordinary case, not worth a warning.
    if not _fallback_warned and not (requested == "auto" and "not installed" in problem):
        warnings.warn(f"attention={requested!r}: {problem}; using torch SDPA instead", stacklevel=3)
        _fallback_warned = True
    return "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, backend: str,
           dropout: float = 0.0) -> torch.Tensor:
    """Attention of q over k, v, all (B, H, L, D) -> (B, H, Lq, D).

    causal=True masks key j > query i (queries and keys start at the same position);
    causal=False lets every query see every key (one new token attending to a cache).
    `backend` is an already resolved name ("xformers", "sdpa" or "math").
    """
    if backend == "xformers":
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if causal else None
        # xformers wants (B, L, H, D); the transposes are views, not copies.
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias, p=dropout)
        return out.transpose(1, 2)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    if causal:
        lq, lk = att.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
    att = F.dropout(att.softmax(dim=-1), p=dropout, training=dropout > 0)
    return att @ v


def attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shared: int = 0, group: int = 1) -> torch.Tensor:
    """One new query per row over all its cached keys: q (B, H, 1, D) against k, v (B, H, L, D)
    -> (B, H, 1, D), with no mask (the query is the newest position).

    Decoding reads the whole cache to produce one token per row: little arithmetic for each
    byte read. When each run of `group` consecutive rows holds the same
    first `shared` keys (N samples of one context), those are read once per group: the
    group's N queries meet them as one (N, D) x (D, shared) matmul instead of N matrix-vector
    products. Written out in plain ops because torch's fused CPU kernel is slower than this
    for a single query (see docs/benchmarks.md). Exact: one softmax over the concatenated
    scores, as if the keys had been read row by row.
    """
    q = q * q.shape[-1] ** -0.5
    pre_k, pre_v = k[::group, :, :shared], v[::group, :, :shared]  # (B/group, H, shared, D): one copy per group
    pre = rearrange(rearrange(q, "(b n) h 1 d -> b h n d", n=group) @ pre_k.transpose(-2, -1),
                    "b h n l -> (b n) h 1 l")  # (B, H, 1, shared)
    own = q @ k[:, :, shared:].transpose(-2, -1)  # (B, H, 1, L - shared): keys each row wrote itself
    p = torch.cat([pre, own], dim=-1).softmax(dim=-1)
    y = rearrange(rearrange(p[..., :shared], "(b n) h 1 l -> b h n l", n=group) @ pre_v, "b h n d -> (b n) h 1 d")
    return y + p[..., shared:] @ v[:, :, shared:]


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotary positions: x (B, H, T, D) with each pair (x[2j], x[2j+1]) turned by the angle
    whose (cos, sin) is rotation (T, D/2, 2), in float32 (as LlamaGen does), back in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2)
    cos, sin = rotation[..., 0], rotation[..., 1]  # (T, D/2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


def attend_static(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One new query per row over a whole preallocated cache: q (B, H, 1, D) against k, v
    (B, H, T_max, D) -> (B, H, 1, D), keys after the 0-dim position tensor `pos` masked. The
    same shapes at every step, so the step can be captured once and replayed."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, 1, T_max)
    future = torch.arange(k.shape[2], device=k.device) > pos
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over a KV cache, for every block family: bias=False
    and a rotation (rotary positions, applied to queries and keys before they are cached) give
    the Llama form."""

    def __init__(self, config: GPTConfig, bias: bool = True):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)
        self.backend = config.attention

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: int | torch.Tensor = 0,
                rotation: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, T, C); with a cache, x holds positions [pos, pos+T) of each row.
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        if rotation is not None:
            q, k = rotate(q, rotation), rotate(k, rotation)
        if isinstance(pos, torch.Tensor):  # the static-shape decode step: one token at a device-held position
            y = attend_static(q, *cache.write_at(layer, torch.stack([k, v]), pos), pos)
        elif cache is not None and pos > 0:
            # Decoding: the new query sees every cached key, so no mask is needed. One token
            # per step keeps this exact; a longer chunk would need an offset causal mask.
            # Every backend decodes the same way: reading the cache is the cost, see attend_decode.
            assert x.shape[1] == 1, "decode one position at a time after the prefill"
            k_all, v_all = cache.write(layer, torch.stack([k, v]), pos)  # (B, H, pos+1, D) each
            y = attend_decode(q, k_all, v_all, cache.shared, cache.group)
        else:  # training, or a prefill from position 0: causal attention within the chunk
            if cache is not None:
                cache.write(layer, torch.stack([k, v]), pos)
            p = self.dropout if self.training else 0.0
            y = attend(q, k, v, causal=True, backend=resolve_backend(self.backend, x.device), dropout=p)
        return self.resid_drop(self.proj(rearrange(y, "b h t d -> b t (h d)")))

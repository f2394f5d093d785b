"""A key/value cache allocated once for the whole generation and written in place.

Sampling N continuations of one context is the probes' inner loop. The cache holds keys and
values of every layer in one tensor (layers, 2, B, H, T_max, D); a step writes its new
position with an indexed copy (no torch.cat, no Python list that grows), and attention reads
the filled prefix [0, length) as a view.

A context is encoded once for B' rows and written into a cache of B = B' * N rows: row b' is
broadcast to rows b'*N .. b'*N + N-1, so the N samples share the context's keys and values
without the context being recomputed N times. The cache remembers that sharing (`group`
consecutive rows hold the same first `shared` positions) so that decoding can read those
keys and values once per group instead of once per row (see `attention.attend_decode`).

`write_at` is the static-shape form of a decode step's write (gpt/static_decode.py): the
position is a device tensor and every position is returned, so the step's shapes never change.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.kv = torch.empty(n_layer, 2, batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.length = 0  # positions [0, length) hold valid keys and values
        self.shared = 0  # positions [0, shared) are identical within each group of rows
        self.group = 1

    @property
    def batch(self) -> int:
        return self.kv.shape[2]

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def write(self, layer: int, kv: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys and values kv (2, b, H, T, D) at positions [pos, pos+T) of `layer` (one
        copy for both), and return the keys and values of positions [0, pos+T), each
        (B, H, pos+T, D). b may be B, or divide B: each row then fills B/b consecutive rows.
        """
        _, b, _, t, _ = kv.shape
        end = pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        if self.batch % b:
            raise ValueError(f"cannot spread {b} rows over a cache of {self.batch}")
        if pos == 0:  # a new context: spread over its samples (b < B), or one per row
            self.shared, self.group = (end, self.batch // b) if b < self.batch else (0, 1)
        slot = self.kv[layer, :, :, :, pos:end]  # (2, B, H, T, D), a view into the cache
        slot.unflatten(1, (b, self.batch // b)).copy_(kv.unsqueeze(2).expand(-1, -1, self.batch // b, -1, -1, -1))
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]

    def write_at(self, layer: int, kv: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's keys and values kv (2, B, H, 1, D) at the position held in the
        0-dim tensor `pos`, without reading it on the host; return every position's keys and
        values, each (B, H, max_len, D) (those past `pos` are stale: the caller masks them)."""
        self.kv[layer].index_copy_(3, pos.view(1), kv)
        return self.kv[layer, 0], self.kv[layer, 1]

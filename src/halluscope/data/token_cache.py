"""Token caches on disk: integer token grids in memory-mappable shards plus a manifest.

The format lives here, below both of its users: `halluscope tokenize` (tokenizers) writes
caches, GPT training (gpt) reads them, and neither imports the other.

Layout of a cache folder:
  manifest.json          grid, vocab size, dtype, tokenizer path + hash, data root, the shards
                         (file, first example index, count, source of every example), the
                         skipped files with their reasons, and `complete`
  shards/shard_00000.npy (count, *grid) uint16 (int32 for vocabularies over 65536), memory-mappable
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import numpy as np
import torch

from halluscope.errors import UserError
from halluscope.io import atomic_path, open_regular, read_json, write_json

MANIFEST = "manifest.json"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def write_shard(out: Path, index: int, start: int, tokens: np.ndarray, sources: list[str]) -> dict:
    """Write shard `index` atomically; return its manifest entry."""
    name = f"shards/shard_{index:05d}.npy"
    with atomic_path(out / name) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, tokens)
    return {"file": name, "start": start, "count": len(tokens), "sources": sources}


def write_token_cache(out: str | os.PathLike, tokens: torch.Tensor, vocab_size: int, sources: list[str],
                      tokenizer: str | None = None, **header) -> dict:
    """A complete one-shard cache from grids already in memory, (N, *grid); returns the manifest."""
    out = Path(out)
    if len(sources) != len(tokens):
        raise ValueError(f"{len(tokens)} token grids but {len(sources)} sources")
    array = tokens.numpy().astype(token_dtype(vocab_size))
    manifest = {"version": VERSION, "grid": list(tokens.shape[1:]), "vocab_size": vocab_size,
                "dtype": array.dtype.name, "tokenizer": tokenizer, "num_examples": len(tokens), **header,
                "shards": [write_shard(out, 0, 0, array, list(sources))], "skipped": [],
                "count": len(tokens), "complete": True}
    write_json(out / MANIFEST, manifest)
    return manifest


class TokenCache:
    """A finished token cache, memory-mapped: `len`, `cache[i]` -> LongTensor grid,
    `sequences()` -> (N, L) array in raster order, `grid`, `vocab_size`, `sources`,
    `tokenizer` (the folder that made the tokens, or None)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise UserError(f"token cache not found: {self.path} has no {MANIFEST}")
        self.manifest = read_json(self.path / MANIFEST, what="token cache manifest")
        if not isinstance(self.manifest, dict):
            raise UserError(f"token cache manifest {self.path / MANIFEST} is not a JSON object")
        try:
            if not self.manifest["complete"]:
                raise UserError(f"token cache {self.path} is unfinished; "
                                "run `halluscope tokenize ... --resume` to complete it")
            self.grid = tuple(int(g) for g in self.manifest["grid"])
            self.vocab_size = int(self.manifest["vocab_size"])
            self.tokenizer = self.manifest.get("tokenizer")
            shards = [s for s in self.manifest["shards"] if s["count"] > 0]
            self.sources = [src for s in shards for src in s["sources"]]
            files = [self.path / s["file"] for s in shards]
        except (KeyError, TypeError, ValueError) as e:
            detail = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise UserError(f"token cache manifest {self.path / MANIFEST} is malformed: {detail}") from None
        outside = [f for f in files if not f.resolve().is_relative_to(self.path.resolve())]
        if outside:  # a manifest names only its own shards
            raise UserError(f"token cache manifest {self.path / MANIFEST} names a shard outside the cache: {outside[0]}")
        for f in files:  # a FIFO would block np.load forever
            os.close(open_regular(f, "token cache shard"))
        try:
            self.shards = [np.load(f, mmap_mode="r") for f in files]
        except (OSError, ValueError) as e:
            raise UserError(f"token cache {self.path} is damaged: {e}") from None
        for s, array in zip(shards, self.shards):
            if array.dtype.kind not in "iu" or array.dtype == np.uint64:  # token ids are integers that fit int64
                raise UserError(f"token cache {self.path} is damaged: {s['file']} holds {array.dtype} values, "
                                f"not token ids ({token_dtype(self.vocab_size)})")
            if array.shape != (s["count"], *self.grid):
                raise UserError(f"token cache {self.path} is damaged: {s['file']} holds {array.shape}, "
                                f"the manifest says {(s['count'], *self.grid)}")
        self.offsets = np.cumsum([0] + [len(a) for a in self.shards]).tolist()

    @property
    def seq_len(self) -> int:
        return int(np.prod(self.grid))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"token cache index {i} out of range ({len(self)} examples)")
        i %= len(self)
        k = bisect.bisect_right(self.offsets, i) - 1
        return torch.from_numpy(self.shards[k][i - self.offsets[k]].astype(np.int64))

    def sequences(self) -> np.ndarray:
        """All examples flattened in raster order: (N, prod(grid)), the on-disk dtype."""
        if not self.shards:
            return np.zeros((0, self.seq_len), token_dtype(self.vocab_size))
        return np.concatenate([a.reshape(len(a), -1) for a in self.shards])

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the token histogram: the loss of a model that ignores all context,
        the baseline a sequence model must beat."""
        counts = np.bincount(self.sequences().ravel(), minlength=self.vocab_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

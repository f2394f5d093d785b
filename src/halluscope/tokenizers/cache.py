"""`halluscope tokenize`: a data folder encoded once into a token cache (the format of
`halluscope.data.token_cache`, which GPT training reads), so training never re-encodes pixels.

Shard k always covers dataset examples [k*S, (k+1)*S). A shard is written atomically and only
then entered in the manifest (also atomic), so an interrupted run resumes at the first shard
the manifest lacks, and a finished cache is left alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from halluscope.data.token_cache import MANIFEST, VERSION, token_dtype, write_shard
from halluscope.device import pick_device
from halluscope.errors import UserError
from halluscope.io import CONFIG_NAME, WEIGHTS_NAME, check_model_folder, open_regular, read_json, write_json
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.load import load_tokenizer
from halluscope.tokenizers.vqgan import VQGAN

# Fields that must agree between an unfinished cache and the run resuming it.
# (A resumed run keeps the cache's own shard size, whatever --shard-size says.)
IDENTITY = ("kind", "grid", "vocab_size", "tokenizer_hash", "data", "num_examples")


def tokenizer_hash(folder: str | os.PathLike) -> str:
    """sha256 of a tokenizer folder's config and weights: the identity of its tokens."""
    h = hashlib.sha256()
    folder = check_model_folder(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with os.fdopen(open_regular(folder / name, "tokenizer file"), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenize(tokenizer_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, batch: int = 32,
             shard_size: int = 4096, resume: bool = False, frames: int | None = None, progress: bool = True,
             device: str | None = None) -> dict:
    """Encode every example of the folder `data` into a cache at `out`; return the manifest.
    `frames` turns an image tokenizer into a framewise clip tokenizer for a video folder;
    `device` is where the encoder runs (default: CUDA when there is one)."""
    out = Path(out)
    existing = None
    if (out / MANIFEST).exists():
        if not resume:
            raise UserError(f"{out} already holds a token cache; pass --resume to continue it or choose another --out")
        existing = read_json(out / MANIFEST, what="token cache manifest")
    quick = {"tokenizer_hash": tokenizer_hash(tokenizer_dir), "data": str(Path(data).resolve())}
    if existing is not None and existing.get("complete"):
        check_same(out, existing, quick)  # without scanning the data folder: a finished cache costs nothing
        print(f"tokenize: {out} is already complete ({existing['count']} examples); nothing to do")
        return existing
    device = pick_device(device)
    tok = load_tokenizer(tokenizer_dir)
    if frames is not None:
        if not isinstance(tok, VQGAN):
            raise UserError("--frames applies to image tokenizers only (they then tokenize clips frame by frame)")
        tok = Framewise.wrap(tok, frames).eval()
    tok = tok.to(device)
    ds = open_dataset(data, tok)
    header = {
        "version": VERSION, "kind": tok.kind, "grid": list(tok.grid), "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size).name, "tokenizer": str(Path(tokenizer_dir).resolve()), **quick,
        "frames": frames, "num_examples": len(ds), "shard_size": shard_size,
    }
    if existing is None:
        manifest = {**header, "shards": [], "skipped": [], "count": 0, "complete": False}
    else:
        check_same(out, existing, header)
        manifest = existing
    shard_size = manifest["shard_size"]
    done = {s["start"] for s in manifest["shards"]}
    starts = [s for s in range(0, len(ds), shard_size) if s not in done]
    # Closed on an error too, so that the error is the last line a user sees.
    with tqdm(total=len(ds), initial=len(ds) - sum(min(shard_size, len(ds) - s) for s in starts),
              disable=not progress, desc="tokenize", unit="ex") as bar:
        for start in starts:
            tokens, sources = encode_range(tok, ds, range(start, min(start + shard_size, len(ds))), batch, bar)
            manifest["shards"].append(write_shard(out, start // shard_size, start, tokens, sources))
            manifest["count"] += len(tokens)
            note_skipped(manifest, ds)
            write_json(out / MANIFEST, manifest)
    manifest["shards"].sort(key=lambda s: s["start"])
    note_skipped(manifest, ds)
    manifest["complete"] = True
    write_json(out / MANIFEST, manifest)
    return manifest


def check_same(out: Path, old: dict, new: dict) -> None:
    """Refuse to continue a cache made from another tokenizer or data folder."""
    for key in IDENTITY:
        if key in new and old.get(key) != new[key]:
            raise UserError(f"cannot resume {out}: its {key} is {old.get(key)!r}, this run's is {new[key]!r}")


def note_skipped(manifest: dict, ds) -> None:
    """Add the files the data layer skipped so far (at its scan, or failing to decode) to the
    manifest, keeping those listed by an earlier, interrupted run."""
    listed = {s["source"] for s in manifest["skipped"]}
    for path, reason in ds.skipped:
        source = Path(path).relative_to(ds.root).as_posix()
        if source not in listed:
            manifest["skipped"].append({"source": source, "reason": reason})
            listed.add(source)


@torch.no_grad()
def encode_range(tok, ds, indices: range, batch: int, bar: tqdm) -> tuple[np.ndarray, list[str]]:
    """Tokens (n, *grid) of the examples in `indices` that decode, and their sources."""
    chunks, sources, pending = [], [], []

    def flush():
        if pending:
            x = torch.stack([x for _, x in pending]).to(next(tok.parameters()).device)
            chunks.append(tok.encode(x).cpu().numpy().astype(token_dtype(tok.vocab_size)))
            sources.extend(s for s, _ in pending)
            pending.clear()

    for i in indices:
        x = ds[i]
        # A file that fails to decode is recorded in ds.skipped and ds[i] hands over the next
        # usable example instead; a cache keeps the example's place empty rather than a copy.
        if ds.files[ds.items[i][0]] not in failed_files(ds):
            pending.append((ds.source(i), x))
        bar.update(1)
        if len(pending) == batch:
            flush()
    flush()
    tokens = np.concatenate(chunks) if chunks else np.zeros((0, *tok.grid), token_dtype(tok.vocab_size))
    return tokens, sources


def failed_files(ds) -> set[Path]:
    return {path for path, _ in ds.skipped}
